"""Numpy batches for training and evaluation: seqio dataset -> count/trim -> feature converter.

`get_batches` is the one entry point the trainer uses. It is deterministic: the same arguments
give the same batches (seeded shuffling, seeded mixture sampling, in-order tf.data). Resuming at
`start_batch=k` yields exactly batch k+1 onward of the uninterrupted stream, by skipping k batches
of that same stream (cost: the skipped batches are recomputed, not trained on). TensorFlow is kept
off accelerators so it never competes with JAX for device memory.
"""
from __future__ import annotations

from typing import Dict, Mapping

from absl import logging
import numpy as np
import seqio
import tensorflow as tf

from tasks import packing, quality, registry

FEATURES = ('inputs', 'targets')
PACKERS = ('vectorized', 'seqio')
_UNCACHED_WARNING = 'Using an uncached FunctionDataset for training'


class _DropUncachedWarning(logging.logging.Filter):
  """seqio warns once per task per dataset that an uncached FunctionDataSource shuffles poorly
  on restarts; ours permute the whole split in memory from the seed (and resume is exact), so
  the ~50 identical warnings per mixture are noise."""

  def filter(self, record):
    return _UNCACHED_WARNING not in str(record.msg)


logging.get_absl_logger().addFilter(_DropUncachedWarning())
REPORT_EVERY = 1000  # batches between data-quality log lines


def hide_accelerators_from_tf() -> None:
  try:
    tf.config.set_visible_devices([], 'GPU')
    tf.config.set_visible_devices([], 'TPU')
  except (RuntimeError, ValueError):
    pass  # already initialised (devices can only be hidden before first use) or no such type


def _check_args(lengths, batch_size, shard_id, num_shards, start_batch):
  missing = [k for k in FEATURES if k not in lengths]
  if missing or any(int(lengths[k]) < 2 for k in FEATURES):
    raise ValueError(f'task_feature_lengths={dict(lengths)}: need inputs and targets >= 2')
  if batch_size < 1:
    raise ValueError(f'batch_size={batch_size}: must be >= 1')
  if not 0 <= shard_id < num_shards:
    raise ValueError(f'shard_id={shard_id}, num_shards={num_shards}: need 0 <= shard_id < '
                     'num_shards')
  if start_batch < 0:
    raise ValueError(f'start_batch={start_batch}: must be >= 0')


def _pad_final_batch(batch: Dict[str, np.ndarray], batch_size: int) -> Dict[str, np.ndarray]:
  """Pads a short last batch with all-zero rows (padding, loss weight 0) to a fixed shape."""
  n = next(iter(batch.values())).shape[0]
  if n == batch_size:
    return batch
  return {k: np.concatenate([v, np.zeros((batch_size - n,) + v.shape[1:], v.dtype)])
          for k, v in batch.items()}


class BatchIterator:
  """Iterator of `{feature: <int32>[batch_size, length]}` numpy dicts; `.stats()` gives the
  data-quality counts (quality.report())."""

  def __init__(self, dataset: tf.data.Dataset, batch_size: int, name: str):
    self.dataset = dataset
    self._it = dataset.as_numpy_iterator()
    self._batch_size = batch_size
    self._name = name
    self._count = 0

  def __iter__(self) -> 'BatchIterator':
    return self

  def __next__(self) -> Dict[str, np.ndarray]:
    try:
      batch = next(self._it)
    except StopIteration:
      quality.log_report()
      raise
    self._count += 1
    if self._count % REPORT_EVERY == 0:
      quality.log_report()
    return _pad_final_batch(batch, self._batch_size)

  @staticmethod
  def stats() -> Dict[str, int]:
    return quality.report()


def get_dataset(mixture_or_task_name: str, split: str, task_feature_lengths: Mapping[str, int],
                seed: int, shard_id: int = 0, num_shards: int = 1, shuffle: bool = True,
                repeat: bool = True, use_cached: bool = False,
                try_in_mem_cache: bool = False, truncate: bool = True) -> tf.data.Dataset:
  """Tokenized examples {'inputs', 'targets'} (+ EOS), over-long ones truncated and counted
  (unless `truncate=False`: the packer then cuts and counts them, `get_batches`)."""
  provider = registry.get(mixture_or_task_name)
  lengths = {k: int(task_feature_lengths[k]) for k in FEATURES}
  ds = provider.get_dataset(
      sequence_length=lengths, split=split, use_cached=use_cached, shuffle=shuffle, seed=seed,
      # No ShardInfo for one shard: seqio would still list the source's files (absent under
      # tfds mock data) to decide how to shard.
      shard_info=seqio.ShardInfo(index=shard_id, num_shards=num_shards) if num_shards > 1
      else None,
      num_epochs=None if repeat else 1, trim_output_features=False,
      try_in_mem_cache=try_in_mem_cache)
  if set(ds.element_spec) != set(FEATURES):   # a per-example map: only when there is a choice
    ds = ds.map(tf.autograph.experimental.do_not_convert(lambda ex: {k: ex[k] for k in FEATURES}),
                num_parallel_calls=tf.data.AUTOTUNE)
  return quality.truncate_and_count(ds, lengths, _eos_ids(provider)) if truncate else ds


