"""Metrics writers (JSON lines + TensorBoard), progress output, plots, NaN guard unit checks."""
import glob
import io
import os

import numpy as np
import pytest

from moe_flan.trainer import metrics, nan_guard, plots, progress


def test_jsonl_and_tensorboard(tmp_path):
  w = metrics.MetricsWriter(str(tmp_path), 'train')
  for step in (1, 2, 3):
    w.write(step, {'loss': np.float32(4.0 / step), 'accuracy': 0.5,
                   'moe/expert_load_per_layer': np.full((2, 4), 0.25, np.float32)})
  w.close()
  records = metrics.read_jsonl(os.path.join(str(tmp_path), 'metrics', 'train.jsonl'))
  assert [r['step'] for r in records] == [1, 2, 3]
  assert records[1]['loss'] == 2.0 and records[0]['moe/expert_load_per_layer'][1] == [0.25] * 4
  assert glob.glob(os.path.join(str(tmp_path), 'train', 'events.out.tfevents.*'))
  metrics.truncate_after(os.path.join(str(tmp_path), 'metrics', 'train.jsonl'), 2)
  assert [r['step'] for r in metrics.read_jsonl(w.jsonl_path)] == [1, 2]
  with pytest.raises(ValueError, match='no "loss"'):
    metrics.MetricsWriter(str(tmp_path), 'eval', tensorboard=False).write(1, {'accuracy': 1.0})
  paths = plots.plot_all(str(tmp_path))
  assert sorted(os.path.basename(p) for p in paths) == sorted([plots.LOSS_PNG, plots.EXPERT_PNG])


class _Tty(io.StringIO):
  def isatty(self):
    return True


def test_progress_bar_on_a_terminal_and_lines_otherwise():
  plain = io.StringIO()
  p = progress.Progress(0, 10, stream=plain)
  p.update(5, {'loss': 1.5})
  assert plain.getvalue().startswith('step 5/10 loss=1.5') and plain.getvalue().endswith('\n')
  assert '\r' not in plain.getvalue()
  tty = _Tty()
  p = progress.Progress(0, 10, stream=tty)
  p.update(5, {'loss': 1.5})
  p.close()
  out = tty.getvalue()
  assert out.startswith('\r[' + '#' * 15 + '-' * 15 + '] step 5/10') and 'eta' in out


def test_nan_guard_names_step_and_metric():
  nan_guard.check_finite(3, {'loss': 1.0, 'grad_norm': 2.0})
  with pytest.raises(nan_guard.NonFiniteError, match='step 7: grad_norm is inf'):
    nan_guard.check_finite(7, {'loss': 1.0, 'grad_norm': float('inf')})
  with pytest.raises(nan_guard.NonFiniteError, match='step 2: loss is nan'):
    nan_guard.check_finite(2, {'loss': float('nan')})
  assert bool(nan_guard.tree_all_finite({'a': np.ones(3), 'b': np.arange(2)}))
  assert not bool(nan_guard.tree_all_finite({'a': np.array([1.0, np.nan])}))


def test_expert_plot_shows_every_layer_over_the_whole_run(tmp_path):
  """Layer 1 collapses onto expert 0 after step 30: the figure has one heatmap per layer over
  every logged step (not a mean of the last steps), then each layer's load-balancing loss."""
  w = metrics.MetricsWriter(str(tmp_path), 'train', tensorboard=False)
  balanced, collapsed = np.full(4, 0.25), np.array([1.0, 0.0, 0.0, 0.0])
  for step in range(10, 70, 10):
    late = step > 30
    layer_1 = collapsed if late else balanced
    w.write(step, {'loss': 1.0, 'moe/expert_load_per_layer': np.stack([balanced, layer_1]),
                   'moe/load_balancing_loss_per_layer': np.array([1.0, 4.0 if late else 1.0])})
  w.close()
  records = metrics.read_jsonl(w.jsonl_path)
  steps, load, lb = plots.expert_load_history(records)
  np.testing.assert_array_equal(steps, [10, 20, 30, 40, 50, 60])
  assert load.shape == (6, 2, 4) and lb.shape == (6, 2)
  np.testing.assert_array_equal(load[3:, 1], np.tile(collapsed, (3, 1)))
  fig = plots.expert_load_figure(steps, load, lb, ['encoder/layers_1', 'decoder/layers_1'])
  heatmaps = [ax for ax in fig.axes if ax.images]
  assert len(heatmaps) == 2 and 'decoder/layers_1' in heatmaps[1].get_title()
  for i, ax in enumerate(heatmaps):   # expert x step, every logged step
    np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), load[:, i, :].T)
  lines = [ax for ax in fig.axes if ax.lines]
  np.testing.assert_array_equal(lines[0].lines[1].get_ydata(), lb[:, 1])
  assert os.path.isfile(plots.plot_expert_load(str(tmp_path)))


def test_loss_curves_draw_each_logged_loss_term_in_its_panel():
  """An ordinary run's records give panels for the total, the cross entropy and the MoE losses
  (train and eval curves, each exactly its records' values); no KL panel without a teacher.
  Per-layer (vector) metrics are not loss curves."""
  train = [{'step': s, 'loss': 3.0 / s, 'cross_entropy': 2.5 / s, 'moe/load_balancing_loss': 1.1,
            'moe/expert_load_per_layer': [[0.5, 0.5]]} for s in (1, 2, 3)]
  evals = [{'step': 2, 'loss': 1.7, 'cross_entropy': 1.6}]
  fig = plots.loss_figure(train, evals)
  got = {line.get_label(): (ax.get_title(), list(line.get_xdata()), list(line.get_ydata()))
         for ax in fig.axes for line in ax.lines}
  assert got == {
      'train loss': ('loss (total)', [1, 2, 3], [3.0, 1.5, 1.0]),
      'eval loss': ('loss (total)', [2], [1.7]),
      'train cross_entropy': ('cross entropy', [1, 2, 3], [2.5, 1.25, 2.5 / 3]),
      'eval cross_entropy': ('cross entropy', [2], [1.6]),
      'train moe/load_balancing_loss': ('MoE auxiliary losses', [1, 2, 3], [1.1] * 3)}
  assert plots.loss_figure([{'step': 1, 'accuracy': 0.5}]) is None
