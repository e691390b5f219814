"""The training-time reader of prepared shards holding token ids.

`IdsSource` yields, in the same order, the examples `seqio.TFExampleDataSource` gives over the
same shards with the id features (`{'inputs', 'targets': <int32>[n]}` after a cast), at about
half its CPU cost per example, which matters because a FLAN 2022 mixture reads from every task
at once and the host's input pipeline must keep a GPU's train step fed:

- records are parsed 64 at a time (`tf.io.parse_example`, one op call per 64 records instead of
  one per record) and cast to int32 in the same function, then unbatched. A file's examples
  keep their order, so the interleave over files (seqio's cycle and block lengths) gives the
  same sequence;
- the interleave over a task's files runs in the thread that pulls from it (seqio makes it
  parallel). A mixture has one such interleave per task behind the task's own prefetch
  thread, so a parallel interleave per task only adds threads and hand-offs per example on a
  host whose cores are already shared by every task; the order is the same either way (seqio's
  interleave is deterministic).

File selection (this host's files under `shard_info`, the seeded file shuffle) is seqio's.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from tasks.flan_collection import tokens

PARSE_BATCH = 64   # records per parse_example call: amortises the op's per-call cost


def _read_ids(path: tf.Tensor) -> tf.data.Dataset:
  """{'inputs', 'targets': <int32>[n]} of one shard file, in file order."""
  description = {f: tf.io.RaggedFeature(tf.int64) for f in tokens.ID_FEATURES.values()}

  @tf.autograph.experimental.do_not_convert   # plain TF ops: nothing for autograph to convert
  def parse(records):   # <string>[b] -> {feature: <int32>[b, (n)]}
    parsed = tf.io.parse_example(records, description)
    return {k: tf.cast(parsed[f], tf.int32) for k, f in tokens.ID_FEATURES.items()}

  return tf.data.TFRecordDataset(path).batch(PARSE_BATCH).map(parse).unbatch()


class IdsSource(seqio.FileDataSource):
  """seqio.TFExampleDataSource's examples of id shards (module docstring), cast to int32."""

  def __init__(self, split_to_filepattern: Mapping[str, Sequence[str]],
               num_input_examples: Optional[Mapping[str, int]] = None):
    super().__init__(read_file_fn=_read_ids, split_to_filepattern=split_to_filepattern,
                     num_input_examples=num_input_examples)

  def get_dataset(self, split: str = 'train', shuffle: bool = True, seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None, *, sequence_length=None,
                  use_cached: bool = False, num_epochs: Optional[int] = 1) -> tf.data.Dataset:
    """seqio.FileDataSource.get_dataset with the interleave run sequentially (same order)."""
    del sequence_length, use_cached, num_epochs   # unused, as in seqio
    files = self.list_shards(split)
    if not files:
      raise ValueError(f'no file is found for split {split!r}: {self._split_to_filepattern}')
    files_ds = tf.data.Dataset.from_tensor_slices(np.array(files, dtype=str))
    if shard_info:
      if len(files) < shard_info.num_shards:
        raise ValueError(f'{len(files)} files cannot be split between '
                         f'{shard_info.num_shards} hosts')
      files_ds = files_ds.shard(shard_info.num_shards, shard_info.index)
    if shuffle:   # a perfect file shuffle, as seqio's default
      files_ds = files_ds.shuffle(buffer_size=len(files), seed=seed)
    return files_ds.interleave(self._reader, cycle_length=self._cycle_length,
                               block_length=self._block_length)
