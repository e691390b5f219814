"""get_batches: packing, determinism, exact resume, host sharding, truncation counting, errors."""
import itertools
import time

import numpy as np
import pytest

import tasks  # pylint: disable=unused-import
from tasks import pipeline, quality

LENGTHS = {'inputs': 32, 'targets': 8}
TASK = 'emb_addition'


def _take(n, **kw):
  args = dict(mixture_or_task_name=TASK, split='train', task_feature_lengths=LENGTHS,
              batch_size=4, seed=7)
  args.update(kw)
  return list(itertools.islice(pipeline.get_batches(**args), n))


def _segments(tokens, segment_ids):
  """Per row, the non-padding tokens of each segment, in order."""
  out = []
  for row, seg in zip(tokens, segment_ids):
    for s in range(1, seg.max() + 1):
      out.append(row[seg == s].tolist())
  return out


def test_packed_segments_equal_unpacked_examples():
  packed = _take(3, pack=True, shuffle=False)
  unpacked = _take(20, pack=False, shuffle=False)
  enc = [s for b in packed for s in _segments(b['encoder_input_tokens'], b['encoder_segment_ids'])]
  tgt = [s for b in packed for s in _segments(b['decoder_target_tokens'], b['decoder_segment_ids'])]
  flat_enc = [r[r > 0].tolist() for b in unpacked for r in b['encoder_input_tokens']]
  flat_tgt = [r[r > 0].tolist() for b in unpacked for r in b['decoder_target_tokens']]
  assert len(enc) > 4  # several examples per row
  assert enc == flat_enc[:len(enc)] and tgt == flat_tgt[:len(tgt)]
  b = packed[0]
  for row, seg, pos, dec_in, dec_tgt, w in zip(
      b['encoder_input_tokens'], b['encoder_segment_ids'], b['encoder_positions'],
      b['decoder_input_tokens'], b['decoder_target_tokens'], b['decoder_loss_weights']):
    for s in range(1, seg.max() + 1):
      np.testing.assert_array_equal(pos[seg == s], np.arange((seg == s).sum()))
    np.testing.assert_array_equal(w, dec_tgt > 0)
  # Decoder inputs are the targets shifted right, restarting with 0 at each segment.
  seg = b['decoder_segment_ids'][0]
  for s in range(1, seg.max() + 1):
    t, i = b['decoder_target_tokens'][0][seg == s], b['decoder_input_tokens'][0][seg == s]
    np.testing.assert_array_equal(i, np.concatenate([[0], t[:-1]]))


def test_same_seed_same_batches_and_exact_resume():
  full = _take(5)
  again = _take(5)
  for a, b in zip(full, again):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  other = _take(1, seed=8)
  assert not np.array_equal(other[0]['encoder_input_tokens'], full[0]['encoder_input_tokens'])
  resumed = _take(2, start_batch=3)
  for k in full[3]:
    np.testing.assert_array_equal(resumed[0][k], full[3][k])
    np.testing.assert_array_equal(resumed[1][k], full[4][k])


def test_host_shards_partition_the_examples():
  # Shuffled: every host permutes with the same seed before taking its shard.
  kw = dict(mixture_or_task_name='emb_authored_sentiment', split='train', pack=False,
            shuffle=True, repeat=False, batch_size=8)
  rows = lambda batches: {tuple(r[r > 0]) for b in batches for r in b['encoder_input_tokens']
                          if r.any()}
  whole = rows(_take(100, **kw))
  s0 = rows(_take(100, shard_id=0, num_shards=2, **kw))
  s1 = rows(_take(100, shard_id=1, num_shards=2, **kw))
  assert len(whole) == 40 and s0 | s1 == whole and not s0 & s1


def test_finite_pass_pads_last_batch_with_zero_rows():
  batches = _take(100, mixture_or_task_name='emb_authored_sentiment', split='test', pack=False,
                  shuffle=False, repeat=False, batch_size=4)
  assert len(batches) == 2 and all(b['encoder_input_tokens'].shape == (4, 32) for b in batches)
  assert batches[1]['decoder_loss_weights'][1:].sum() == 0  # 5 examples: 4 + 1 + 3 padding


def test_over_long_inputs_are_truncated_with_eos_and_counted():
  quality.reset()
  b = _take(1, task_feature_lengths={'inputs': 6, 'targets': 8}, pack=False)[0]
  assert (b['encoder_input_tokens'][:, -1] == 1).all()  # EOS kept as the last token
  assert quality.report().get('truncated_inputs/all', 0) >= 4


def test_bad_arguments_and_unknown_names():
  with pytest.raises(ValueError, match=r"closest registered names: \['emb_addition'"):
    pipeline.get_batches('emb_addtion', 'train', LENGTHS, 2, 0)
  with pytest.raises(ValueError, match='shard_id=2'):
    pipeline.get_batches(TASK, 'train', LENGTHS, 2, 0, shard_id=2, num_shards=2)
  with pytest.raises(ValueError, match='task_feature_lengths'):
    pipeline.get_batches(TASK, 'train', {'inputs': 8}, 2, 0)


def test_the_pipelines_own_functions_are_left_to_run_as_written(monkeypatch):
  """Every tf.data function of the training pipelines (packing, cuts, feature selection in a
  mixture and in a task) is plain TF ops and marked for autograph to leave as written:
  converting them cost ~0.5 CPU-s in every process. A function without the mark fails here;
  a user's function (the control) is still converted."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow.python.autograph.impl import api  # pylint: disable=g-import-not-at-top
  converted = []
  transform = api._TRANSPILER.transform  # pylint: disable=protected-access

  def spy(fn, ctx):
    converted.append(f'{getattr(fn, "__module__", "")}.{getattr(fn, "__qualname__", fn)}')
    return transform(fn, ctx)

  monkeypatch.setattr(api._TRANSPILER, 'transform', spy)  # pylint: disable=protected-access
  # A mixture of tasks with extra features (its per-task selection), packed ...
  _take(1, mixture_or_task_name='flan_embedded_zs', pack=True)
  # ... and one task unpacked: the task's selection and tasks.quality's cuts.
  _take(1, task_feature_lengths={'inputs': 6, 'targets': 8}, pack=False)
  ours = [name for name in converted if name.startswith(('tasks.', 'moe_flan.'))]
  assert not ours, ours
  users = lambda x: x + 1 if x is not None else x
  next(iter(tf.data.Dataset.range(3).map(users)))
  assert any('test_tasks_pipeline' in name for name in converted), converted


def test_quickstart_mixture_first_batch_is_quick():
  start = time.time()
  b = next(pipeline.get_batches('flan_embedded', 'train', {'inputs': 128, 'targets': 32}, 8, 0))
  assert b['encoder_input_tokens'].shape == (8, 128)
  assert b['encoder_segment_ids'].max(axis=1).mean() > 1.5  # packed: rows hold several examples
  assert time.time() - start < 60  # ~5 s on a free 2-core machine
