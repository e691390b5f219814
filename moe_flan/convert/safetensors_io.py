"""Hugging Face checkpoint directories on disk: config.json + one or many safetensors files.

Reads what `transformers` `save_pretrained` writes (and what the hub hosts):
  DIR/config.json
  DIR/model.safetensors                          (one file), or
  DIR/model.safetensors.index.json + DIR/model-0000k-of-0000n.safetensors  (sharded).
Also reads PyTorch pickles (pytorch_model.bin, or sharded with pytorch_model.bin.index.json)
when torch is installed. Writes the safetensors layout, so `AutoModel...from_pretrained(DIR)`
loads it. Tensors are numpy arrays keyed by HF's dotted names.
"""
from __future__ import annotations

import json
import os
import pickle
import struct
from typing import Dict, Mapping, Tuple

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from moe_flan import atomic_file

CONFIG_NAME = 'config.json'
SINGLE_NAME = 'model.safetensors'
INDEX_NAME = 'model.safetensors.index.json'
# Older hub checkpoints (e.g. google/switch-base-*) ship only PyTorch pickles; read with torch.
TORCH_SINGLE_NAME = 'pytorch_model.bin'
TORCH_INDEX_NAME = 'pytorch_model.bin.index.json'


def read_config(directory: str) -> dict:
  """The parsed DIR/config.json; ValueError when absent or not JSON."""
  path = os.path.join(directory, CONFIG_NAME)
  if not os.path.isfile(path):
    raise ValueError(f'HF checkpoint {directory!r}: no {CONFIG_NAME}')
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f'HF checkpoint {directory!r}: {CONFIG_NAME} is not JSON: {e}') from e


def _safetensors_size_problem(path: str) -> str:
  """Why a safetensors file is unreadable, in words ('' when its sizes look right).

  A safetensors file is an 8-byte little-endian header length N, N bytes of JSON header (each
  tensor's byte range in `data_offsets`), then the tensor bytes.
  """
  size = os.path.getsize(path)
  with open(path, 'rb') as f:
    if size < 8:
      return f'truncated: {size} bytes, shorter than the 8-byte header length'
    (header_len,) = struct.unpack('<Q', f.read(8))
    if 8 + header_len > size:
      return (f'truncated or not safetensors: the header says {header_len} header bytes, the '
              f'file has {size} bytes in all')
    try:
      header = json.loads(f.read(header_len))
      end = max((int(v['data_offsets'][1]) for k, v in header.items() if k != '__metadata__'),
                default=0)
    except (ValueError, KeyError, TypeError, IndexError):
      return 'not safetensors: the header is not the JSON safetensors writes'
  if 8 + header_len + end > size:
    return f'truncated: {size} bytes, the header describes {8 + header_len + end}'
  return ''


def load_safetensors(path: str) -> Dict[str, np.ndarray]:
  """All tensors of one safetensors file; ValueError naming the file when it is truncated or
  corrupt (safetensors' own error is a bare 'Error while deserializing header')."""
  try:
    return load_file(path)
  except SafetensorError as e:
    why = _safetensors_size_problem(path) or str(e)
    raise ValueError(f'{path}: unreadable safetensors file ({why}); the download or copy is '
                     'incomplete or damaged: fetch the file again') from e


def torch_to_numpy(tensor) -> np.ndarray:
  """A torch tensor as numpy (bfloat16 as ml_dtypes.bfloat16, which numpy lacks)."""
  import torch  # pylint: disable=g-import-not-at-top  (optional dependency)
  tensor = tensor.detach().cpu()
  if tensor.dtype == torch.bfloat16:
    import ml_dtypes  # pylint: disable=g-import-not-at-top
    return tensor.float().numpy().astype(ml_dtypes.bfloat16)
  return tensor.numpy()


