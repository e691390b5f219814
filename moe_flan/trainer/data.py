"""Input data settings and batch iterators over seqio mixtures (via `tasks.pipeline`)."""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Iterator, Mapping, Optional

from absl import logging
import gin
import numpy as np

# Features the model consumes; anything else a pipeline yields (e.g. pretokenized text) is dropped.
MODEL_FEATURES = ('encoder_input_tokens', 'decoder_input_tokens', 'decoder_target_tokens',
                  'decoder_loss_weights', 'encoder_segment_ids', 'decoder_segment_ids',
                  'encoder_positions', 'decoder_positions')


# Above this fraction of a task's examples cut by TASK_FEATURE_LENGTHS, the start-up check warns.
TRUNCATION_WARN_FRACTION = 0.01


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Which mixture/task, lengths and batch size (global, over all processes).

  truncation_check_examples: at start, this many of each task's first examples are measured
  against `task_feature_lengths` (`report_truncation`); 0 skips the check.
  """
  mixture_or_task_name: str = ''
  task_feature_lengths: Mapping[str, int] = dataclasses.field(
      default_factory=lambda: {'inputs': 512, 'targets': 128})
  batch_size: int = 8
  split: str = 'train'
  seed: int = 0
  pack: bool = True
  shuffle: bool = True
  use_cached_tasks: bool = False
  truncation_check_examples: int = 64

  def __post_init__(self):
    if not self.mixture_or_task_name:
      raise ValueError('MIXTURE_OR_TASK_NAME (DataConfig.mixture_or_task_name) is not set')
    for key in ('inputs', 'targets'):
      if key not in self.task_feature_lengths:
        raise ValueError(f'TASK_FEATURE_LENGTHS={dict(self.task_feature_lengths)} lacks {key!r}')
    if self.batch_size < 1:
      raise ValueError(f'BATCH_SIZE={self.batch_size}: must be >= 1')


def check_task_exists(name: str, model_vocab_size: Optional[int] = None) -> None:
  """ValueError naming `name` if no seqio Task or Mixture is registered under it (with the
  closest registered names), or if its vocabulary has more ids than the model's embedding."""
  # `tasks` is imported where it is used: it imports TensorFlow (seconds), which code that
  # only builds models (evaluation without data, loading, conversion) never needs.
  import tasks  # pylint: disable=g-import-not-at-top,unused-import  (registers tasks)
  from tasks import registry  # pylint: disable=g-import-not-at-top
  try:
    provider = registry.get(name)
  except ValueError as e:
    raise ValueError(f'MIXTURE_OR_TASK_NAME={name!r} is not a registered seqio task or '
                     f'mixture ({e})') from None
  if model_vocab_size is None:
    return
  for feature_name, feature in provider.output_features.items():
    if feature.vocabulary.vocab_size > model_vocab_size:
      raise ValueError(
          f'T5Config.vocab_size={model_vocab_size} is smaller than the {feature_name!r} '
          f'vocabulary of {name!r} ({feature.vocabulary.vocab_size} ids); set VOCAB_SIZE >= '
          f'{feature.vocabulary.vocab_size}')


def batches(cfg: DataConfig, shard_id: int = 0, num_shards: int = 1, start_batch: int = 0,
            repeat: bool = True, split: Optional[str] = None,
            shuffle: Optional[bool] = None) -> Iterator[dict[str, np.ndarray]]:
  """This process's rows of each global batch, from batch `start_batch` on (exact resume)."""
  from tasks import pipeline  # pylint: disable=g-import-not-at-top  (TensorFlow: see above)
  if cfg.batch_size % num_shards:
    raise ValueError(f'BATCH_SIZE={cfg.batch_size} is not divisible by {num_shards} data shards')
  kwargs: dict[str, Any] = dict(
      split=split or cfg.split, task_feature_lengths=dict(cfg.task_feature_lengths),
      batch_size=cfg.batch_size // num_shards, seed=cfg.seed, shard_id=shard_id,
      num_shards=num_shards, pack=cfg.pack, shuffle=cfg.shuffle if shuffle is None else shuffle,
      repeat=repeat, start_batch=start_batch)
  if 'use_cached' in inspect.signature(pipeline.get_batches).parameters:
    kwargs['use_cached'] = cfg.use_cached_tasks
  for batch in pipeline.get_batches(cfg.mixture_or_task_name, **kwargs):
    yield {k: np.asarray(v) for k, v in batch.items() if k in MODEL_FEATURES}


