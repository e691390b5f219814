"""Benchmark examples as seqio eval tasks: few-shot prompt fitting and rank-classification rows.

A benchmark loader gives, per split, a list of `Prompted` records (read and checked in Python,
so bad files fail before any model work). The task then
  1. fits the prompt to `sequence_length['inputs']` (FLAN's rule): prefix, then exemplars, then
     the question, joined by the task's separator; exemplars are dropped from the end until the
     prompt fits, the question never. `num_shots` records how many were kept; a zero-shot
     prompt that alone is too long is cut from the left (its end, where the answer cue is,
     stays), and flagged `truncated`;
  2. for rank classification, expands each example into one row per option with
     `idx` = [example, option] and `is_correct` (the seqio/FLAN scoring layout), so the
     score function returns log p(option | prompt) per row.
Generative tasks keep one row per example with the target text.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from tasks import eval_metrics, registry, vocab


def read_json_examples(path: str, benchmark: str, layout: str = '') -> dict:
  """A benchmark's JSON file (BBH, BIG-bench) with a non-empty "examples" list; ValueError naming
  the file when it is missing, not JSON or has no examples (`layout` describes the expected form)."""
  if not os.path.isfile(path):
    raise ValueError(f'{benchmark} file {path!r} does not exist')
  with open(path, encoding='utf-8') as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f'{path}: not valid JSON ({e})') from None
  examples = data.get('examples') if isinstance(data, dict) else None
  if not examples:
    raise ValueError(f'{path}: no "examples" list{layout}')
  return data

KINDS = ('rank', 'generate', 'cot')
# Joins a row's options in its `options_pretokenized` string (the ASCII unit separator).
OPTION_SEPARATOR = '\x1f'


_LIMIT: list[Optional[int]] = [None]


@contextlib.contextmanager
def limit_examples(n: Optional[int]) -> Iterator[None]:
  """Within the block, eval datasets built hold only the first `n` examples of a split
  (questions, not rank-classification rows: seqio's own `num_examples` would count rows)."""
  _LIMIT[0], old = n, _LIMIT[0]
  try:
    yield
  finally:
    _LIMIT[0] = old


def example_limit() -> Optional[int]:
  return _LIMIT[0]


@dataclasses.dataclass(frozen=True)
class Prompted:
  """One benchmark example before prompt fitting.

  prefix: text always kept first (e.g. MMLU's subject line); exemplars: the k shots, best first;
  question: the query prompt; target: reference answer text (for 'cot' the bare answer);
  options: answer options (rank classification) with `answer` the correct one's index."""
  prefix: str
  exemplars: tuple[str, ...]
  question: str
  target: str
  options: tuple[str, ...] = ()
  answer: int = -1


def check_prompted(records: Sequence[Prompted], kind: str, where: str) -> None:
  """ValueError naming `where` for an empty split, or rank classification without options."""
  if not records:
    raise ValueError(f'{where}: no examples (empty split)')
  if kind == 'rank':
    for i, r in enumerate(records):
      if len(r.options) < 2:
        raise ValueError(f'{where}: example {i} has {len(r.options)} options; rank '
                         'classification needs at least 2 (use a generative task instead)')
      if not 0 <= r.answer < len(r.options):
        raise ValueError(f'{where}: example {i}: answer index {r.answer} is not among its '
                         f'{len(r.options)} options')


def fit_prompt(prefix: str, exemplars: Sequence[str], question: str, separator: str,
               max_tokens: int, length_fn: Callable[[str], int]) -> tuple[str, int, bool]:
  """(prompt, shots kept, truncated): exemplars dropped from the end until
  `length_fn(prompt) <= max_tokens`; truncated when even the zero-shot prompt is too long."""
  for n in range(len(exemplars), -1, -1):
    prompt = prefix + separator.join(list(exemplars[:n]) + [question])
    if length_fn(prompt) <= max_tokens:
      return prompt, n, False
  return prompt, 0, True


def _records_dataset(records: Sequence[Prompted]) -> tf.data.Dataset:
  def ragged(rows):
    flat = [s for r in rows for s in r]
    return tf.RaggedTensor.from_row_lengths(tf.constant(flat, tf.string, shape=[len(flat)]),
                                            [len(r) for r in rows])
  return tf.data.Dataset.from_tensor_slices({
      'prefix': tf.constant([r.prefix for r in records], tf.string),
      'exemplars': ragged([r.exemplars for r in records]),
      'question': tf.constant([r.question for r in records], tf.string),
      'targets_pretokenized': tf.constant([r.target for r in records], tf.string),
      'options': ragged([r.options for r in records]),
      'answer': tf.constant([r.answer for r in records], tf.int32),
  })


def _fit_and_tokenize(separator: str):
  """seqio preprocessor: prompt fitting at `sequence_length['inputs']`, then tokens + EOS."""
  def preprocess(ds: tf.data.Dataset, sequence_length, output_features) -> tf.data.Dataset:
    voc = output_features['inputs'].vocabulary
    max_tokens = int(sequence_length['inputs'])

    def length(text: str) -> int:
      return len(voc.encode(text)) + 1   # + EOS

    def py_fit(prefix, exemplars, question, target):
      dec = lambda b: b.decode('utf-8')
      prompt, shots, truncated = fit_prompt(dec(prefix), [dec(e) for e in exemplars],
                                            dec(question), separator, max_tokens, length)
      ids = list(voc.encode(prompt))
      if truncated:
        ids = ids[len(ids) - (max_tokens - 1):]
      return (np.array(ids + [voc.eos_id], np.int32),
              np.array(list(voc.encode(dec(target))) + [voc.eos_id], np.int32),
              prompt.encode('utf-8'), np.int32(shots), np.bool_(truncated))

    @tf.autograph.experimental.do_not_convert   # plain TF ops (the Python runs in numpy_function)
    def fit(ex):
      inputs, targets, prompt, shots, truncated = tf.numpy_function(
          py_fit, [ex['prefix'], ex['exemplars'], ex['question'], ex['targets_pretokenized']],
          [tf.int32, tf.int32, tf.string, tf.int32, tf.bool], stateful=False)
      out = {k: v for k, v in ex.items() if k not in ('prefix', 'exemplars', 'question')}
      out.update(inputs=tf.ensure_shape(inputs, [None]), targets=tf.ensure_shape(targets, [None]),
                 inputs_pretokenized=tf.ensure_shape(prompt, []),
                 num_shots=tf.ensure_shape(shots, []), truncated=tf.ensure_shape(truncated, []))
      return out
    return ds.map(fit, num_parallel_calls=tf.data.AUTOTUNE)
  return preprocess


def expand_options(ds: tf.data.Dataset, output_features) -> tf.data.Dataset:
  """seqio preprocessor: one row per (example, option), targets = the option's tokens + EOS."""
  voc = output_features['targets'].vocabulary

  def py_tokens(options):
    rows = [list(voc.encode(o.decode('utf-8'))) + [voc.eos_id] for o in options]
    flat = np.array([t for r in rows for t in r], np.int32)
    return flat, np.array([len(r) for r in rows], np.int64)

  @tf.autograph.experimental.do_not_convert   # plain TF ops: nothing for autograph to convert
  def rows(index, ex):
    flat, lengths = tf.numpy_function(py_tokens, [ex['options']], [tf.int32, tf.int64],
                                      stateful=False)
    options = tf.RaggedTensor.from_row_lengths(tf.ensure_shape(flat, [None]),
                                               tf.ensure_shape(lengths, [None]))
    k = tf.shape(lengths)[0]
    option_ids = tf.range(k, dtype=tf.int32)
    keep = {n: v for n, v in ex.items() if n not in ('targets', 'options')}
    per_row = {n: tf.repeat(v[None], k, axis=0) for n, v in keep.items()
               if n not in ('inputs',)}
    per_row.update(
        inputs=tf.repeat(ex['inputs'][None], k, axis=0), targets=options,
        options_pretokenized=tf.repeat(tf.strings.reduce_join(
            ex['options'], separator=OPTION_SEPARATOR)[None], k, axis=0),
        idx=tf.stack([tf.fill([k], tf.cast(index, tf.int32)), option_ids], axis=1),
        is_correct=tf.equal(option_ids, ex['answer']))
    return tf.data.Dataset.from_tensor_slices(per_row)
  return ds.enumerate().flat_map(rows)


def _finish_generative(ds: tf.data.Dataset) -> tf.data.Dataset:
  without_options = lambda ex: {k: v for k, v in ex.items() if k != 'options'}
  return ds.map(tf.autograph.experimental.do_not_convert(without_options),
                num_parallel_calls=tf.data.AUTOTUNE)


def register(name: str, load: Callable[[str], Sequence[Prompted]], splits: Sequence[str],
             kind: str, fingerprint: str, separator: str = '\n\n',
             metric_fns: Optional[Sequence] = None) -> seqio.Task:
  """A seqio Task over `load(split)` of kind 'rank' (rank classification), 'generate' (exact
  match; `metric_fns` may add e.g. F1) or 'cot' (answer extraction, unparsable counted).
  A task of the same name with another `fingerprint` (e.g. another data directory) is
  replaced."""
  if kind not in KINDS:
    raise ValueError(f'task {name!r}: kind={kind!r}; choose one of {KINDS}')

  def dataset_fn(split: str, shuffle_files: bool, seed=None) -> tf.data.Dataset:
    del shuffle_files, seed   # eval data: file order
    records = load(split)[:example_limit()]
    check_prompted(records, kind, f'task {name!r} split {split!r}')
    return _records_dataset(records)

  preprocessors = [_fit_and_tokenize(separator)]
  if kind == 'rank':
    preprocessors.append(expand_options)
    postprocess, metrics = eval_metrics.rank_row, eval_metrics.RANK_METRICS
  else:
    preprocessors.append(_finish_generative)
    postprocess = eval_metrics.cot_answer if kind == 'cot' else eval_metrics.strip_text
    metrics = eval_metrics.COT_METRICS if kind == 'cot' else eval_metrics.GENERATION_METRICS
  metrics = tuple(metrics) + tuple(metric_fns or ())
  source = seqio.FunctionDataSource(dataset_fn, splits=tuple(splits))
  registry.remove_if_different(name, fingerprint)
  return registry.add_task(
      name, fingerprint=fingerprint, source=source,
      output_features=vocab.output_features(), preprocessors=preprocessors,
      postprocess_fn=postprocess, metric_fns=list(metrics),
      shuffle_buffer_size=1024)   # evaluation reads in file order; a data check may shuffle
