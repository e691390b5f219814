"""Registers the embedded generated tasks and their mixtures (the offline quickstart data).

Per TaskSpec `x` (see tasks/generators) these seqio Tasks exist:
  emb_x      zero-shot (options shown when the task has them: FLAN's zs_opt, else zs_noopt)
  emb_x_fs   few-shot: k exemplars from the train split, same template, bounded length
  emb_x_cot  chain-of-thought (only tasks whose examples carry a rationale)
  emb_x_mix  training prompts: each example zs, fs or cot with probabilities `format_weights`
Examples are generated lazily at first use and cached in memory (never at import), from
`generation_seed()`; test, then validation, then train are drawn with separate seeded streams and
an example already drawn for an earlier split is redrawn (within a budget) so splits do not overlap.

Mixtures (held-out protocol in tasks/generators/__init__.py):
  flan_embedded             `_mix` tasks of the training clusters, one sub-mixture per cluster
  flan_embedded_n{N}        the first N training tasks (round-robin over clusters), same shape
  flan_embedded_formats     training tasks, sub-mixtures zs/fs/cot (one task per format)
  flan_embedded_{zs,fs,cot} those sub-mixtures alone
  flan_embedded_heldout     held-out clusters, zero-shot (eval); `_fs`, `_cot` variants
  flan_embedded_downstream  the downstream finetuning tasks
  flan_embedded_all         every task, zero-shot
  flan_embedded_cluster_{c} one cluster, zero-shot
"""
from __future__ import annotations

import functools
import random
from typing import Dict, List, Sequence, Tuple

import gin
import numpy as np
import seqio
import tensorflow as tf

from tasks import eval_metrics, eval_prompts, mixtures, registry, templates, vocab
from tasks.generators import (ALL_TASKS, CLUSTERS, DOWNSTREAM_TASKS, HELDOUT_TASKS,
                              TASKS_BY_NAME, TRAINING_TASKS, Example, TaskSpec)

SPLITS = ('train', 'validation', 'test')
VARIANTS = ('zs', 'fs', 'cot')
NUM_TASKS_CHOICES = (1, 2, 4, 8, 16, 32)
SHUFFLE_BUFFER = 64
# Consecutive repeated draws after which a task's example space counts as exhausted, and repeats
# (within and across splits) are accepted: small spaces (e.g. 12 months) cannot fill disjoint
# splits.
EXHAUSTED_AFTER = 50


@gin.configurable
def generation_seed(seed: int = 0) -> int:
  """Seed of the embedded data; a different seed gives a different (equally valid) dataset."""
  return int(seed)


@gin.configurable
def few_shot_settings(k: int = 3, max_tokens: int = 120) -> Tuple[int, int]:
  """Exemplars per few-shot prompt, and the prompt's token budget (EOS included; exemplars are
  dropped until it fits). Keep max_tokens <= the inputs feature length."""
  if k < 1 or max_tokens < 2:
    raise ValueError(f'few_shot_settings: k={k!r} (>= 1) and max_tokens={max_tokens!r} (>= 2)')
  return int(k), int(max_tokens)


def task_name(spec_name: str, variant: str = 'zs') -> str:
  return f'emb_{spec_name}' + ('' if variant == 'zs' else f'_{variant}')


def spec_of(seqio_task_name: str) -> TaskSpec:
  """The TaskSpec behind a registered name like 'emb_addition_fs'."""
  base = seqio_task_name[len('emb_'):]
  for suffix in ('_fs', '_cot', '_mix'):
    if base.endswith(suffix) and base[:-len(suffix)] in TASKS_BY_NAME:
      return TASKS_BY_NAME[base[:-len(suffix)]]
  if base not in TASKS_BY_NAME:
    raise ValueError(f'{seqio_task_name!r} is not an embedded task name')
  return TASKS_BY_NAME[base]


