"""Output shards: tf.train.Example encoding, shard naming and atomic TFRecord writing.

Every example holds five bytes features: `inputs`, `targets`, `task_source`, `task_name`,
`template_type` (UTF-8), and when prepared with a vocabulary two int64 lists, `inputs_ids` and
`targets_ids` (tokens.py). Examples are serialised deterministically (sorted feature map), so
the same rows give byte-identical shards. A shard is written under a temporary name and
renamed into place only when complete: a file with a final name is always a whole shard.
"""
from __future__ import annotations

import os
from typing import Iterable, List, Mapping, Optional, Sequence

import tensorflow as tf

from tasks.flan_collection import validation

FEATURES = validation.TEXT_FIELDS
TMP_SUFFIX = '.tmp'


def encode(row: validation.Row, ids: Optional[Mapping[str, Sequence[int]]] = None) -> bytes:
  """<bytes> serialised tf.train.Example of a row (plus `ids`: {feature: token ids})."""
  feature = {k: tf.train.Feature(bytes_list=tf.train.BytesList(
      value=[getattr(row, k).encode('utf-8')])) for k in FEATURES}
  for k, values in (ids or {}).items():
    feature[k] = tf.train.Feature(int64_list=tf.train.Int64List(value=values))
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(
      deterministic=True)


def feature_description(id_features: Iterable[str] = ()) -> dict:
  """tf.io.parse_single_example description of the shards' features (text, and `id_features`
  as <int64>[n] each)."""
  out = {k: tf.io.FixedLenFeature([], tf.string) for k in FEATURES}
  out.update({k: tf.io.RaggedFeature(tf.int64) for k in id_features})
  return out


def shard_names(stem: str, num_shards: int) -> List[str]:
  """'{stem}.tfrecord-00000-of-00004', ... (the TFDS / seqio cache naming)."""
  return [f'{stem}.tfrecord-{i:05d}-of-{num_shards:05d}' for i in range(num_shards)]


def write_shard(path: str, records: Iterable[bytes]) -> int:
  """Writes `records` to `path` atomically; returns the file size in bytes."""
  tmp = path + TMP_SUFFIX
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with tf.io.TFRecordWriter(tmp) as writer:
    for record in records:
      writer.write(record)
  os.replace(tmp, path)
  return os.path.getsize(path)


def remove_temporaries(directory: str) -> int:
  """Deletes half-written shards (temporary names) a killed run left; returns how many."""
  removed = 0
  for root, _, files in os.walk(directory):
    for name in files:
      if name.endswith(TMP_SUFFIX) and '.tfrecord-' in name:
        os.remove(os.path.join(root, name))
        removed += 1
  return removed
