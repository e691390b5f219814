"""FLAN-collection public datasets from TFDS, rendered with FLAN-style templates and options.

Registered as `flan_{dataset}` (e.g. flan_glue_rte, flan_super_glue_boolq, flan_anli_r1,
flan_squad_v1, flan_trivia_qa) plus the mixture 'flan_tfds' (capped examples-proportional).
Nothing is downloaded: with a prepared TFDS data dir (`--tfds_data_dir` / TFDS_DATA_DIR) they
train like any task; tests run them under `tfds.testing.mock_data` (pass
`try_in_mem_cache=False`).

Rendering happens in the tf.data graph and matches `tasks.templates.render_zero_shot` exactly
(options appended as "\\n\\nOPTIONS:\\n- ..." unless a template places `{options_}`); each example
gets the template picked by a hash of its text, so the choice is deterministic. Unlabelled
examples (GLUE/SuperGLUE test splits, label -1) are skipped and counted ('unlabeled'); empty
targets and invalid UTF-8 are skipped and counted by tasks.quality.
"""
from __future__ import annotations

import dataclasses
import functools
import string
from typing import Callable, Dict, Mapping, Optional, Sequence

import seqio
import tensorflow as tf

from tasks import mixtures, quality, registry, vocab
from tasks.templates import OPTIONS_HEADER, Template

Fields = Dict[str, tf.Tensor]


@dataclasses.dataclass(frozen=True)
class TfdsSpec:
  """One TFDS dataset: how to read fields from an example and how to phrase it.

  options: literal option strings, or '{field}' for an option read from the example (COPA);
    the answer is options[label]. Without options, `extract` must give an 'answer' field.
  """
  name: str
  tfds_name: str
  extract: Callable[[Mapping[str, tf.Tensor]], Fields]
  templates: Sequence[Template]
  options: Optional[Sequence[str]] = None
  splits: Mapping[str, str] = dataclasses.field(
      default_factory=lambda: {'train': 'train', 'validation': 'validation'})


def _fields(*names: str, **renames: str):
  """extract() copying TFDS features `names` (and `renames` new=old) plus the label."""
  def extract(ex):
    out = {n: ex[n] for n in names}
    out.update({new: ex[old] for new, old in renames.items()})
    out['label'] = ex['label']
    return out
  return extract


def _squad(ex):
  texts = ex['answers']['text']
  answer = tf.cond(tf.size(texts) > 0, lambda: texts[0], lambda: tf.constant(''))
  return {'context': ex['context'], 'question': ex['question'], 'answer': answer,
          'title': ex['title']}


def _trivia(ex):
  return {'question': ex['question'], 'answer': ex['answer']['value']}


T = Template
_NLI3 = ('yes', 'it is not possible to tell', 'no')
_NLI_T = [
    T('Premise: {premise}\nHypothesis: {hypothesis}\nDoes the premise entail the hypothesis?'),
    T('{premise}\n\nBased on the paragraph above can we conclude that "{hypothesis}"?'),
    T('Read the following and determine if the hypothesis can be inferred from the premise:\n\n'
      'Premise: {premise}\n\nHypothesis: {hypothesis}'),
    T('{premise}\nCan we infer the following?\n{hypothesis}\n\n{options_}'),
    T('Sentence 1: {premise}\nSentence 2: {hypothesis}\nIs sentence 2 true, given sentence 1?'),
]
_PARA_T = [
    T('{s1}\n{s2}\n\nDo these two sentences mean the same thing?'),
    T('Sentence A: {s1}\nSentence B: {s2}\nAre A and B paraphrases of each other?'),
    T('Do "{s1}" and "{s2}" have the same meaning?'),
    T('Here are two sentences:\n{s1}\n{s2}\nAre they saying the same thing?\n\n{options_}'),
    T('Is the second sentence a paraphrase of the first?\n{s1}\n{s2}'),
]
_SENT_T = [
    T('{sentence}\nWhat is the sentiment of this review?'),
    T('Review: {sentence}\nIs this review positive or negative?'),
    T('How would you describe the sentiment of this text?\n{sentence}'),
    T('"{sentence}"\nDid the writer like it?\n\n{options_}'),
    T('Classify the sentiment: {sentence}'),
]
_QA_T = [
    T('Read this and answer the question.\n\n{context}\n\n{question}'),
    T('{context}\n\nQ: {question}\nA:'),
    T('Answer a question about this article:\n{context}\n{question}'),
    T('Passage: {context}\nQuestion: {question}\nAnswer:'),
    T('{question}\n\nAnswer using the text below.\n{context}'),
]

