"""moe_flan params on disk: the directory the converter writes and the trainer reads.

Layout of CKPT_DIR (a trainer "step directory", so CKPT_DIR works as INITIAL_CHECKPOINT_PATH):
  CKPT_DIR/state/         orbax StandardCheckpointer PyTree {'params': <nested params>}
  CKPT_DIR/model.gin      the model's gin bindings (moe_flan.config_gin.config_to_gin)
  CKPT_DIR/hf_config.json the HF config.json the params came from (imports only)
  CKPT_DIR/spiece.model   the HF checkpoint's SentencePiece tokenizer file, when it has one
Reading accepts the trainer's own layouts too (MODEL_DIR, MODEL_DIR/checkpoints, a step dir),
via `moe_flan.trainer.checkpoints.load_params`.
"""
from __future__ import annotations

import os
import shutil
from typing import Any, Dict, Optional

import flax
import numpy as np
import orbax.checkpoint as ocp

from moe_flan import atomic_file
from moe_flan import config_gin
from moe_flan.config import T5Config
from moe_flan.trainer import checkpoints

STATE = 'state'
MODEL_GIN = config_gin.MODEL_GIN
HF_CONFIG = 'hf_config.json'
SPM = 'spiece.model'   # the model's SentencePiece file (HF T5 tokenizers keep it under this name)


def save(directory: str, params: Any, config: T5Config, hf_config: Optional[Dict] = None,
         header: str = '', spm_path: Optional[str] = None) -> None:
  """Writes the layout of the module docstring; `directory` must not hold a checkpoint yet.
  `spm_path`: a SentencePiece model to copy in as `spiece.model` (`moe_flan.load`'s vocabulary).
  """
  directory = os.path.abspath(directory)
  if os.path.exists(os.path.join(directory, STATE)):
    raise ValueError(f'--out {directory!r} already holds a checkpoint ({STATE}/); choose a new '
                     'directory')
  os.makedirs(directory, exist_ok=True)
  params = flax.core.unfreeze(flax.linen.meta.unbox(params))
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.join(directory, STATE), {'params': params})
  ckptr.wait_until_finished()
  atomic_file.write_text(os.path.join(directory, MODEL_GIN),
                         config_gin.config_to_gin(config, header))
  if hf_config is not None:
    atomic_file.write_json(os.path.join(directory, HF_CONFIG), hf_config, indent=2)
  if spm_path is not None:
    shutil.copyfile(spm_path, os.path.join(directory, SPM))


def load_params(path: str) -> Dict[str, Any]:
  """Nested params (numpy) from CKPT_DIR or any trainer checkpoint path."""
  flat = checkpoints.load_params(path, None)
  return flax.traverse_util.unflatten_dict(
      {tuple(k.split('/')): np.asarray(v) for k, v in flat.items()})


def model_gin(path: str) -> Optional[str]:
  """CKPT_DIR/model.gin when present (so `--to hf` needs no --gin_file for our own imports)."""
  candidate = os.path.join(path, MODEL_GIN)
  return candidate if os.path.isfile(candidate) else None