def _torch_load(path: str) -> Dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=g-import-not-at-top  (optional: .bin checkpoints only)
  except ImportError as e:
    raise ValueError(f'{path} is a PyTorch pickle; reading it needs torch (pip install '
                     "'moe_flan[test]'), or convert it to safetensors first") from e
  try:
    state = torch.load(path, map_location='cpu', weights_only=True)
  except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:
    why = str(e).split('. ')[0].strip() or type(e).__name__   # torch's messages run on
    raise ValueError(f'{path}: unreadable PyTorch checkpoint ({why}); the download or copy is '
                     'incomplete or damaged: fetch the file again') from e
  return {k: torch_to_numpy(v) for k, v in state.items()}


def _read_sharded(directory: str, index_name: str, load) -> Dict[str, np.ndarray]:
  index_path = os.path.join(directory, index_name)
  with open(index_path) as f:
    try:
      weight_map = json.load(f)['weight_map']
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise ValueError(f'{index_path}: not a sharded-checkpoint index (JSON with a "weight_map": '
                       f'{type(e).__name__}: {e})') from e
  tensors: Dict[str, np.ndarray] = {}
  for shard in sorted(set(weight_map.values())):
    shard_path = os.path.join(directory, shard)
    if not os.path.isfile(shard_path):
      raise ValueError(f'HF checkpoint {directory!r}: shard {shard!r} named in {index_name} '
                       'is missing')
    tensors.update(load(shard_path))
  missing = sorted(set(weight_map) - set(tensors))
  if missing:
    raise ValueError(f'HF checkpoint {directory!r}: tensors listed in {index_name} but absent '
                     f'from the shards: {missing}')
  return tensors


def read_tensors(directory: str) -> Dict[str, np.ndarray]:
  """All tensors of a single-file or sharded checkpoint (safetensors preferred), name -> array."""
  for index_name, single_name, load in ((INDEX_NAME, SINGLE_NAME, load_safetensors),
                                        (TORCH_INDEX_NAME, TORCH_SINGLE_NAME, _torch_load)):
    if os.path.isfile(os.path.join(directory, index_name)):
      return _read_sharded(directory, index_name, load)
    if os.path.isfile(os.path.join(directory, single_name)):
      return load(os.path.join(directory, single_name))
  raise ValueError(f'HF checkpoint {directory!r}: none of {SINGLE_NAME}, {INDEX_NAME}, '
                   f'{TORCH_SINGLE_NAME}, {TORCH_INDEX_NAME} found')


def read_checkpoint(directory: str) -> Tuple[dict, Dict[str, np.ndarray]]:
  """(config.json dict, tensors) of a HF checkpoint directory."""
  return read_config(directory), read_tensors(directory)


def _shards(tensors: Mapping[str, np.ndarray], max_shard_bytes: int):
  """Splits tensors (in name order) into lists whose byte sizes stay under max_shard_bytes."""
  shards, current, size = [], {}, 0
  for name in sorted(tensors):
    nbytes = tensors[name].nbytes
    if current and size + nbytes > max_shard_bytes:
      shards.append(current)
      current, size = {}, 0
    current[name] = tensors[name]
    size += nbytes
  shards.append(current)
  return shards


def write_checkpoint(directory: str, config: Mapping, tensors: Mapping[str, np.ndarray],
                     max_shard_bytes: int = 5 * 2**30) -> None:
  """Writes config.json and the tensors, sharded HF-style when they exceed max_shard_bytes."""
  os.makedirs(directory, exist_ok=True)
  atomic_file.write_json(os.path.join(directory, CONFIG_NAME), dict(config), indent=2)
  tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
  shards = _shards(tensors, max_shard_bytes)
  metadata = {'format': 'pt'}  # transformers refuses safetensors files without this tag
  if len(shards) == 1:
    save_file(shards[0], os.path.join(directory, SINGLE_NAME), metadata=metadata)
    return
  weight_map = {}
  for i, shard in enumerate(shards):
    name = f'model-{i + 1:05d}-of-{len(shards):05d}.safetensors'
    save_file(shard, os.path.join(directory, name), metadata=metadata)
    weight_map.update({k: name for k in shard})
  total = int(sum(v.nbytes for v in tensors.values()))
  atomic_file.write_json(os.path.join(directory, INDEX_NAME),
                         {'metadata': {'total_size': total}, 'weight_map': weight_map}, indent=2)