def _check_example(spec: TaskSpec, ex: Example) -> Example:
  answer = ex.get('answer')
  if not isinstance(answer, str) or not answer.strip():
    raise ValueError(f'Embedded task {spec.name!r} produced an empty answer: {ex}')
  if ex.get('options') and answer not in ex['options']:
    raise ValueError(f'Embedded task {spec.name!r}: answer {answer!r} not among options {ex}')
  return ex


@functools.lru_cache(maxsize=None)
def generate_examples(spec_name: str, seed: int) -> Dict[str, Tuple[Example, ...]]:
  """Raw examples per split for one task (cached)."""
  spec = TASKS_BY_NAME[spec_name]
  if spec.fixed_examples is not None:
    return {s: tuple(_check_example(spec, e) for e in spec.fixed_examples(s)) for s in SPLITS}
  seen, out = set(), {}
  for split in ('test', 'validation', 'train'):
    size = spec.train_size if split == 'train' else spec.eval_size
    rng = random.Random(f'{seed}/{spec_name}/{split}')
    examples, repeats = [], 0
    while len(examples) < size:
      ex = _check_example(spec, spec.generate(rng))
      key = repr(sorted((k, v) for k, v in ex.items() if k != 'rationale'))
      if key in seen and repeats < EXHAUSTED_AFTER:
        repeats += 1
        continue
      repeats = 0 if key not in seen else repeats
      seen.add(key)
      examples.append(ex)
    out[split] = tuple(examples)
  return out


@gin.configurable
def format_weights(zs: float = 0.5, fs: float = 0.4, cot: float = 0.1) -> Tuple[float, ...]:
  """Per-example prompt-format probabilities of the `_mix` training tasks (FLAN 2022 mixes
  zero-shot, few-shot and chain-of-thought prompts); cot is renormalised away for tasks
  without rationales."""
  if min(zs, fs, cot) < 0 or zs + fs + cot <= 0:
    raise ValueError(f'format_weights: zs={zs}, fs={fs}, cot={cot} must be >= 0, not all 0')
  return float(zs), float(fs), float(cot)


def _render_one(spec, variant, ex, pool, rng, k, max_tokens, weights,
                length_fn) -> Tuple[str, str, int]:
  if variant == 'mix':
    w = weights if spec.has_rationale else weights[:2]
    variant = rng.choices(VARIANTS[:len(w)], weights=w)[0]
  tid = rng.randrange(len(spec.templates))
  template = spec.templates[tid]
  has_options = bool(ex.get('options'))
  if variant == 'zs':
    fmt = 'zs_opt' if has_options else 'zs_noopt'
    return (*templates.render(ex, template, fmt, task=spec.name), tid)
  if variant == 'fs':
    shots = [e for e in rng.sample(pool, min(k + 1, len(pool))) if e is not ex][:k]
    fmt = 'fs_opt' if has_options else 'fs_noopt'
    return (*templates.render(ex, template, fmt, shots, max_tokens, spec.name, length_fn), tid)
  return (*templates.render(ex, template, 'cot', task=spec.name), tid)


@functools.lru_cache(maxsize=None)
def rendered(spec_name: str, variant: str, split: str, seed: int, k: int, max_tokens: int,
             weights: Tuple[float, ...] = (0.5, 0.4, 0.1), vocab_key=None) -> Dict[str, List]:
  """Columns {'inputs', 'targets', 'template_id'} of one task variant and split (cached).

  Few-shot prompts are measured in tokens of `vocab.default_vocabulary()`, whose identity
  `vocab_key` is part of the cache key."""
  del vocab_key
  voc = vocab.default_vocabulary()
  length_fn = lambda text: len(voc.encode(text)) + 1  # + EOS
  spec = TASKS_BY_NAME[spec_name]
  examples = generate_examples(spec_name, seed)
  pool = list(examples['train'])
  rng = random.Random(f'{seed}/{spec_name}/{split}/{variant}')
  cols = {'inputs': [], 'targets': [], 'template_id': []}
  for ex in examples[split]:
    inputs, targets, tid = _render_one(spec, variant, ex, pool, rng, k, max_tokens, weights,
                                       length_fn)
    cols['inputs'].append(inputs)
    cols['targets'].append(targets)
    cols['template_id'].append(tid)
  return cols


