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
