"""Token ids stored at prepare time, and the vocabulary they were made with.

`prepare --vocabulary default|byte|PATH.model` tokenizes every example once and stores the ids
beside the text (`inputs_ids`, `targets_ids`: int64 lists, no EOS), as seqio's cached tasks
do, so training reads integers and packs instead of running SentencePiece on every read. The
index records the vocabulary (`describe`: kind, file name, SHA-256 of the model, sizes);
registration refuses shards made with another vocabulary than the tasks' (`check`), naming
both, because ids of one vocabulary decoded with another are silently wrong text.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Dict, List, Optional

import seqio

from tasks import vocab

ID_FEATURES = {'inputs': 'inputs_ids', 'targets': 'targets_ids'}


def load(spec: str) -> seqio.Vocabulary:
  """'default' (the tasks' vocabulary, gin `tasks.vocab.default_vocabulary`), 'byte', or the
  path of a SentencePiece model; ValueError naming a missing file."""
  if spec == 'default':
    return vocab.default_vocabulary()
  if spec == 'byte':
    return vocab.default_vocabulary(kind='byte')
  if not os.path.isfile(spec):
    raise ValueError(f'--vocabulary {spec!r}: no such SentencePiece model file (or use '
                     "'default' or 'byte')")
  return vocab.default_vocabulary(spm_path=spec)


def describe(vocabulary: seqio.Vocabulary) -> Dict[str, Any]:
  """What identifies a vocabulary's ids: {'kind', 'name', 'sha256', 'vocab_size', 'extra_ids'}."""
  vocabulary = getattr(vocabulary, 'resolved', vocabulary)
  if isinstance(vocabulary, seqio.SentencePieceVocabulary):
    model = vocabulary.sp_model
    kind, name = 'sentencepiece', os.path.basename(vocabulary.sentencepiece_model_file)
  elif isinstance(vocabulary, seqio.ByteVocabulary):
    model, kind, name = b'utf-8 bytes', 'byte', 'byte'
  else:
    raise ValueError(f'vocabulary {vocabulary!r}: only SentencePiece and byte vocabularies '
                     'can be stored with the shards')
  return {'kind': kind, 'name': name, 'sha256': hashlib.sha256(model).hexdigest(),
          'vocab_size': int(vocabulary.vocab_size), 'extra_ids': int(vocabulary.extra_ids)}


def _label(record: Dict[str, Any]) -> str:
  return (f'{record["kind"]} {record["name"]!r} (sha256 {record["sha256"][:12]}, '
          f'{record["vocab_size"]} ids)')


def check(recorded: Optional[Dict[str, Any]], vocabulary: seqio.Vocabulary,
          data_dir: str) -> None:
  """ValueError unless `vocabulary` is the one the shards of `data_dir` were tokenized with."""
  current = describe(vocabulary)
  if recorded != current:
    raise ValueError(
        f'{data_dir}/index.json: the shards were tokenized with {_label(recorded)}, but the '
        f'tasks use {_label(current)}; prepare again with this vocabulary, or register with '
        'use_tokens=False to tokenize the stored text instead')


class Tokenizer:
  """Encodes rows' inputs/targets with a vocabulary (SentencePiece's C++ encoder directly)."""

  def __init__(self, vocabulary: seqio.Vocabulary):
    self.vocabulary = getattr(vocabulary, 'resolved', vocabulary)
    sp = isinstance(self.vocabulary, seqio.SentencePieceVocabulary)
    self._encode = (lambda s: self.vocabulary.tokenizer.encode(s, out_type=int)) if sp else (
        lambda s: list(self.vocabulary.encode(s)))

  def __call__(self, text: str) -> List[int]:
    return self._encode(text)
