"""Import / export of Hugging Face checkpoints: the public entry points of moe_flan.convert.

    config, params = import_hf(src)          # src: a HF directory, or a transformers model
    export_hf(config, params, out_dir)       # a directory `from_pretrained` loads

`params` is the content of the 'params' collection as nested dicts of float32 numpy arrays
(apply with `model.apply({'params': params}, ...)`; bf16/f16 checkpoints are widened, exactly).
The architecture is read from config.json: T5ForConditionalGeneration (T5 v1.1 / FLAN-T5,
dense) or SwitchTransformersForConditionalGeneration (the Switch-classic MoE config with router
'hf_switch'). Conversions are transposes/reshapes only: import followed by export reproduces
every float32 tensor bit for bit.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional, Tuple

import flax
import numpy as np

from moe_flan.config import T5Config
from moe_flan.convert import hf_switch, hf_t5, safetensors_io, tensor_map
from moe_flan.model import scan

_FAMILIES = {'t5': hf_t5, 'switch': hf_switch}


def family(hf_config: Mapping) -> str:
  """'t5' or 'switch' from a config.json dict; ValueError for anything else."""
  model_type = hf_config.get('model_type')
  if model_type in hf_t5.T5_MODEL_TYPES:
    return 't5'
  if model_type in hf_switch.SWITCH_MODEL_TYPES:
    return 'switch'
  archs = hf_config.get('architectures')
  raise ValueError(f'HF config: unsupported architecture (model_type={model_type!r}, '
                   f'architectures={archs!r}); supported: T5ForConditionalGeneration (t5, mt5), '
                   'SwitchTransformersForConditionalGeneration (switch_transformers)')


def config_from_hf(hf_config: Mapping, group_size: Optional[int] = None) -> T5Config:
  """Our `T5Config` for a HF config.json dict (group_size: Switch only, see hf_switch)."""
  if family(hf_config) == 'switch':
    return hf_switch.config_from_hf(hf_config, group_size=group_size)
  return hf_t5.config_from_hf(hf_config)


def family_module(config: T5Config):
  """The converter module for our config: hf_t5 (dense) or hf_switch (sparse)."""
  return hf_t5 if config.moe is None else hf_switch


def params_from_hf(config: T5Config, tensors: Mapping[str, np.ndarray]) -> Dict[str, Any]:
  """Nested params of `config` from HF tensors (ValueError listing every problem)."""
  tensors = dict(tensors)
  if 'shared.weight' not in tensors:  # some exports keep only the per-stack copies
    for alias in ('encoder.embed_tokens.weight', 'decoder.embed_tokens.weight'):
      if alias in tensors:
        tensors['shared.weight'] = tensors[alias]
        break
  module = family_module(config)
  flat = tensor_map.hf_to_flat(module.entries(config), tensors, module.ignorable(config))
  # Our params are float32 (CONTRACT.md); widening bf16/f16 checkpoints is exact.
  flat = {k: v.astype(np.float32) if v.dtype != np.float32 else v for k, v in flat.items()}
  return flax.traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in flat.items()})


def _flat_numpy(params: Any) -> Dict[str, np.ndarray]:
  params = flax.core.unfreeze(flax.linen.meta.unbox(params))
  if set(params) == {'params'}:
    params = params['params']
  flat = flax.traverse_util.flatten_dict(params, sep='/')
  return {k: np.asarray(v) for k, v in flat.items()}


def params_to_hf(config: T5Config, params: Any) -> Tuple[Dict, Dict[str, np.ndarray]]:
  """(config.json dict, HF tensors) for our `config` and params (nested, boxed or not; scanned
  layers, `T5Config.scan_layers`, are unrolled first)."""
  if config.scan_layers:
    params = scan.unscan_params(flax.linen.meta.unbox(params), config)
    config = dataclasses.replace(config, scan_layers=False, remat_policy='none')
  module = family_module(config)
  hf_config = module.config_to_hf(config)
  tensors = tensor_map.flat_to_hf(module.entries(config), _flat_numpy(params))
  for name in module.embedding_copies(config):
    tensors[name] = tensors['shared.weight'].copy()
  return hf_config, tensors


def read_transformers_model(model) -> Tuple[Dict, Dict[str, np.ndarray]]:
  """(config dict, tensors) of an in-memory transformers model (needs torch)."""
  hf_config = model.config.to_dict()
  tensors = {k: safetensors_io.torch_to_numpy(v) for k, v in model.state_dict().items()}
  return hf_config, tensors


def import_hf(src: Any, group_size: Optional[int] = None) -> Tuple[T5Config, Dict[str, Any]]:
  """(T5Config, nested params) from a HF checkpoint directory or a transformers model object."""
  if isinstance(src, str):
    hf_config, tensors = safetensors_io.read_checkpoint(src)
  else:
    hf_config, tensors = read_transformers_model(src)
  config = config_from_hf(hf_config, group_size=group_size)
  return config, params_from_hf(config, tensors)


def export_hf(config: T5Config, params: Any, out_dir: str,
              max_shard_bytes: int = 5 * 2**30) -> Dict:
  """Writes config.json + safetensors to `out_dir`; returns the config.json dict."""
  hf_config, tensors = params_to_hf(config, params)
  safetensors_io.write_checkpoint(out_dir, hf_config, tensors, max_shard_bytes)
  return hf_config
