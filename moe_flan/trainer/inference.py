"""Inference: decode prompts with a trained checkpoint and write JSON lines {input, output}."""
from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

import gin
import jax
import numpy as np

from moe_flan import atomic_file
from moe_flan import config as config_lib
from moe_flan import decoding
from moe_flan.partitioning import mesh as mesh_lib
from moe_flan.partitioning import partitioner as part_lib
from moe_flan.trainer import gin_checks
from moe_flan.trainer import model_setup


@gin.configurable
@dataclasses.dataclass(frozen=True)
class InferConfig:
  """Where prompts come from (`prompts` and/or `input_file`, one prompt per line) and how to
  decode them: greedy (temperature 0), sampling (temperature > 0) or beam search (num_beams > 1)."""
  prompts: Sequence[str] = ()
  input_file: Optional[str] = None
  output_file: str = 'inference.jsonl'        # relative to MODEL_DIR unless absolute
  input_length: int = 512
  max_decode_length: int = 64
  temperature: float = 0.0
  num_beams: int = 1
  batch_size: int = 8
  seed: int = 0


def read_prompts(cfg: InferConfig) -> list[str]:
  prompts = list(cfg.prompts)
  if cfg.input_file:
    if not os.path.exists(cfg.input_file):
      raise ValueError(f'InferConfig.input_file={cfg.input_file!r} does not exist')
    with open(cfg.input_file) as f:
      prompts += [line.rstrip('\n') for line in f if line.strip()]
  if not prompts:
    raise ValueError('no prompts: set InferConfig.prompts or InferConfig.input_file')
  return prompts


def _decode(model, params, tokens: np.ndarray, cfg: InferConfig, rng) -> np.ndarray:
  if cfg.num_beams > 1:
    out = decoding.beam_search(model, params, tokens, cfg.max_decode_length,
                               beam_size=cfg.num_beams)
    tokens_bwl = np.asarray(out[0] if isinstance(out, tuple) else out)  # [B, W, L], best first
    return tokens_bwl[:, 0]
  return np.asarray(decoding.temperature_sample(model, params, tokens, cfg.max_decode_length,
                                                rng, temperature=cfg.temperature))


@gin.configurable
def infer(model_dir: str = gin.REQUIRED, model: config_lib.T5Config = gin.REQUIRED,
          checkpoint_path: Optional[str] = None, settings: InferConfig = InferConfig()
          ) -> list[dict[str, str]]:
  """Decodes every prompt with the checkpoint (default: latest in MODEL_DIR)."""
  # Imported here, not at the top: `tasks` imports TensorFlow (seconds).
  from tasks import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  prompts = read_prompts(settings)
  path = checkpoint_path or model_dir
  # Decoding runs on one device (params replicated there); training layouts do not matter.
  one_device = mesh_lib.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  side = model_setup.build_model_setup(model, part_lib.Partitioner(one_device))
  params, _ = side.restore_params(path)
  net = side.model
  vocab = vocab_lib.default_vocabulary()
  gin_checks.check_built()
  rows = []
  rng = jax.random.PRNGKey(settings.seed)
  for start in range(0, len(prompts), settings.batch_size):
    chunk = prompts[start:start + settings.batch_size]
    tokens = np.zeros((len(chunk), settings.input_length), np.int32)
    for i, p in enumerate(chunk):
      ids = (list(vocab.encode(p)) + [1])[:settings.input_length]
      tokens[i, :len(ids)] = ids
    out = _decode(net, params, tokens, settings, jax.random.fold_in(rng, start))
    for p, row in zip(chunk, out):
      rows.append({'input': p, 'output': vocab.decode([int(t) for t in row if t > 1])})
  out_path = settings.output_file if os.path.isabs(settings.output_file) else os.path.join(
      model_dir, settings.output_file)
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(out_path) or '.', exist_ok=True)
    atomic_file.write_jsonl(out_path, rows)
  return rows
