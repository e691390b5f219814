"""End-of-run PNG plots: the loss terms a run logs (total, cross entropy, distillation KL, z-loss,
MoE losses), and every MoE layer's expert utilisation over training."""
from __future__ import annotations

import os
from typing import Optional, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from moe_flan.trainer import metrics as metrics_lib

LOSS_PNG = 'loss_curves.png'
EXPERT_PNG = 'expert_utilisation.png'
EXPERT_KEY = 'moe/expert_load_per_layer'
LB_KEY = 'moe/load_balancing_loss_per_layer'


# loss_curves.png: one panel per group of loss terms that a run logs (a panel whose metrics no
# record carries is left out), so every run type gets the same plot of what it optimises: an
# ordinary run its total, cross entropy, z-loss and MoE losses; a distillation run also the KL to
# its teacher and the teacher's own cross entropy beside the student's.
LOSS_PANELS = (
    ('loss (total)', ('loss',)),
    ('cross entropy', ('cross_entropy', 'distill/teacher_cross_entropy')),
    ('KL(teacher || student) at T', ('distill/kl',)),
    ('logit z-loss', ('z_loss',)),
    ('MoE auxiliary losses', ('moe/load_balancing_loss', 'moe/router_z_loss')),
)


def metric_series(records: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
  """(steps <int64>[S], values <float64>[S]) of the records that carry a scalar `key`."""
  rows = [r for r in records if key in r and np.ndim(r[key]) == 0]
  return (np.asarray([r['step'] for r in rows], np.int64),
          np.asarray([r[key] for r in rows], np.float64))


def loss_figure(train: Sequence[dict], evals: Sequence[dict] = ()) -> Optional[plt.Figure]:
  """The panels of LOSS_PANELS that the records fill, each metric's train (and eval) curve
  labelled '<split> <key>' against the step; None when no record has a loss term."""
  panels = [(title, keys) for title, keys in LOSS_PANELS
            if any(len(metric_series(rs, k)[0]) for rs in (train, evals) for k in keys)]
  if not panels:
    return None
  fig, axes = plt.subplots(len(panels), 1, figsize=(7, 1.0 + 2.2 * len(panels)), sharex=True,
                           squeeze=False)
  for ax, (title, keys) in zip(axes[:, 0], panels):
    for split, records in (('train', train), ('eval', evals)):
      for key in keys:
        steps, values = metric_series(records, key)
        if len(steps):
          ax.plot(steps, values, label=f'{split} {key}', marker='.' if len(steps) < 50 else None)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  axes[-1, 0].set_xlabel('step')
  fig.tight_layout()
  return fig


def plot_losses(model_dir: str) -> Optional[str]:
  """Every logged loss term of the run (LOSS_PANELS) vs step, from metrics/train.jsonl and
  eval.jsonl -> MODEL_DIR/loss_curves.png."""
  train = metrics_lib.read_jsonl(os.path.join(model_dir, 'metrics', 'train.jsonl'))
  evals = metrics_lib.read_jsonl(os.path.join(model_dir, 'metrics', 'eval.jsonl'))
  fig = loss_figure(train, evals)
  if fig is None:
    return None
  path = os.path.join(model_dir, LOSS_PNG)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def expert_load_history(records: Sequence[dict]
                        ) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
  """(steps <int>[S], load <float32>[S, num_layers, E], load-balancing loss <float32>[S,
  num_layers] or None) from the train records that carry per-layer expert loads."""
  rows = [r for r in records if EXPERT_KEY in r]
  steps = np.asarray([r['step'] for r in rows], np.int64)
  load = np.asarray([np.atleast_2d(r[EXPERT_KEY]) for r in rows], np.float32)
  lb = None
  if rows and all(LB_KEY in r for r in rows):
    lb = np.asarray([np.atleast_1d(r[LB_KEY]) for r in rows], np.float32)
  return steps, load, lb


def expert_load_figure(steps: np.ndarray, load: np.ndarray, lb: Optional[np.ndarray],
                       layer_names: Sequence[str] = ()) -> plt.Figure:
  """One heatmap per MoE layer (expert x logged step, colour = share of routed selections on a
  common scale), then each layer's load-balancing loss over training when it was logged."""
  num_layers, num_experts = load.shape[1], load.shape[2]
  names = (list(layer_names) if len(layer_names) == num_layers
           else [f'MoE layer {i}' for i in range(num_layers)])
  rows = num_layers + (lb is not None)
  fig, axes = plt.subplots(rows, 1, figsize=(8, 1.0 + 1.6 * rows), squeeze=False)
  extent = (steps[0] - 0.5, steps[-1] + 0.5, num_experts - 0.5, -0.5)
  vmax = max(float(load.max()), 1e-6)
  for i in range(num_layers):
    ax = axes[i, 0]
    im = ax.imshow(load[:, i, :].T, aspect='auto', cmap='viridis', vmin=0.0, vmax=vmax,
                   extent=extent, interpolation='nearest')
    ax.set_ylabel('expert')
    ax.set_title(f'{names[i]}: share of routed selections per expert (uniform = '
                 f'{1 / num_experts:.3f})', fontsize=9)
    fig.colorbar(im, ax=ax)
  if lb is not None:
    ax = axes[-1, 0]
    for i in range(num_layers):
      ax.plot(steps, lb[:, i], label=names[i])
    ax.axhline(1.0, color='grey', linestyle=':', linewidth=1)
    ax.set_ylabel('load balancing')
    ax.set_title('load-balancing loss per layer (1 = balanced top-1 choices)', fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
  axes[-1, 0].set_xlabel('step')
  fig.tight_layout()
  return fig


def plot_expert_load(model_dir: str, layer_names: Sequence[str] = ()) -> Optional[str]:
  """Per-layer expert load over the whole run -> MODEL_DIR/expert_utilisation.png.

  layer_names: one label per MoE layer (encoder first, as the metrics are ordered), e.g.
  `T5Config.sparse_block_paths()`; layers are numbered when the names are missing or do not
  match.
  """
  train = metrics_lib.read_jsonl(os.path.join(model_dir, 'metrics', 'train.jsonl'))
  steps, load, lb = expert_load_history(train)
  if not len(steps):
    return None
  fig = expert_load_figure(steps, load, lb, layer_names)
  path = os.path.join(model_dir, EXPERT_PNG)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def plot_all(model_dir: str, layer_names: Sequence[str] = ()) -> list[str]:
  return [p for p in (plot_losses(model_dir), plot_expert_load(model_dir, layer_names)) if p]
