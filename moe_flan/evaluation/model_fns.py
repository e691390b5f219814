"""The predict and score functions `seqio.Evaluator` calls (its `PredictFnCallable` and
`ScoreFnCallable` contract: an enumerated dataset in, `[(index, output)]` out).

Rows are cut into fixed-shape global batches of `batch_size` (a short last batch is padded
with all-zero rows), so each function compiles once per task shape. On several hosts every
process walks the same rows (the Evaluator caches each whole split on every host) and feeds only
its data shard of each batch, a contiguous slice (`Partitioner.data_shard_info`,
`shard_batch`): each host's devices score / decode that share, in one SPMD program over the
global mesh, and the outputs come back replicated (gathered), so every process holds all results
and process 0 can write them. The batches do not depend on the number of hosts, so N hosts give
the results of one. `rows_fed` counts the example rows this process fed.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import numpy as np
import tensorflow_datasets as tfds

from moe_flan import decoding
from moe_flan.evaluation import scoring


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
  """Generation: greedy (num_beams 1) or beam search with length penalty `alpha`."""
  max_decode_length: int = 128
  num_beams: int = 1
  alpha: float = 0.6
  eos_id: int = 1


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _rows(dataset) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """(<int64>[N] example indices, feature -> [N, ...]) of an enumerated model dataset."""
  indices, feats = [], []
  for index, features in tfds.as_numpy(dataset):
    indices.append(int(index))
    feats.append(features)
  if not feats:
    return np.zeros((0,), np.int64), {}
  return np.asarray(indices), {k: np.stack([f[k] for f in feats]) for k in feats[0]}


def _generate(model: nn.Module, decode: DecodeSettings, params: Any, tokens: jax.Array
              ) -> jax.Array:
  """<int32>[B, max_decode_length] greedy or beam-search (best beam) tokens for <int32>[B, L]."""
  d = decode
  if d.num_beams > 1:
    return decoding.beam_search(model, params, tokens, d.max_decode_length,
                                beam_size=d.num_beams, alpha=d.alpha, eos_id=d.eos_id)[0][:, 0]
  return decoding.temperature_sample(model, params, tokens, d.max_decode_length, None,
                                     temperature=0.0, eos_id=d.eos_id)


@functools.lru_cache(maxsize=8)
def _jitted_fns(model: nn.Module, decode: DecodeSettings, replicated: Any, rules: str
                ) -> tuple[Any, Any]:
  """The jitted score and generate functions of `model`, shared by every ModelFns of equal
  model, decoding, mesh and logical-axis rules (`rules`: their repr; they are read while
  tracing): an experiment evaluates many runs of one model, which then trace, lower and
  compile each function once per shape instead of once per run."""
  del rules   # part of the key only
  return (jax.jit(functools.partial(scoring.score_rows, model), out_shardings=replicated),
          jax.jit(functools.partial(_generate, model, decode), out_shardings=replicated))


class ModelFns:
  """predict_fn / score_fn of one model and parameter set on a partitioner's mesh."""

  def __init__(self, model: nn.Module, params: Any, partitioner, batch_size: int,
               decode: DecodeSettings = DecodeSettings()):
    partitioner.check_batch_size(batch_size)
    self.params, self.partitioner, self.batch_size = params, partitioner, batch_size
    self.parts = partitioner.num_batch_partitions
    self.shard_id, self.num_shards = partitioner.data_shard_info()
    self.rows_fed = self.rows_total = 0   # example rows (no padding): this process's, all
    key = (model, decode, partitioner.replicated, repr(partitioner.rules))
    try:
      self._score, self._generate = _jitted_fns(*key)
    except TypeError:      # an unhashable model: jitted for this instance only
      self._score, self._generate = _jitted_fns.__wrapped__(*key)

  def _shard(self, arrays: Mapping[str, np.ndarray], rows: int) -> dict[str, jax.Array]:
    """Global arrays from this process's slice of each global numpy array (leading dims
    divisible by the shards); `rows`: the batch's example rows (the rest is padding)."""
    s, shards = self.shard_id, self.num_shards
    local = {}
    for k, v in arrays.items():
      n = v.shape[0] // shards
      local[k] = v[s * n:(s + 1) * n]
    n = self.batch_size // shards
    self.rows_fed += max(0, min(rows, (s + 1) * n) - s * n)
    self.rows_total += rows
    return {k: self.partitioner.shard_batch({k: v}, arrays[k].shape[0])[k]
            for k, v in local.items()}

  # ---- score -----------------------------------------------------------------------------------
  def score_fn(self, dataset, model_feature_shapes: Optional[Mapping] = None
               ) -> list[tuple[int, float]]:
    """log p(decoder_target_tokens | encoder_input_tokens) per row; consecutive rows with the
    same prompt (a question's options) share one encoding."""
    del model_feature_shapes
    indices, feats = _rows(dataset)
    if not len(indices):
      return []
    enc, tgt = feats['encoder_input_tokens'], feats['decoder_target_tokens']
    batches = scoring.pack_groups(scoring.group_rows(enc), self.batch_size)
    num_prompts = _round_up(max(len(b) for b in batches), self.parts)
    scores = np.zeros((len(indices),), np.float64)
    for batch in batches:
      prompts = np.zeros((num_prompts, enc.shape[1]), np.int32)
      prompt_index = np.zeros((self.batch_size,), np.int32)
      targets = np.zeros((self.batch_size, tgt.shape[1]), np.int32)
      rows, r = [], 0
      for p, (start, count) in enumerate(batch):
        prompts[p] = enc[start]
        prompt_index[r:r + count] = p
        targets[r:r + count] = tgt[start:start + count]
        rows.extend(range(start, start + count))
        r += count
      arrays = self._shard({'prompts': prompts, 'prompt_index': prompt_index,
                            'targets': targets}, len(rows))
      with self.partitioner.activate():
        ll, _ = self._score(self.params, arrays['prompts'], arrays['prompt_index'],
                            arrays['targets'])
      scores[rows] = np.asarray(jax.device_get(ll))[:len(rows)]
    return [(int(i), float(s)) for i, s in zip(indices, scores)]

  # ---- predict ---------------------------------------------------------------------------------
  def predict_fn(self, dataset, model_feature_shapes: Optional[Mapping] = None
                 ) -> list[tuple[int, list[int]]]:
    """Decoded token ids <int32>[max_decode_length] per row: greedy or beam search."""
    del model_feature_shapes
    indices, feats = _rows(dataset)
    out = []
    for start in range(0, len(indices), self.batch_size):
      chunk = feats['encoder_input_tokens'][start:start + self.batch_size]
      tokens = np.zeros((self.batch_size, chunk.shape[1]), np.int32)
      tokens[:len(chunk)] = chunk
      arrays = self._shard({'tokens': tokens}, len(chunk))
      with self.partitioner.activate():
        decoded = np.asarray(jax.device_get(self._generate(self.params, arrays['tokens'])))
      # Whole rows (EOS, then 0s): seqio stacks the outputs into one array and its
      # vocabulary decodes up to the first EOS.
      out += [(int(i), row.tolist()) for i, row in zip(indices[start:start + len(chunk)], decoded)]
    return out
