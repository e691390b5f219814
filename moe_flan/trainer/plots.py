"""End-of-run PNG plots: loss curves, and every MoE layer's expert utilisation over training."""
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


def plot_losses(model_dir: str) -> Optional[str]:
  """Train (and eval, if any) loss vs step -> MODEL_DIR/loss_curves.png."""
  train = metrics_lib.read_jsonl(os.path.join(model_dir, 'metrics', 'train.jsonl'))
  evals = metrics_lib.read_jsonl(os.path.join(model_dir, 'metrics', 'eval.jsonl'))
  if not train and not evals:
    return None
  fig, ax = plt.subplots(figsize=(7, 4))
  for records, label in ((train, 'train'), (evals, 'eval')):
    if records:
      ax.plot([r['step'] for r in records], [r['loss'] for r in records], label=label,
              marker='.' if len(records) < 50 else None)
  ax.set_xlabel('step')
  ax.set_ylabel('loss')
  ax.set_title('loss')
  ax.grid(alpha=0.3)
  ax.legend()
  path = os.path.join(model_dir, LOSS_PNG)
  fig.tight_layout()
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
