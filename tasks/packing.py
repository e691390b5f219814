"""Packing of tokenized examples into fixed-length rows: seqio's semantics, vectorised.

seqio's `trim_and_pack_dataset` (used by its feature converters with `pack=True`) takes blocks
of `max(lengths)` consecutive examples and packs each block greedily in order: an example joins
the current row when every feature still fits, otherwise the row is closed and a new one starts;
the block's last row is closed at the block's end. It does that with a `tf.while_loop` of
`tf.concat`s and `TensorArray` writes per example, the most expensive step of a packed input
pipeline. `trim_and_pack_dataset` here gives the same rows (every feature, same order: asserted
against seqio's in tests/test_tasks_packing.py) with one small loop over the block's lengths
(scalars only) and one scatter per feature, and `PackingEncDecFeatureConverter` is seqio's
`EncDecFeatureConverter` using it.

The tf.data functions here are plain TensorFlow ops (their `if`s and loops are over Python
values), so they are marked for autograph to leave as written: converting them cost ~0.5 CPU-s
in every process that builds a packed pipeline, and changed nothing.

Kept from seqio, so the rows are equal: blocks of `max(lengths)` examples; each feature first
cut to its length, then to its number of non-zero ids (seqio reads a padded batch back that
way); segment ids = cumsum(position == 0) * (token != 0) over the padded row.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional

import seqio
import tensorflow as tf

TRUNCATED = '_truncated'   # pack_block's count of examples cut, per feature


def _flat(feature: tf.RaggedTensor, length: int, eos: int = -1) -> Dict[str, tf.Tensor]:
  """A block's feature as flat ids: {'values', 'example': <int32>[N] its example,
  'position': <int32>[N] in that example, 'kept': <int32>[B] ids kept per example,
  'longer': <bool>[B] examples longer than `length`}.

  seqio keeps the first min(n, length) ids, then as many of those as are non-zero (it reads a
  zero-padded batch back by counting non-zeros). With `eos` >= 0 the id at length - 1 of a
  longer example becomes `eos` first (the cut keeps its EOS, as seqio's
  append_eos_after_trim and tasks.quality.truncate_and_count do)."""
  values = feature.flat_values
  example = tf.cast(feature.value_rowids(), tf.int32)
  starts = tf.cast(feature.row_starts(), tf.int32)
  longer = feature.row_lengths() > length
  position = tf.range(tf.size(values, out_type=tf.int32)) - tf.gather(starts, example)
  if eos >= 0:
    at_cut = tf.logical_and(tf.equal(position, length - 1), tf.gather(longer, example))
    values = tf.where(at_cut, tf.constant(eos, values.dtype), values)
  counted = tf.cast(tf.logical_and(position < length, tf.not_equal(values, 0)), tf.int32)
  kept = tf.math.unsorted_segment_sum(counted, example, tf.shape(starts)[0])
  return {'values': values, 'example': example, 'position': position, 'kept': kept,
          'longer': longer}


def _row_of_example(kept: Mapping[str, tf.Tensor], lengths: Mapping[str, int],
                    max_examples: int) -> tf.Tensor:
  """<int32>[B] packed row of each example of a block, greedy in order.

  `kept` {feature: <int32>[B]}, B <= max_examples. A row starting at example i holds examples i..j-1 for the
  largest j whose ids fit every feature's length (ids >= 0, so the test is monotone in j):
  next(i) = j, found by binary search in the prefix sums. The rows start at 0, next(0),
  next(next(0)), ...: marked for every example at once by pointer doubling (log2 B gathers)
  instead of a loop over the examples."""
  num = tf.shape(next(iter(kept.values())))[0]
  index = tf.range(num + 1)
  nxt = tf.fill([num + 1], num)
  for k, length in lengths.items():
    total = tf.concat([[0], tf.cumsum(kept[k])], 0)                  # <int32>[B + 1]
    reach = tf.searchsorted(total, total + length, side='right') - 1  # last j with fit
    nxt = tf.minimum(nxt, tf.maximum(reach, index + 1))
  nxt = tf.minimum(nxt, num)
  start = tf.cast(tf.equal(index, 0), tf.int32)
  for _ in range(max_examples.bit_length() + 1):   # 2**steps > max_examples >= rows
    start = tf.maximum(start, tf.math.unsorted_segment_max(start, nxt, num + 1))
    nxt = tf.gather(nxt, nxt)
  return tf.cumsum(start[:num]) - 1


def _rows(flat: Dict[str, tf.Tensor], row: tf.Tensor, num_rows: tf.Tensor, length: int
          ) -> Dict[str, tf.Tensor]:
  """<int32>[R, length] tokens, positions and segment ids of one feature: the kept ids in
  order (a row's examples are consecutive, so the rows are the kept stream cut by row)."""
  keep = flat['position'] < tf.gather(flat['kept'], flat['example'])
  row_of_id = tf.gather(row, tf.boolean_mask(flat['example'], keep))
  shape = tf.stack([num_rows, length])

  def dense(values):
    return tf.RaggedTensor.from_value_rowids(tf.cast(values, tf.int32), row_of_id,
                                             nrows=num_rows).to_tensor(0, shape=shape)

  tokens = dense(tf.boolean_mask(flat['values'], keep))
  positions = dense(tf.boolean_mask(flat['position'], keep))
  segments = tf.cumsum(tf.cast(tf.equal(positions, 0), tf.int32), axis=1) * tf.cast(
      tf.not_equal(tokens, 0), tf.int32)
  return {'': tokens, '_positions': positions, '_segment_ids': segments}


def pack_block(block: Mapping[str, tf.RaggedTensor], lengths: Mapping[str, int],
               eos: Optional[Mapping[str, int]] = None) -> Dict[str, tf.Tensor]:
  """Packs one block of examples ({feature: <int>[B, (n)] ragged}) into
  {feature, feature_positions, feature_segment_ids: <int32>[R, length]}, plus
  {feature_truncated: <int64>[]} (examples longer than the feature's length) when `eos`
  ({feature: EOS id, or -1 for none}) asks for EOS-keeping cuts."""
  flat = {k: _flat(block[k], n, (eos or {}).get(k, -1)) for k, n in lengths.items()}
  row = _row_of_example({k: f['kept'] for k, f in flat.items()}, lengths,
                        max(lengths.values()))
  num_rows = row[-1] + 1
  out = {}
  for k, n in lengths.items():
    for suffix, v in _rows(flat[k], row, num_rows, n).items():
      out[k + suffix] = v
    if eos is not None:
      out[k + TRUNCATED] = tf.reduce_sum(tf.cast(flat[k]['longer'], tf.int64))
  return out


def _check_features(dataset: tf.data.Dataset, lengths: Mapping[str, int]) -> None:
  for k in lengths:
    if k not in dataset.element_spec:
      raise ValueError(f'feature {k!r} not in the dataset (it has {list(dataset.element_spec)})')
    if not dataset.element_spec[k].shape.is_compatible_with(tf.TensorShape([None])):
      raise ValueError(f'feature {k!r}: only 1-D features can be packed, got '
                       f'{dataset.element_spec[k].shape}')


def pack_blocks(dataset: tf.data.Dataset, lengths: Mapping[str, int],
                eos: Optional[Mapping[str, int]] = None,
                truncated: Optional[Mapping[str, tf.Variable]] = None) -> tf.data.Dataset:
  """Blocks of packed rows ({feature, feature_positions, feature_segment_ids: <int32>[R, L]},
  one element per `max(lengths)` input examples); `trim_and_pack_dataset` unbatches them.

  With `eos` ({feature: EOS id or -1}), an example longer than a feature's length is cut to
  length - 1 ids + EOS (what tasks.quality.truncate_and_count does before seqio's packing, here
  done on the whole block at once), and each block adds its number of such examples to
  `truncated[feature]` (<int64> variables), so the cuts stay counted."""
  lengths = {k: int(v) for k, v in lengths.items()}
  _check_features(dataset, lengths)
  ds = dataset
  if set(ds.element_spec) != set(lengths):   # a per-example map: only when there is a choice
    ds = ds.map(tf.autograph.experimental.do_not_convert(lambda ex: {k: ex[k] for k in lengths}),
                num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.ragged_batch(max(lengths.values()))

  @tf.autograph.experimental.do_not_convert
  def pack(block):
    packed = pack_block(block, lengths, eos)
    counts = {k: packed.pop(k + TRUNCATED) for k in lengths if k + TRUNCATED in packed}
    updates = [truncated[k].assign_add(n) for k, n in counts.items() if truncated]
    with tf.control_dependencies(updates):
      return {k: tf.identity(v) for k, v in packed.items()}

  return ds.map(pack, num_parallel_calls=tf.data.AUTOTUNE)


def _unbatch_rows(blocks: tf.data.Dataset, lengths: Mapping[str, int]) -> tf.data.Dataset:
  @tf.autograph.experimental.do_not_convert
  def set_shape(block):   # on the blocks, so the rows get their static length without a map
    for k, v in block.items():
      v.set_shape([None, lengths[k]])
    return block

  return blocks.map(set_shape).unbatch()


def trim_and_pack_dataset(dataset: tf.data.Dataset, lengths: Mapping[str, int],
                          eos: Optional[Mapping[str, int]] = None,
                          truncated: Optional[Mapping[str, tf.Variable]] = None
                          ) -> tf.data.Dataset:
  """seqio.utils.trim_and_pack_dataset's rows (1-D int features named in `lengths`; others are
  dropped), computed per block by `pack_block`; `eos`, `truncated` as in `pack_blocks`."""
  blocks = pack_blocks(dataset, lengths, eos, truncated)
  return _unbatch_rows(blocks, {k + suffix: int(n) for k, n in lengths.items()
                                for suffix in ('', '_positions', '_segment_ids')})


def _shift_right(x: tf.Tensor, fill: int = 0) -> tf.Tensor:
  """<int32>[R, L] -> each row shifted right by one, `fill` in front."""
  return tf.pad(x, [[0, 0], [1, 0]], constant_values=fill)[:, :-1]


class PackingEncDecFeatureConverter(seqio.EncDecFeatureConverter):
  """seqio.EncDecFeatureConverter with `pack_blocks` as its packing and its per-row feature
  conversion done on whole blocks of rows: the same batches as seqio's (pack=True only).

  `eos` and `truncated` as in `pack_blocks`: examples longer than the lengths may come in (they
  are cut with their EOS kept, and counted), so seqio's per-example length assertions are off;
  every output feature has its length by construction."""

  def __init__(self, eos: Optional[Mapping[str, int]] = None,
               truncated: Optional[Mapping[str, tf.Variable]] = None, **kwargs):
    super().__init__(pack=True, apply_length_check=False, **kwargs)
    self._eos, self._truncated = eos, truncated

  @tf.autograph.experimental.do_not_convert
  def _convert_block(self, block: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """seqio's _convert_example on <int32>[R, L] rows: decoder inputs are the targets shifted
    right, with BOS at each segment's first position."""
    targets, segments = block['targets'], block['targets_segment_ids']
    first = tf.not_equal(segments, _shift_right(segments))
    decoder_inputs = tf.where(first, tf.constant(self.bos_id, targets.dtype),
                              _shift_right(targets, self.bos_id))
    return {'encoder_input_tokens': block['inputs'], 'decoder_target_tokens': targets,
            'decoder_input_tokens': decoder_inputs,
            'decoder_loss_weights': tf.cast(tf.not_equal(targets, 0), tf.int32),
            'encoder_segment_ids': block['inputs_segment_ids'],
            'decoder_segment_ids': segments,
            'encoder_positions': block['inputs_positions'],
            'decoder_positions': block['targets_positions']}

  def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
                        ) -> tf.data.Dataset:
    if self._passthrough_features:
      raise ValueError('PackingEncDecFeatureConverter has no passthrough features')
    blocks = pack_blocks(ds, task_feature_lengths, self._eos, self._truncated)
    blocks = blocks.map(self._convert_block, num_parallel_calls=tf.data.AUTOTUNE)
    return _unbatch_rows(blocks, self.get_model_feature_lengths(task_feature_lengths))