def host_slices(cfg: DataConfig, shard_id: int = 0, num_shards: int = 1,
                start_batch: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """This process's contiguous rows (shard `shard_id` of `num_shards`) of each global batch of
  the one global sequence `batches(cfg)` yields: batch n is a function of the seed and n only,
  so 1 process and N processes train on the same batches and a checkpoint written on N hosts
  resumes on M with the same data. The price: every process tokenizes and packs the whole
  global batch."""
  if cfg.batch_size % num_shards:
    raise ValueError(f'BATCH_SIZE={cfg.batch_size} is not divisible by {num_shards} data shards')
  rows = cfg.batch_size // num_shards
  for batch in batches(cfg, start_batch=start_batch):
    yield {k: v[shard_id * rows:(shard_id + 1) * rows] for k, v in batch.items()}


def truncation_fractions(cfg: DataConfig) -> dict[str, dict[str, float]]:
  """{task: {'inputs': fraction, 'targets': fraction, 'examples': n}} over each task's first
  `cfg.truncation_check_examples` examples of `cfg.split` (in training order: same seed and
  shuffling): the fraction whose tokenized feature, EOS included, is longer than its feature
  length, i.e. that the input pipeline will cut (`tasks.quality.truncate_and_count`)."""
  # (the pipeline's module also quiets seqio's per-task warning about uncached sources)
  from tasks import pipeline, registry  # pylint: disable=g-import-not-at-top
  provider = registry.get(cfg.mixture_or_task_name)
  lengths = {k: int(cfg.task_feature_lengths[k]) for k in pipeline.FEATURES}
  out = {}
  for task in getattr(provider, 'tasks', [provider]):
    if cfg.split not in task.splits:
      continue      # a mixture skips such tasks too
    ds = task.get_dataset(sequence_length=lengths, split=cfg.split, shuffle=cfg.shuffle,
                          seed=cfg.seed, num_epochs=1, trim_output_features=False,
                          use_cached=cfg.use_cached_tasks, try_in_mem_cache=False)
    sizes = first_lengths(ds, tuple(lengths), cfg.truncation_check_examples)
    n = len(next(iter(sizes.values()), ()))
    if n:
      out[task.name] = {**{k: int(np.sum(sizes[k] > length)) / n
                           for k, length in lengths.items()}, 'examples': n}
  return out


def first_lengths(ds, keys: tuple[str, ...], n: int) -> dict[str, np.ndarray]:
  """{key: <int64>[m]} the first-axis lengths of `keys` in the first m <= n examples of `ds`.

  Read as one batch when the element types allow it (1-D ragged features, or dense ones padded
  with -1, which no token id is): iterating 64 examples of each of a mixture's 45 tasks one by
  one in Python took ~1 CPU-s of every run's start-up."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (TensorFlow: see above)
  specs = ds.element_spec
  ds = ds.take(n)
  if all(isinstance(specs[k], tf.RaggedTensorSpec) and specs[k].shape.rank == 1 for k in keys
         ) and all(isinstance(s, tf.RaggedTensorSpec) or s.shape.is_fully_defined()
                   for s in specs.values()):
    batch = next(iter(ds.batch(n)), None)
    return {k: (np.zeros([0], np.int64) if batch is None else batch[k].row_lengths().numpy())
            for k in keys}
  if all(isinstance(s, tf.TensorSpec) for s in specs.values()) and all(
      specs[k].shape.rank == 1 and specs[k].dtype.is_integer and not specs[k].dtype.is_unsigned
      for k in keys):
    pad = {k: tf.constant(-1, s.dtype) if k in keys else None for k, s in specs.items()}
    batch = next(ds.padded_batch(n, padding_values=pad).as_numpy_iterator(), None)
    return {k: (np.zeros([0], np.int64) if batch is None else np.sum(batch[k] != -1, axis=1))
            for k in keys}
  examples = list(ds.as_numpy_iterator())     # other element types: one by one
  return {k: np.array([len(ex[k]) for ex in examples], np.int64) for k in keys}


def report_truncation(cfg: DataConfig) -> dict[str, dict[str, float]]:
  """Measures `truncation_fractions`, logs them, and warns naming every task and feature whose
  fraction exceeds TRUNCATION_WARN_FRACTION. Returns the fractions ({} when the check is off)."""
  if cfg.truncation_check_examples <= 0:
    return {}
  fractions = truncation_fractions(cfg)
  lengths = dict(cfg.task_feature_lengths)
  for task, f in fractions.items():
    logging.info('truncation by TASK_FEATURE_LENGTHS=%s in %s (first %d examples): inputs %.1f%%, '
                 'targets %.1f%%', lengths, task, f['examples'], 100 * f['inputs'],
                 100 * f['targets'])
  over = [f'{task} {k} {100 * f[k]:.1f}%' for task, f in fractions.items()
          for k in ('inputs', 'targets') if f[k] > TRUNCATION_WARN_FRACTION]
  if over:
    logging.warning(
        'TASK_FEATURE_LENGTHS=%s cut more than %g%% of the first examples of %s (%s split): %s. '
        'Cut examples lose their ends (targets lose their answers); raise the lengths if this is '
        'not intended.', lengths, 100 * TRUNCATION_WARN_FRACTION, cfg.mixture_or_task_name,
        cfg.split, ', '.join(over))
  return fractions
