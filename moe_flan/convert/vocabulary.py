"""The vocabulary follows the checkpoint: an imported checkpoint's SentencePiece model.

T5 v1.1 / FLAN-T5 / Switch directories ship `spiece.model`; ids are its pieces then 100 extra
ids (sentinels) at the top, as `seqio.SentencePieceVocabulary(path, extra_ids=100)` and
transformers' `T5Tokenizer` number them. On import it is copied to CKPT_DIR/spiece.model
(`checkpoint_dir.save`) and bound in CKPT_DIR/model.gin (`tasks.vocab.default_vocabulary.spm_path`),
so training, evaluation and inference with that model file tokenise with it. A vocabulary with more ids than the model's
embedding has rows is refused (HF pads embeddings, e.g. 32,100 ids in 32,128 rows, which fits).
"""
from __future__ import annotations

import os
from typing import Optional

SPM_NAME = 'spiece.model'
EXTRA_IDS = 100


def find(src: str) -> Optional[str]:
  path = os.path.join(src, SPM_NAME)
  return path if os.path.isfile(path) else None


def vocab_size(spm_path: str) -> int:
  """Ids of the SentencePiece model plus the T5 extra ids."""
  import sentencepiece  # pylint: disable=g-import-not-at-top
  try:
    pieces = sentencepiece.SentencePieceProcessor(model_file=spm_path).get_piece_size()
  except (OSError, RuntimeError) as e:
    raise ValueError(f'{spm_path}: not a SentencePiece model ({e})') from None
  return pieces + EXTRA_IDS


def check_fits(spm_path: str, embedding_rows: int) -> None:
  size = vocab_size(spm_path)
  if size > embedding_rows:
    raise ValueError(f'{spm_path} has {size} ids ({size - EXTRA_IDS} pieces + {EXTRA_IDS} extra '
                     f'ids) but the model embedding has {embedding_rows} rows (vocab_size)')


def bind(out: str) -> str:
  """Binds OUT/spiece.model (already copied there) in OUT/model.gin; returns its path."""
  target = os.path.join(os.path.abspath(out), SPM_NAME)
  with open(os.path.join(out, 'model.gin'), 'a') as f:
    f.write('\n# The checkpoint\'s own vocabulary (copied from the imported directory).\n'
            'import tasks.vocab\n'
            f'tasks.vocab.default_vocabulary.spm_path = {target!r}\n')
  return target
