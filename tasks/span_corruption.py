"""T5 span-corruption pretraining task 'embedded_span_corruption' over the stdlib-docstring corpus.

Objective (Raffel et al. 2020): in a chunk of `raw_length` tokens, 15% of tokens (noise density)
in spans of mean length 3 are each replaced in the inputs by one sentinel `<extra_id_i>`; the
targets list every sentinel followed by the tokens it hid:
  tokens   a b c d e f g h        (noise: c d, g)
  inputs   a b <X0> e f <X1> h
  targets  <X0> c d <X1> g
Chunks are cut from the concatenated tokenized corpus; masks are drawn with numpy from a
per-(seed, split, chunk) generator, so the data are deterministic. With the default raw_length
128: inputs 116 and targets 26 tokens including EOS (fits inputs 128 / targets 32).
"""
from __future__ import annotations

import functools
from typing import Dict, List, Sequence, Tuple

import gin
import numpy as np
import seqio
import tensorflow as tf

from tasks import corpus, registry, vocab

TASK_NAME = 'embedded_span_corruption'
SPLITS = ('train', 'validation', 'test')


@gin.configurable
def span_corruption_settings(raw_length: int = 128, noise_density: float = 0.15,
                             mean_noise_span_length: float = 3.0, seed: int = 0
                             ) -> Tuple[int, float, float, int]:
  if raw_length < 2 or not 0 < noise_density < 1 or mean_noise_span_length < 1:
    raise ValueError(f'span_corruption_settings: raw_length={raw_length} (>= 2), noise_density='
                     f'{noise_density} (in (0, 1)), mean_noise_span_length='
                     f'{mean_noise_span_length} (>= 1)')
  return int(raw_length), float(noise_density), float(mean_noise_span_length), int(seed)


def _segment(total: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
  """<int>[num_segments] positive lengths summing to `total`, uniformly random."""
  cuts = np.sort(rng.choice(np.arange(1, total), num_segments - 1, replace=False))
  return np.diff(np.concatenate([[0], cuts, [total]]))


def noise_mask(length: int, noise_density: float, mean_span: float,
               rng: np.random.Generator) -> np.ndarray:
  """<bool>[length]: alternating non-noise/noise spans, starting with non-noise (T5 layout)."""
  num_noise = int(np.clip(round(length * noise_density), 1, length - 1))
  num_spans = max(1, int(round(num_noise / mean_span)))
  num_spans = min(num_spans, num_noise, length - num_noise)
  noise = _segment(num_noise, num_spans, rng)
  keep = _segment(length - num_noise, num_spans, rng)
  spans = np.stack([keep, noise], axis=1).reshape(-1)
  return np.repeat(np.arange(2 * num_spans) % 2 == 1, spans)


def corrupt(tokens: Sequence[int], mask: np.ndarray, sentinel) -> Tuple[List[int], List[int]]:
  """(inputs, targets) ids for one chunk; `sentinel(i)` is the id of <extra_id_i>."""
  inputs, targets, span = [], [], -1
  for i, (tok, noisy) in enumerate(zip(tokens, mask)):
    if noisy:
      if i == 0 or not mask[i - 1]:
        span += 1
        inputs.append(sentinel(span))
        targets.append(sentinel(span))
      targets.append(int(tok))
    else:
      inputs.append(int(tok))
  return inputs, targets


def reconstruct(inputs: Sequence[int], targets: Sequence[int], sentinel_ids) -> List[int]:
  """Inverse of `corrupt`: each sentinel in `inputs` replaced by the tokens after it in
  `targets`. `sentinel_ids` is the set of all sentinel ids."""
  spans: Dict[int, List[int]] = {}
  current = None
  for tok in targets:
    if tok in sentinel_ids:
      current = spans.setdefault(tok, [])
    elif current is not None:
      current.append(tok)
  out = []
  for tok in inputs:
    out.extend(spans.get(tok, []) if tok in sentinel_ids else [tok])
  return out


_CACHE: Dict[tuple, Tuple[List[List[int]], List[List[int]]]] = {}


def examples(split: str, voc: seqio.Vocabulary, raw_length: int, density: float, mean_span: float,
             seed: int) -> Tuple[List[List[int]], List[List[int]]]:
  """(inputs, targets) id lists (no EOS) for every chunk of the split (cached in memory)."""
  key = (split, id(voc), raw_length, density, mean_span, seed)  # vocabularies are unhashable
  if key not in _CACHE:
    _CACHE[key] = _examples(split, voc, raw_length, density, mean_span, seed)
  return _CACHE[key]


def _examples(split, voc, raw_length, density, mean_span, seed):
  docs = corpus.split_documents(split)
  stream = np.fromiter((t for ids in vocab.encode_batch(voc, docs) for t in ids), np.int32)
  sentinel = functools.partial(vocab.sentinel_id, voc)
  inputs, targets = [], []
  for c in range(len(stream) // raw_length):
    chunk = stream[c * raw_length:(c + 1) * raw_length]
    rng = np.random.default_rng([seed, SPLITS.index(split), c])
    i, t = corrupt(chunk, noise_mask(raw_length, density, mean_span, rng), sentinel)
    inputs.append(i)
    targets.append(t)
  return inputs, targets


def _dataset_fn(split: str, shuffle_files: bool, seed=None) -> tf.data.Dataset:
  voc = vocab.default_vocabulary()
  raw_length, density, mean_span, data_seed = span_corruption_settings()
  inputs, targets = examples(split, voc, raw_length, density, mean_span, data_seed)
  ds = tf.data.Dataset.from_tensor_slices({'inputs': vocab.ragged_ids(inputs, voc.eos_id),
                                           'targets': vocab.ragged_ids(targets, voc.eos_id)})
  if shuffle_files:
    ds = ds.shuffle(len(inputs), seed=seed, reshuffle_each_iteration=True)
  return ds


class _CorpusSource(seqio.FunctionDataSource):
  """Counts examples lazily (chunking needs the tokenized corpus, so not at import)."""

  def num_input_examples(self, split: str) -> int:
    voc = vocab.default_vocabulary()
    return len(examples(split, voc, *span_corruption_settings())[0])


def register() -> seqio.Task:
  source = _CorpusSource(_dataset_fn, splits=SPLITS)
  return registry.add_task(TASK_NAME, fingerprint='span_corruption:stdlib_docstrings',
                           source=source, output_features=vocab.output_features(),
                           preprocessors=[], shuffle_buffer_size=64)