def _settings() -> tuple:
  """The gin settings and vocabulary identity that `rendered` and `tokenized` are keyed on."""
  return (generation_seed(), *few_shot_settings(), format_weights(),
          id(vocab.default_vocabulary()))


def rendered_now(spec_name: str, variant: str, split: str) -> Dict[str, List]:
  """`rendered` with the current gin settings."""
  return rendered(spec_name, variant, split, *_settings())


@functools.lru_cache(maxsize=None)
def tokenized(spec_name: str, variant: str, split: str, *settings
              ) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
  """{'inputs', 'targets'}: (<int32>[total] ids with EOS, <int64>[N] row lengths) of `rendered`
  (cached with it: a run builds a mixture's pipelines several times, e.g. training, the start-up
  truncation check and the final evaluation; tokenizing was ~30% of a warm build's CPU time)."""
  cols = rendered(spec_name, variant, split, *settings)
  voc = vocab.default_vocabulary()
  out = {}
  for k in ('inputs', 'targets'):
    ragged = vocab.tokenize_to_ragged(voc, cols[k])
    out[k] = (ragged.flat_values.numpy(), ragged.row_lengths().numpy())
  return out


def _dataset_fn(spec_name: str, variant: str):
  def dataset_fn(split: str, shuffle_files: bool, seed=None) -> tf.data.Dataset:
    cols = rendered_now(spec_name, variant, split)
    limit = None if variant == 'mix' else eval_prompts.example_limit()
    cols = {k: v[:limit] for k, v in cols.items()}  # an evaluation may ask for the first n only
    # Tokenized here, in one batched call, rather than by a per-task tf.data map: tracing ~100
    # tokenizer maps made the first batch of 'flan_embedded' take tens of seconds.
    features = {k: tf.RaggedTensor.from_row_lengths(*ids)[:limit]
                for k, ids in tokenized(spec_name, variant, split, *_settings()).items()}
    if variant != 'mix':  # training-only tasks carry no extras, so mixtures need no filter map
      features.update(inputs_pretokenized=tf.constant(cols['inputs'], tf.string),
                      targets_pretokenized=tf.constant(cols['targets'], tf.string),
                      template_id=tf.constant(cols['template_id'], tf.int32))
    ds = tf.data.Dataset.from_tensor_slices(features)
    if shuffle_files:
      # A full permutation of the split, new each epoch, so that seqio's shuffle buffer can
      # stay small (SHUFFLE_BUFFER) and the first batch need not fill ~50 big buffers.
      ds = ds.shuffle(len(cols['inputs']), seed=seed, reshuffle_each_iteration=True)
    return ds
  return dataset_fn


def _num_examples(spec: TaskSpec) -> Dict[str, int]:
  if spec.fixed_examples is not None:
    return {s: len(spec.fixed_examples(s)) for s in SPLITS}
  return {'train': spec.train_size, 'validation': spec.eval_size, 'test': spec.eval_size}


def register_task(spec: TaskSpec, variant: str) -> seqio.Task:
  source = seqio.FunctionDataSource(_dataset_fn(spec.name, variant), splits=SPLITS,
                                    num_input_examples=_num_examples(spec))
  return registry.add_task(
      task_name(spec.name, variant), fingerprint=f'embedded:{spec.name}:{variant}',
      source=source, output_features=vocab.output_features(),
      preprocessors=[],  # tokenized (with EOS) by the source, see _dataset_fn
      # CoT: answers read from "So the answer is X." (eval_metrics); others: exact match.
      postprocess_fn=eval_metrics.cot_answer if variant == 'cot' else eval_metrics.strip_text,
      metric_fns=list(eval_metrics.COT_METRICS if variant == 'cot'
                      else eval_metrics.GENERATION_METRICS),
      shuffle_buffer_size=SHUFFLE_BUFFER)


