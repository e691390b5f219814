"""Vocabularies: the shipped SentencePiece model (default), any other SentencePiece model, bytes.

T5 id conventions: pad 0, eos 1, unk 2, then pieces, then 100 extra ids (sentinels) at the top;
`<extra_id_0>` is `vocab_size - 1`.

Gin (bind before the first dataset is built; tasks are registered at import with a proxy that
resolves the choice lazily, so gin files may `import tasks` before binding):
    tasks.vocab.default_vocabulary.kind = 'sentencepiece'   # or 'byte'
    tasks.vocab.default_vocabulary.spm_path = '/path/to/cc_all.32000/sentencepiece.model'
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import gin
import seqio

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data')
DEFAULT_SPM_PATH = os.path.join(DATA_DIR, 'moe_flan_spm.model')
EXTRA_IDS = 100
KINDS = ('sentencepiece', 'byte')


@functools.lru_cache(maxsize=None)
def _load(kind: str, spm_path: str, extra_ids: int) -> seqio.Vocabulary:
  if kind == 'byte':
    return seqio.ByteVocabulary(extra_ids=extra_ids)
  if not os.path.exists(spm_path):
    raise ValueError(f'default_vocabulary.spm_path={spm_path!r}: no such file')
  return seqio.SentencePieceVocabulary(spm_path, extra_ids=extra_ids)


@gin.configurable
def default_vocabulary(kind: str = 'sentencepiece', spm_path: Optional[str] = None,
                       extra_ids: int = EXTRA_IDS) -> seqio.Vocabulary:
  """The vocabulary every registered task tokenizes with (cached per argument set)."""
  if kind not in KINDS:
    raise ValueError(f'default_vocabulary.kind={kind!r}: choose one of {KINDS}')
  return _load(kind, os.path.abspath(spm_path or DEFAULT_SPM_PATH), int(extra_ids))


class LazyVocabulary(seqio.Vocabulary):
  """Stands in for `default_vocabulary()` inside registered Tasks, resolving it at each use so
  gin bindings made after `import tasks` still apply."""

  def __init__(self):
    super().__init__(extra_ids=0)

  @property
  def resolved(self) -> seqio.Vocabulary:
    return default_vocabulary()

  # Public API: delegate wholesale (the base class would mix our 0 extra ids in).
  vocab_size = property(lambda self: self.resolved.vocab_size)
  extra_ids = property(lambda self: self.resolved.extra_ids)
  pad_id = property(lambda self: self.resolved.pad_id)
  eos_id = property(lambda self: self.resolved.eos_id)
  unk_id = property(lambda self: self.resolved.unk_id)
  bos_id = property(lambda self: self.resolved.bos_id)
  _base_vocab_size = property(
      lambda self: self.resolved._base_vocab_size)  # pylint: disable=protected-access

  def encode(self, s):
    return self.resolved.encode(s)

  def decode(self, ids):
    return self.resolved.decode(ids)

  def encode_tf(self, s):
    return self.resolved.encode_tf(s)

  def decode_tf(self, ids):
    return self.resolved.decode_tf(ids)

  def _encode(self, s):
    return self.resolved._encode(s)  # pylint: disable=protected-access

  def _decode(self, ids):
    return self.resolved._decode(ids)  # pylint: disable=protected-access

  def _encode_tf(self, s):
    return self.resolved._encode_tf(s)  # pylint: disable=protected-access

  def _decode_tf(self, ids):
    return self.resolved._decode_tf(ids)  # pylint: disable=protected-access

  def __repr__(self):
    return f'LazyVocabulary({self.resolved!r})'


TASK_VOCABULARY = LazyVocabulary()


def output_features(vocabulary: Optional[seqio.Vocabulary] = None) -> dict:
  """The encoder-decoder features every text-to-text task emits."""
  vocabulary = vocabulary or TASK_VOCABULARY
  return {'inputs': seqio.Feature(vocabulary, add_eos=True, required=False),
          'targets': seqio.Feature(vocabulary, add_eos=True)}


def sentinel_id(vocabulary: seqio.Vocabulary, i: int) -> int:
  """Id of `<extra_id_{i}>` (T5 puts sentinels at the top of the vocabulary, counting down)."""
  if not 0 <= i < vocabulary.extra_ids:
    raise ValueError(f'sentinel index {i} out of range: vocabulary has {vocabulary.extra_ids} '
                     'extra ids')
  return vocabulary.vocab_size - 1 - i


def encode_batch(vocabulary: seqio.Vocabulary, texts) -> list:
  """Token ids of many strings at once (SentencePiece's batched C++ path when available)."""
  vocabulary = getattr(vocabulary, 'resolved', vocabulary)
  if isinstance(vocabulary, seqio.SentencePieceVocabulary):
    return vocabulary.tokenizer.encode(list(texts), out_type=int)
  return [list(vocabulary.encode(t)) for t in texts]


def ragged_ids(rows, eos_id: int):
  """<int32>[N, (len + 1)] tf.RaggedTensor of id lists with EOS appended (for from_tensor_slices;
  each element then comes out as a dense 1-D tensor)."""
  import itertools  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rows = [list(r) + [eos_id] for r in rows]
  flat = np.fromiter(itertools.chain.from_iterable(rows), np.int32)
  return tf.RaggedTensor.from_row_lengths(flat, [len(r) for r in rows])


def tokenize_to_ragged(vocabulary: seqio.Vocabulary, texts):
  """`ragged_ids` of `encode_batch(texts)` with the vocabulary's EOS."""
  vocabulary = getattr(vocabulary, 'resolved', vocabulary)
  return ragged_ids(encode_batch(vocabulary, texts), vocabulary.eos_id)
