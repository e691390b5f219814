"""A model config as a gin file, and a model config from gin files.

`config_to_gin` writes the bindings of a `T5Config` (and its `MoeConfig`) in the style of
gin/models/*.gin - including the DROPOUT_RATE / EXPERT_DROPOUT_RATE / VOCAB_SIZE macros that
gin/runs/*.gin files override - so an imported checkpoint's directory carries a model file
that any run file accepts. `config_from_gin` parses gin files + bindings into a `T5Config`.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import gin

from moe_flan.config import MoeConfig, T5Config  # both: gin must know MoeConfig
from moe_flan.trainer import cli as trainer_cli
from moe_flan.trainer import gin_checks

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


def config_from_gin(gin_files: Sequence[str], gin_bindings: Sequence[str] = (),
                    search_paths: Sequence[str] = ()) -> T5Config:
  """The `T5Config` that gin files + bindings describe (bindings of other configurables, e.g.
  from run files, are skipped). Clears the global gin config before and after.

  Files are found as the train / evaluate / infer entry points find them (as given, else under
  the repository's gin/ and `search_paths`); one that is nowhere, or a missing include, is a
  ValueError naming it and the search paths.
  """
  search_paths = (trainer_cli.REPO_GIN_DIR,) + tuple(search_paths)
  gin_checks.check_gin_files(gin_files, search_paths)
  gin.clear_config()
  for path in search_paths:
    gin.add_config_file_search_path(path)
  quiet = trainer_cli._QuietGinProbes()  # pylint: disable=protected-access
  logging.getLogger().addFilter(quiet)
  try:
    gin.parse_config_files_and_bindings(list(gin_files), list(gin_bindings),
                                        finalize_config=False, skip_unknown=True)
    return T5Config()
  except OSError as e:     # an include that is nowhere to be found
    raise ValueError(f'{str(e).splitlines()[0]} (gin search paths: {", ".join(search_paths)})'
                     ) from e
  finally:
    logging.getLogger().removeFilter(quiet)
    # Left in place, the bindings would leak into every later T5Config(...) of the process.
    gin.clear_config()
