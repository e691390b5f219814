"""End-of-run PNG plots: loss curves and an expert-utilisation heatmap (layer x expert)."""
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


def plot_expert_load(model_dir: str, layer_names: Sequence[str] = (),
                     last_n: int = 10) -> Optional[str]:
  """Mean per-layer expert load over the last `last_n` logged steps -> heatmap PNG.

  layer_names: one label per MoE layer (encoder first, as the metrics are ordered), e.g.
  `T5Config.sparse_block_paths()`; rows are numbered when they are missing or do not match.
  """
  train = metrics_lib.read_jsonl(os.path.join(model_dir, 'metrics', 'train.jsonl'))
  loads = [r[EXPERT_KEY] for r in train if EXPERT_KEY in r]
  if not loads:
    return None
  load = np.mean(np.asarray(loads[-last_n:], np.float32), axis=0)  # [num_layers, E]
  load = np.atleast_2d(load)
  fig, ax = plt.subplots(figsize=(max(4, 0.4 * load.shape[1] + 2), max(3, 0.4 * load.shape[0] + 2)))
  im = ax.imshow(load, aspect='auto', cmap='viridis')
  ax.set_xticks(range(load.shape[1]))
  ax.set_yticks(range(load.shape[0]))
  if len(layer_names) == load.shape[0]:
    ax.set_yticklabels(layer_names)
  ax.set_xlabel('expert')
  ax.set_ylabel('MoE layer (encoder, then decoder)')
  ax.set_title('fraction of routed tokens per expert')
  fig.colorbar(im, ax=ax)
  path = os.path.join(model_dir, EXPERT_PNG)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def plot_all(model_dir: str, layer_names: Sequence[str] = ()) -> list[str]:
  return [p for p in (plot_losses(model_dir), plot_expert_load(model_dir, layer_names)) if p]
