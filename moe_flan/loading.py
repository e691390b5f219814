"""`moe_flan.load(path)`: a trained MODEL_DIR or a converted checkpoint as a usable model.

    import moe_flan
    from moe_flan.model import EncoderDecoder

    config, params, vocabulary = moe_flan.load('/tmp/moe_flan_quickstart')
    logits = EncoderDecoder(config).apply({'params': params}, encoder_tokens, decoder_tokens)

`path` is a trainer MODEL_DIR (its latest checkpoint), one of its step directories
(MODEL_DIR/checkpoints/N), or a directory written by `python -m moe_flan.convert --out`. The
model comes from the `model.gin` that training and conversion write beside the checkpoints; the
params are restored by `ModelSetup.restore_params`, the same function evaluation and inference
use, sharded over the default mesh (all devices on 'data') unless a partitioner is given.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Iterator, Optional

from moe_flan.config import T5Config
from moe_flan.convert import checkpoint_dir, gin_config
from moe_flan.partitioning import partitioner as part_lib
from moe_flan.trainer import checkpoints as ckpt_lib
from moe_flan.trainer import model_setup



@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """What `load` returns; unpacks as `config, params, vocabulary = moe_flan.load(path)`.

  config: the model's `T5Config`.
  params: nested params (jax.Arrays placed on the mesh).
  vocabulary: the seqio vocabulary to tokenize prompts and read outputs with.
  step_dir: the checkpoint directory the params came from.
  """
  config: T5Config
  params: Any
  vocabulary: Any
  step_dir: str

  def __iter__(self) -> Iterator[Any]:
    return iter((self.config, self.params, self.vocabulary))


find_model_gin = ckpt_lib.find_model_gin   # the model.gin of a path `load` accepts


def vocabulary_for(directory: str, config: T5Config) -> Any:
  """The vocabulary of the model in `directory`.

  `directory/spiece.model` if present (a SentencePiece model; T5 ids with 100 extra ids, as HF's
  T5 tokenizer; the converter copies it from the HF directory), else for an imported checkpoint
  (`hf_config.json`) None with a warning (its tokenizer is not the shipped one), else the shipped
  vocabulary the trainer uses by default.
  Raises ValueError when the vocabulary has more ids than the model has embeddings.
  """
  # Imported here, not at the top: `tasks` imports TensorFlow (seconds), which loading a
  # model for JAX code does not otherwise need.
  from tasks import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  spm = os.path.join(directory, checkpoint_dir.SPM)
  if os.path.isfile(spm):
    vocabulary = vocab_lib.default_vocabulary('sentencepiece', spm)
  elif os.path.isfile(os.path.join(directory, checkpoint_dir.HF_CONFIG)):
    logging.warning('moe_flan.load: %s is an imported checkpoint without its tokenizer; no '
                    'vocabulary is returned. Copy the model\'s SentencePiece file (HF: '
                    'spiece.model) to %s to get one.', directory, spm)
    return None
  else:
    vocabulary = vocab_lib.default_vocabulary('sentencepiece')
  if vocabulary.vocab_size > config.vocab_size:
    raise ValueError(f'moe_flan.load: the vocabulary ({vocabulary.vocab_size} ids) does not fit '
                     f'the model (T5Config.vocab_size={config.vocab_size}); put the model\'s '
                     f'SentencePiece file at {spm}')
  return vocabulary


def load(path: str, partitioner: Optional[part_lib.Partitioner] = None) -> LoadedModel:
  """Loads the model at `path` (module docstring): config, params and vocabulary.

  Reading `model.gin` uses gin's global configuration (cleared before and after), so call this
  outside a gin-configured run.
  """
  ckpt_lib.resolve_step_dir(path)   # a clear error for a path without checkpoints, first
  gin_file = find_model_gin(path)
  config = gin_config.config_from_gin([gin_file])
  side = model_setup.build_model_setup(config, partitioner)
  params, step_dir = side.restore_params(path)
  return LoadedModel(config, params, vocabulary_for(os.path.dirname(gin_file), config), step_dir)
