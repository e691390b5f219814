"""Hugging Face checkpoint directories on disk: config.json + one or many safetensors files.

Reads what `transformers` `save_pretrained` writes (and what the hub hosts):
  DIR/config.json
  DIR/model.safetensors                          (one file), or
  DIR/model.safetensors.index.json + DIR/model-0000k-of-0000n.safetensors  (sharded).
Writes the same layout, so `AutoModel...from_pretrained(DIR)` loads it. Tensors are numpy arrays
keyed by HF's dotted names; no torch is needed here.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Mapping, Tuple

import numpy as np
from safetensors.numpy import load_file, save_file

CONFIG_NAME = 'config.json'
SINGLE_NAME = 'model.safetensors'
INDEX_NAME = 'model.safetensors.index.json'


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


def read_tensors(directory: str) -> Dict[str, np.ndarray]:
  """All tensors of a single-file or sharded safetensors checkpoint, name -> array."""
  index_path = os.path.join(directory, INDEX_NAME)
  single_path = os.path.join(directory, SINGLE_NAME)
  if os.path.isfile(index_path):
    with open(index_path) as f:
      weight_map = json.load(f)['weight_map']
    tensors: Dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
      shard_path = os.path.join(directory, shard)
      if not os.path.isfile(shard_path):
        raise ValueError(f'HF checkpoint {directory!r}: shard {shard!r} named in {INDEX_NAME} '
                         'is missing')
      tensors.update(load_file(shard_path))
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
      raise ValueError(f'HF checkpoint {directory!r}: tensors listed in {INDEX_NAME} but absent '
                       f'from the shards: {missing}')
    return tensors
  if os.path.isfile(single_path):
    return load_file(single_path)
  raise ValueError(f'HF checkpoint {directory!r}: neither {SINGLE_NAME} nor {INDEX_NAME} found '
                   '(only safetensors checkpoints are read; convert .bin files with transformers '
                   'first)')


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
  with open(os.path.join(directory, CONFIG_NAME), 'w') as f:
    json.dump(dict(config), f, indent=2, sort_keys=True)
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
  with open(os.path.join(directory, INDEX_NAME), 'w') as f:
    json.dump({'metadata': {'total_size': total}, 'weight_map': weight_map}, f, indent=2,
              sort_keys=True)
