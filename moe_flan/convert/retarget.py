"""Retargeting imported params to the model a gin file asks for (same model, or sparse upcycling).

An imported HF checkpoint determines its own `T5Config`. When the user also names a model with
gin, the converter produces params for *that* model:
  * same architecture: the backbone and (for Switch) the expert layout must agree; routing
    settings (router type, capacity, losses, dispatch, group size) may differ freely, since they
    have no params;
  * dense checkpoint -> sparse model: sparse upcycling (Komatsuzaki et al. 2022) through
    `moe_flan.model.upcycling`: every expert copies its block's dense MLP, routers keep a
    fresh initialisation (seeded), everything else is copied.
Anything else is a ValueError listing each disagreeing setting.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List

import flax
import numpy as np

from moe_flan.config import T5Config
from moe_flan.model import abstract_params, scan, upcycling

BACKBONE_FIELDS = ('vocab_size', 'emb_dim', 'num_heads', 'head_dim', 'num_encoder_layers',
                   'num_decoder_layers', 'mlp_dim', 'mlp_activations', 'logits_via_embedding',
                   'relative_attention_num_buckets', 'relative_attention_max_distance',
                   'layer_norm_epsilon')


def _norm(value):
  return tuple(value) if isinstance(value, list) else value


def config_differences(imported: T5Config, target: T5Config) -> List[str]:
  """Settings with params (or changing what params mean) on which the two configs disagree."""
  diffs = [f'T5Config.{f}: checkpoint {_norm(getattr(imported, f))!r}, gin '
           f'{_norm(getattr(target, f))!r}' for f in BACKBONE_FIELDS
           if _norm(getattr(imported, f)) != _norm(getattr(target, f))]
  if imported.moe is not None and target.moe is None:
    diffs.append('T5Config.moe: the checkpoint is sparse, the gin model dense (no downcycling)')
  if imported.moe is None and target.moe is not None:   # upcycling: experts copy the dense MLP
    if _norm(target.moe.expert_activations) != _norm(imported.mlp_activations):
      diffs.append(f'MoeConfig.expert_activations={_norm(target.moe.expert_activations)!r}: '
                   f'upcycled experts copy a dense MLP with {_norm(imported.mlp_activations)!r}')
    if target.moe.expert_mlp_dim != imported.mlp_dim:
      diffs.append(f'MoeConfig.expert_mlp_dim={target.moe.expert_mlp_dim}: upcycled experts '
                   f'copy a dense MLP of width {imported.mlp_dim}')
  if imported.moe is not None and target.moe is not None:
    for f in ('num_experts', 'expert_mlp_dim', 'expert_activations', 'extra_dense_mlp'):
      a, b = _norm(getattr(imported.moe, f)), _norm(getattr(target.moe, f))
      if a != b:
        diffs.append(f'MoeConfig.{f}: checkpoint {a!r}, gin {b!r}')
    for stack in ('encoder', 'decoder'):
      a = getattr(imported, f'{stack}_sparse_blocks')()
      b = getattr(target, f'{stack}_sparse_blocks')()
      if a != b:
        diffs.append(f'{stack} sparse blocks: checkpoint {a}, gin {b}')
  return diffs


def retarget_params(imported: T5Config, params: Dict[str, Any], target: T5Config,
                    seed: int = 0) -> Dict[str, Any]:
  """`params` of the `imported` config, made into params of `target` (module docstring)."""
  diffs = config_differences(imported, target)
  if diffs:
    raise ValueError('the checkpoint does not fit the gin model:\n  ' + '\n  '.join(diffs))
  # An imported checkpoint's layers are unrolled: upcycle in that layout, then scan.
  unrolled = dataclasses.replace(target, scan_layers=False, remat_policy='none')
  if imported.moe is None and target.moe is not None:
    params = upcycling.upcycle(params, unrolled, seed)
  if target.scan_layers:
    params = scan.scan_params(params, target)
  expected = flax.traverse_util.flatten_dict(
      flax.linen.meta.unbox(abstract_params(target)), sep='/')
  got = flax.traverse_util.flatten_dict(params, sep='/')
  bad = [f'{k}: expected {tuple(v.shape)}, got {np.shape(got[k]) if k in got else "missing"}'
         for k, v in expected.items() if k not in got or tuple(np.shape(got[k])) != v.shape]
  bad += [f'{k}: not in the gin model' for k in got if k not in expected]
  if bad:
    raise ValueError('params do not fit the gin model:\n  ' + '\n  '.join(sorted(bad)))
  return params