SPECS = (
    TfdsSpec('glue_cola', 'glue/cola:2.*.*', _fields('sentence'), [
        T('Is the following sentence linguistically acceptable?\n{sentence}'),
        T('"{sentence}"\nWould a linguist rate this sentence to be acceptable?'),
        T('Sentence: {sentence}\nIs it grammatical?'),
        T('Is this sentence well formed English? {sentence}\n\n{options_}'),
        T('Check the grammar: {sentence}'),
    ], options=('no', 'yes')),
    TfdsSpec('glue_sst2', 'glue/sst2:2.*.*', _fields('sentence'), _SENT_T,
             options=('negative', 'positive')),
    TfdsSpec('glue_mrpc', 'glue/mrpc:2.*.*', _fields(s1='sentence1', s2='sentence2'), _PARA_T,
             options=('no', 'yes')),
    TfdsSpec('glue_qqp', 'glue/qqp:2.*.*', _fields(s1='question1', s2='question2'), _PARA_T,
             options=('no', 'yes')),
    TfdsSpec('glue_mnli', 'glue/mnli:2.*.*', _fields('premise', 'hypothesis'), _NLI_T,
             options=_NLI3,
             splits={'train': 'train', 'validation': 'validation_matched'}),
    TfdsSpec('glue_qnli', 'glue/qnli:2.*.*', _fields('question', 'sentence'), [
        T('Does the sentence "{sentence}" answer the question "{question}"?'),
        T('Question: {question}\nSentence: {sentence}\nDoes the sentence answer the question?'),
        T('{question}\nIs "{sentence}" a good answer to this question?'),
        T('Q: {question}\nA: {sentence}\nDoes the answer correctly answer the question?\n\n'
          '{options_}'),
        T('Can the question "{question}" be answered by "{sentence}"?'),
    ], options=('yes', 'no')),
    TfdsSpec('glue_rte', 'glue/rte:2.*.*', _fields(premise='sentence1', hypothesis='sentence2'),
             _NLI_T, options=('yes', 'no')),
    TfdsSpec('glue_wnli', 'glue/wnli:2.*.*', _fields(premise='sentence1', hypothesis='sentence2'),
             _NLI_T, options=('no', 'yes')),
    TfdsSpec('super_glue_boolq', 'super_glue/boolq:1.*.*', _fields('question', 'passage'), [
        T('{passage}\n\nCan we conclude that {question}?'),
        T('{passage}\n\nIs it true that {question}?'),
        T('Text: {passage}\n\nQuestion: {question}?'),
        T('Read the text and answer the question.\n\n{passage}\n\n{question}?\n\n{options_}'),
        T('{passage}\nAnswer this question based on the passage: {question}?'),
    ], options=('no', 'yes')),
    TfdsSpec('super_glue_cb', 'super_glue/cb:1.*.*', _fields('premise', 'hypothesis'), _NLI_T,
             options=('yes', 'no', 'it is not possible to tell')),
    TfdsSpec('super_glue_copa', 'super_glue/copa:1.*.*',
             _fields('premise', 'question', 'choice1', 'choice2'), [
                 T('{premise} What was the {question}?'),
                 T('Premise: {premise}\nWhat is the {question}?'),
                 T('"{premise}" What is the {question} of this?'),
                 T('Pick the more likely {question}.\n{premise}\n\n{options_}'),
                 T('{premise}\nWhich is the {question}?'),
             ], options=('{choice1}', '{choice2}')),
    TfdsSpec('super_glue_rte', 'super_glue/rte:1.*.*', _fields('premise', 'hypothesis'), _NLI_T,
             options=('yes', 'no')),
    TfdsSpec('super_glue_wic', 'super_glue/wic:1.*.*', _fields('word', 'sentence1', 'sentence2'), [
        T('Does the word "{word}" mean the same thing in "{sentence1}" and "{sentence2}"?'),
        T('{sentence1}\n{sentence2}\nIs "{word}" used in the same sense in both sentences?'),
        T('Word: {word}\nSentence 1: {sentence1}\nSentence 2: {sentence2}\nSame meaning?'),
        T('"{word}" in "{sentence1}" and in "{sentence2}": same meaning?\n\n{options_}'),
        T('Decide whether {word} has the same meaning in these sentences.\n{sentence1}\n'
          '{sentence2}'),
    ], options=('no', 'yes')),
    *(TfdsSpec(f'anli_{r}', f'anli/{r}:0.*.*', _fields('hypothesis', premise='context'), _NLI_T,
               options=_NLI3) for r in ('r1', 'r2', 'r3')),
    TfdsSpec('squad_v1', 'squad/v1.1:3.*.*', _squad, _QA_T),
    TfdsSpec('trivia_qa', 'trivia_qa/rc.nocontext:1.*.*', _trivia, [
        T('Please answer this question: {question}'),
        T('{question}'),
        T('Trivia question: {question}\nAnswer:'),
        T('Answer the following question. {question}'),
        T('Q: {question}\nA:'),
    ]),
)