def _eos_ids(provider) -> Dict[str, int]:
  feats = provider.output_features
  return {k: (feats[k].vocabulary.eos_id if feats[k].add_eos else -1) for k in FEATURES}


def _converter(mixture_or_task_name: str, pack: bool, packer: str
               ) -> seqio.EncDecFeatureConverter:
  if packer not in PACKERS:
    raise ValueError(f'packer={packer!r}: choose one of {PACKERS}')
  if not pack or packer == 'seqio':
    return seqio.EncDecFeatureConverter(pack=pack)
  # The vectorised packer also does truncate_and_count's cuts and counts, per block.
  return packing.PackingEncDecFeatureConverter(
      eos=_eos_ids(registry.get(mixture_or_task_name)),
      truncated={k: quality.counter(f'truncated_{k}', 'all') for k in FEATURES})


def get_batches(mixture_or_task_name: str, split: str, task_feature_lengths: Mapping[str, int],
                batch_size: int, seed: int, shard_id: int = 0, num_shards: int = 1,
                pack: bool = True, shuffle: bool = True, repeat: bool = True,
                start_batch: int = 0, use_cached: bool = False,
                try_in_mem_cache: bool = False, packer: str = 'vectorized') -> BatchIterator:
  """Batches of seqio EncDecFeatureConverter features for this host's shard.

  Args:
    mixture_or_task_name: a registered seqio Mixture or Task (unknown -> ValueError listing
      the closest registered names).
    split: 'train', 'validation' or 'test'.
    task_feature_lengths: {'inputs': Li, 'targets': Lt}.
    batch_size: rows per batch of *this shard* (the global batch is batch_size * num_shards).
    seed: seeds example shuffling and mixture sampling.
    shard_id, num_shards: this host's slice of the examples (seqio.ShardInfo).
    pack: pack several examples per row (adds *_segment_ids and *_positions).
    shuffle: shuffle examples (with `seed`).
    repeat: loop forever; False ends after one pass and pads the final batch with zero rows.
    start_batch: skip this many batches first; batch k of a resumed stream equals batch
      start_batch + k of the uninterrupted one.
    use_cached, try_in_mem_cache: passed to seqio. The in-memory cache is off by default: it
      would replay the first epoch's order forever (and tfds mock data cannot use it).
    packer: 'vectorized' (tasks.packing: seqio's rows, ~2x the batches/s end to end) or 'seqio'
      (seqio.utils.trim_and_pack_dataset); both give the same batches.

  Returns:
    A BatchIterator of {feature: <int32>[batch_size, L]} with features encoder_input_tokens,
    decoder_input_tokens, decoder_target_tokens, decoder_loss_weights, and when packed
    encoder_segment_ids, decoder_segment_ids, encoder_positions, decoder_positions.
  """
  hide_accelerators_from_tf()
  _check_args(task_feature_lengths, batch_size, shard_id, num_shards, start_batch)
  converter = _converter(mixture_or_task_name, pack, packer)
  ds = get_dataset(mixture_or_task_name, split, task_feature_lengths, seed, shard_id, num_shards,
                   shuffle, repeat, use_cached, try_in_mem_cache,
                   truncate=not isinstance(converter, packing.PackingEncDecFeatureConverter))
  lengths = {k: int(task_feature_lengths[k]) for k in FEATURES}
  ds = converter(ds, lengths)
  ds = ds.batch(batch_size, drop_remainder=False)
  if start_batch:
    ds = ds.skip(start_batch)
  ds = ds.prefetch(2)
  logging.info('get_batches(%s, %s): batch_size=%d shard %d/%d pack=%s start_batch=%d',
               mixture_or_task_name, split, batch_size, shard_id, num_shards, pack, start_batch)
  return BatchIterator(ds, batch_size, mixture_or_task_name)
