"""tasks.packing gives seqio's packed rows and batches: the same input through seqio's packer
(seqio.utils.trim_and_pack_dataset, seqio.EncDecFeatureConverter after
tasks.quality.truncate_and_count) and through ours, every feature compared element for element."""
import itertools

import numpy as np
import pytest
import seqio
import tensorflow as tf

import tasks  # pylint: disable=unused-import
from tasks import packing, pipeline, quality

SPEC = {'inputs': tf.TensorSpec([None], tf.int32), 'targets': tf.TensorSpec([None], tf.int32)}


def _examples(n, lengths, seed, zeros=False, eos=None):
  """Random examples whose features run from empty to a third of the packed length, one in six
  up to twice it (so cuts, empty features, several examples per row, full rows and several
  blocks all occur); `zeros`: a 0 id inside some of them; `eos`: every feature ends with it."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    ex = {}
    for k, length in lengths.items():
      longest = 2 * length if rng.random() < 1 / 6 else length // 3
      x = rng.integers(2, 60, rng.integers(0 if eos is None else 1, longest + 1))
      if zeros and i % 5 == 0 and len(x) > 2:
        x[1] = 0
      if eos is not None:
        x[-1] = eos
      ex[k] = x.astype(np.int32)
    out.append(ex)
  return out


def _dataset(examples):
  return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=SPEC)


def _assert_same(ours, theirs):
  ours, theirs = list(ours.as_numpy_iterator()), list(theirs.as_numpy_iterator())
  assert len(ours) == len(theirs) > 1
  for a, b in zip(ours, theirs):
    assert sorted(a) == sorted(b)
    for k in a:
      assert a[k].dtype == b[k].dtype, k
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  return ours


@pytest.mark.parametrize('seed', [0, 1])
def test_rows_equal_seqio_trim_and_pack(seed):
  # 150 examples in blocks of max(lengths) = 24: 6 full blocks and a short last one.
  lengths = {'inputs': 24, 'targets': 7}
  examples = _examples(150, lengths, seed, zeros=True)
  rows = _assert_same(packing.trim_and_pack_dataset(_dataset(examples), lengths),
                      seqio.utils.trim_and_pack_dataset(_dataset(examples), lengths))
  assert max(int(r['inputs_segment_ids'].max()) for r in rows) >= 3   # really packed


def test_converter_with_cuts_equals_truncate_then_seqio_converter():
  lengths, eos = {'inputs': 20, 'targets': 6}, {'inputs': 1, 'targets': 1}
  examples = _examples(150, lengths, seed=3, eos=1)
  quality.reset()
  theirs = seqio.EncDecFeatureConverter(pack=True)(
      quality.truncate_and_count(_dataset(examples), lengths, eos, task='seqio'), lengths)
  counters = {k: quality.counter(f'truncated_{k}', 'ours') for k in lengths}
  ours = packing.PackingEncDecFeatureConverter(eos=eos, truncated=counters)(
      _dataset(examples), lengths)
  _assert_same(ours.batch(3), theirs.batch(3))
  counts = quality.report()
  longer = {k: sum(len(ex[k]) > n for ex in examples) for k, n in lengths.items()}
  for k in lengths:    # the cuts counted once per example, as truncate_and_count counts them
    assert counts[f'truncated_{k}/ours'] == counts[f'truncated_{k}/seqio'] == longer[k] > 0


def test_get_batches_vectorized_equals_seqio_packer():
  lengths = {'inputs': 32, 'targets': 8}
  args = dict(mixture_or_task_name='emb_addition', split='train', task_feature_lengths=lengths,
              batch_size=4, seed=5)
  ours = list(itertools.islice(pipeline.get_batches(**args), 6))
  theirs = list(itertools.islice(pipeline.get_batches(packer='seqio', **args), 6))
  for a, b in zip(ours, theirs):
    assert sorted(a) == sorted(b)
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  with pytest.raises(ValueError, match="packer='fast': choose one of"):
    pipeline.get_batches(packer='fast', **args)


def test_bad_features_are_named():
  ds = tf.data.Dataset.from_tensors({'inputs': tf.zeros([2, 3], tf.int32),
                                     'targets': tf.zeros([3], tf.int32)})
  with pytest.raises(ValueError, match="feature 'inputs': only 1-D"):
    packing.trim_and_pack_dataset(ds, {'inputs': 4, 'targets': 4})
  with pytest.raises(ValueError, match="feature 'labels' not in the dataset"):
    packing.trim_and_pack_dataset(ds, {'labels': 4})