def tf_format(pattern: str, fields: Fields) -> tf.Tensor:
  """`pattern.format(**fields)` for <string>[] tensors (no format specs)."""
  parts = []
  for literal, field, _, _ in string.Formatter().parse(pattern):
    if literal:
      parts.append(tf.constant(literal))
    if field:
      parts.append(fields[field])
  return tf.strings.join(parts) if parts else tf.constant('')


def render_example(spec: TfdsSpec, ex: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
  """{'inputs', 'targets'} strings for one example (zero-shot, options shown)."""
  fields = dict(spec.extract(ex))
  if spec.options:
    opts = [tf_format(o, fields) for o in spec.options]
    fields['answer'] = tf.gather(tf.stack(opts), tf.cast(fields['label'], tf.int32))
    # Same text as templates.format_options, built from tensors.
    block = tf.strings.join([tf.constant(OPTIONS_HEADER)] +
                            [tf.strings.join(['\n- ', o]) for o in opts])
  else:
    block = tf.constant('')
  fields['options_'] = block
  rendered = []
  for t in spec.templates:
    text = tf_format(t.inputs, fields)
    if spec.options and '{options_}' not in t.inputs:
      text = tf.strings.join([text, '\n\n', block])
    rendered.append(tf.strings.strip(text))
  key = tf.strings.join([fields[k] for k in sorted(fields) if fields[k].dtype == tf.string])
  choice = tf.strings.to_hash_bucket_fast(key, len(spec.templates))
  return {'inputs': tf.gather(tf.stack(rendered), choice),
          'targets': tf_format(spec.templates[0].targets, fields)}


def _preprocess(dataset: tf.data.Dataset, spec: TfdsSpec) -> tf.data.Dataset:
  if spec.options:
    unlabeled = quality.counter('unlabeled', spec.name)

    @tf.autograph.experimental.do_not_convert   # plain TF ops: nothing for autograph to convert
    def labeled(ex):
      ok = ex['label'] >= 0
      with tf.control_dependencies([unlabeled.assign_add(tf.cast(~ok, tf.int64))]):
        return tf.identity(ok)
    dataset = dataset.filter(labeled)
  # `if`s and loops over the spec's Python values; tf.cond is explicit (_squad).
  render = tf.autograph.experimental.do_not_convert(functools.partial(render_example, spec))
  return dataset.map(render, num_parallel_calls=tf.data.AUTOTUNE)


def task_name(spec: TfdsSpec) -> str:
  return f'flan_{spec.name}'


def register_all() -> None:
  for spec in SPECS:
    registry.add_task(
        task_name(spec), fingerprint=f'tfds:{spec.tfds_name}:{spec.name}',
        source=seqio.TfdsDataSource(tfds_name=spec.tfds_name, splits=dict(spec.splits)),
        output_features=vocab.output_features(),
        preprocessors=[functools.partial(_preprocess, spec=spec),
                       functools.partial(quality.filter_bad_text, task=task_name(spec)),
                       seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim])
  mixtures.register_proportional('flan_tfds', [task_name(s) for s in SPECS])
