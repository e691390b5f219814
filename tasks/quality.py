"""Data-quality checks that count what they skip or cut, so nothing is dropped silently.

Counts live in int64 `tf.Variable`s updated inside the tf.data pipeline (keyed by reason and
task); `report()` reads them and `log_report()` logs the non-zero ones. Reasons:
  empty_target      target empty or whitespace only  -> example skipped
  invalid_utf8      a text field is not valid UTF-8   -> example skipped
  truncated_inputs  tokenized inputs longer than the feature length -> truncated (EOS kept)
  truncated_targets tokenized targets longer than the feature length -> truncated (EOS kept)
Counts are of examples the pipeline has *processed* (prefetching runs slightly ahead of what
the consumer has taken).
"""
from __future__ import annotations

import threading
from typing import Dict, Mapping, Sequence, Tuple

from absl import logging
import tensorflow as tf

_LOCK = threading.Lock()
_COUNTERS: Dict[Tuple[str, str], tf.Variable] = {}


def counter(reason: str, task: str) -> tf.Variable:
  """The counter for (reason, task); created eagerly on first request."""
  with _LOCK:
    key = (reason, task)
    if key not in _COUNTERS:
      with tf.init_scope():
        _COUNTERS[key] = tf.Variable(0, dtype=tf.int64, trainable=False,
                                     name=f'count_{reason}')
    return _COUNTERS[key]


def report() -> Dict[str, int]:
  """{'reason/task': count} for every non-zero counter."""
  with _LOCK:
    items = list(_COUNTERS.items())
  out = {f'{r}/{t}': int(v.numpy()) for (r, t), v in items}
  return {k: v for k, v in sorted(out.items()) if v}


def reset() -> None:
  with _LOCK:
    for v in _COUNTERS.values():
      v.assign(0)


def log_report() -> Dict[str, int]:
  counts = report()
  for key, n in counts.items():
    logging.warning('data quality: %d examples %s', n, key.replace('/', ' in '))
  return counts


def _valid_utf8(s: tf.Tensor) -> tf.Tensor:
  fixed = tf.strings.unicode_transcode(s, 'UTF-8', 'UTF-8', errors='replace',
                                       replacement_char=0xFFFD)
  # Valid text round-trips unchanged (a literal U+FFFD in valid text also round-trips).
  return tf.reduce_all(tf.equal(fixed, s))


def filter_bad_text(dataset: tf.data.Dataset, task: str,
                    text_fields: Sequence[str] = ('inputs', 'targets')) -> tf.data.Dataset:
  """Skip (and count) examples with an empty target or a field that is not valid UTF-8."""
  empty, invalid = counter('empty_target', task), counter('invalid_utf8', task)

  @tf.autograph.experimental.do_not_convert   # plain TF ops: nothing for autograph to convert
  def keep(ex: Mapping[str, tf.Tensor]) -> tf.Tensor:
    ok_utf8 = tf.reduce_all(tf.stack([_valid_utf8(ex[f]) for f in text_fields]))
    nonempty = tf.strings.length(tf.strings.strip(ex['targets'])) > 0
    with tf.control_dependencies([
        invalid.assign_add(tf.cast(tf.logical_not(ok_utf8), tf.int64)),
        empty.assign_add(tf.cast(tf.logical_and(ok_utf8, tf.logical_not(nonempty)), tf.int64))]):
      return tf.logical_and(ok_utf8, nonempty)

  return dataset.filter(keep)


def truncate_and_count(dataset: tf.data.Dataset, lengths: Mapping[str, int],
                       eos_id: Mapping[str, int], task: str = 'all') -> tf.data.Dataset:
  """Cut token features longer than `lengths` to `length - 1` tokens + EOS (seqio's
  append_eos_after_trim convention; features without EOS are cut to `length`), counting them.

  `eos_id[feature]` is the EOS id or -1 when the feature has no EOS.
  """
  counters = {k: counter(f'truncated_{k}', task) for k in lengths}

  @tf.autograph.experimental.do_not_convert   # `if`/`for` over Python values; tf.cond is explicit
  def cut(ex):
    ex = dict(ex)
    for k, n in lengths.items():
      x = ex[k]
      too_long = tf.size(x) > n
      eos = eos_id.get(k, -1)
      if eos >= 0:
        short = tf.concat([x[:n - 1], tf.constant([eos], x.dtype)], axis=0)
      else:
        short = x[:n]
      with tf.control_dependencies([counters[k].assign_add(tf.cast(too_long, tf.int64))]):
        ex[k] = tf.cond(too_long, lambda s=short: s, lambda x=x: tf.identity(x))
    return ex

  return dataset.map(cut, num_parallel_calls=tf.data.AUTOTUNE)