def variants_of(spec_name: str) -> Tuple[str, ...]:
  """Registered prompt variants of one embedded task ('cot' only with rationales)."""
  base = VARIANTS if TASKS_BY_NAME[spec_name].has_rationale else VARIANTS[:2]
  return base + ('mix',)


def round_robin(names: Sequence[str]) -> List[str]:
  """Interleave task names cluster by cluster, so any prefix spans as many clusters as it can."""
  by_cluster: Dict[str, List[str]] = {}
  for n in names:
    by_cluster.setdefault(TASKS_BY_NAME[n].cluster, []).append(n)
  queues, out = list(by_cluster.values()), []
  while any(queues):
    for q in queues:
      if q:
        out.append(q.pop(0))
  return out


TRAINING_ORDER = tuple(round_robin(TRAINING_TASKS))


def register_training_mixture(name: str, spec_names: Sequence[str]) -> seqio.Mixture:
  """`_mix` tasks of `spec_names`, one sub-mixture per cluster (weights: mixtures.submix_weights;
  inside a cluster: capped examples-proportional)."""
  submixes: Dict[str, List[str]] = {}
  for s in spec_names:
    submixes.setdefault(TASKS_BY_NAME[s].cluster, []).append(task_name(s, 'mix'))
  return mixtures.register_submixed(name, submixes)


@gin.configurable
def training_mixture(num_tasks: int = len(TRAINING_ORDER)) -> str:
  """Name of the training mixture over the first `num_tasks` tasks of TRAINING_ORDER
  (registered on demand): the paper's 'number of tasks' scale knob, e.g. in gin
  `MIXTURE = @tasks.embedded.training_mixture()` with `training_mixture.num_tasks = 8`."""
  if not 1 <= num_tasks <= len(TRAINING_ORDER):
    raise ValueError(f'training_mixture.num_tasks={num_tasks!r}: must be in '
                     f'[1, {len(TRAINING_ORDER)}]')
  if num_tasks == len(TRAINING_ORDER):
    return 'flan_embedded'
  name = f'flan_embedded_n{num_tasks}'
  register_training_mixture(name, TRAINING_ORDER[:num_tasks])
  return name


def _proportional(name: str, spec_names: Sequence[str], variant: str = 'zs') -> None:
  mixtures.register_proportional(
      name, [task_name(s, variant) for s in spec_names if variant in variants_of(s)])


def register_all() -> None:
  """Registers every embedded task variant and mixture (idempotent)."""
  for spec in ALL_TASKS:
    for variant in variants_of(spec.name):
      register_task(spec, variant)
  register_training_mixture('flan_embedded', TRAINING_ORDER)
  for n in NUM_TASKS_CHOICES:
    training_mixture(n)
  mixtures.register_submixed('flan_embedded_formats', {
      v: [task_name(s, v) for s in TRAINING_ORDER if v in variants_of(s)] for v in VARIANTS})
  for v in VARIANTS:
    _proportional(f'flan_embedded_{v}', TRAINING_ORDER, v)
  _proportional('flan_embedded_heldout', HELDOUT_TASKS)
  _proportional('flan_embedded_heldout_fs', HELDOUT_TASKS, 'fs')
  _proportional('flan_embedded_heldout_cot', HELDOUT_TASKS, 'cot')
  _proportional('flan_embedded_downstream', DOWNSTREAM_TASKS)
  _proportional('flan_embedded_all', [s.name for s in ALL_TASKS])
  for c in CLUSTERS:
    _proportional(f'flan_embedded_cluster_{c}', [s.name for s in ALL_TASKS if s.cluster == c])
