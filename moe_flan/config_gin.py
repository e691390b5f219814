"""A model config as a gin file: what training and conversion write beside their checkpoints.

`config_to_gin` writes the bindings of a `T5Config` (and its `MoeConfig`) in the style of
gin/models/*.gin - including the DROPOUT_RATE / EXPERT_DROPOUT_RATE / VOCAB_SIZE macros that
gin/runs/*.gin files override - so a training run's MODEL_DIR and an imported checkpoint's
directory both carry a `model.gin` that any run file accepts and `moe_flan.load` reads
(`moe_flan.convert.gin_config.config_from_gin` parses it back).
"""
from __future__ import annotations

import dataclasses
import os

from moe_flan import atomic_file
from moe_flan.config import T5Config

MODEL_GIN = 'model.gin'   # the file name in MODEL_DIR and in converted checkpoint directories
_MACROS = {('T5Config', 'vocab_size'): 'VOCAB_SIZE', ('T5Config', 'dropout_rate'): 'DROPOUT_RATE',
           ('MoeConfig', 'expert_dropout_rate'): 'EXPERT_DROPOUT_RATE'}


def _bindings(name: str, obj) -> list[str]:
  lines = []
  for field in dataclasses.fields(obj):
    if field.name == 'moe':
      continue
    value = getattr(obj, field.name)
    value = tuple(value) if isinstance(value, list) else value
    macro = _MACROS.get((name, field.name))
    lines.append(f'{name}.{field.name} = ' + (f'%{macro}' if macro else repr(value)))
  return lines


def config_to_gin(config: T5Config, header: str = '') -> str:
  """Gin text that rebuilds `config` (see module docstring)."""
  lines = [f'# {line}' for line in header.splitlines()]
  lines += ['import moe_flan.config']
  lines += ['', f'VOCAB_SIZE = {config.vocab_size}', f'DROPOUT_RATE = {config.dropout_rate!r}']
  if config.moe is not None:
    lines += [f'EXPERT_DROPOUT_RATE = {config.moe.expert_dropout_rate!r}']
  lines += [''] + _bindings('T5Config', config)
  if config.moe is None:
    lines += ['T5Config.moe = None']
  else:
    lines += ['T5Config.moe = @MoeConfig()'] + _bindings('MoeConfig', config.moe)
  return '\n'.join(lines) + '\n'


def write_model_gin(directory: str, config: T5Config, header: str = '',
                    name: str = MODEL_GIN) -> str:
  """Writes `directory/name` (model.gin unless named; replacing an older one) and returns its
  path."""
  return atomic_file.write_text(os.path.join(directory, name), config_to_gin(
      config, header or 'The model of this directory (moe_flan.load reads it).'))
