"""Checks of what a user gave on the command line against the parsed gin configuration.

  * a `--gin_file` that exists neither as given nor under a search path is named, with the search
    paths and the closest gin files that do exist (instead of gin's traceback);
  * a macro set on the command line (`--gin.TRAIN_STEP=20`) that no binding refers to would be
    silently ignored; it is named with the closest macros the configuration does use.

Bindings of configurable parameters (`--gin.T5Config.emb_dim=8`) are checked by gin itself: an
unknown configurable or parameter fails while parsing.
"""
from __future__ import annotations

import difflib
import os
from typing import Any, Iterator, Sequence

import gin
from gin import config_parser

_MACRO = 'gin.macro'


def _gin_files_under(paths: Sequence[str]) -> list[str]:
  out = []
  for base in paths:
    for root, _, names in os.walk(base):
      out += [os.path.relpath(os.path.join(root, n), base) for n in names if n.endswith('.gin')]
  return sorted(set(out))


def check_gin_files(files: Sequence[str], search_paths: Sequence[str]) -> None:
  """ValueError naming the first of `files` found neither as given nor under `search_paths`."""
  for name in files:
    if os.path.isfile(name) or any(os.path.isfile(os.path.join(p, name)) for p in search_paths):
      continue
    known = _gin_files_under(search_paths)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.75)
    hint = f'; did you mean {", ".join(close)}?' if close else ''
    raise ValueError(f'--gin_file={name}: no such file relative to {os.getcwd()} or under the gin '
                     f'search paths {", ".join(search_paths)}{hint}')


def command_line_macros(bindings: Sequence[str]) -> list[str]:
  """Names of the macros that `bindings` (binding lines, as `--gin.NAME=V` becomes) set."""
  names = []
  for text in bindings:
    parser = config_parser.ConfigParser(text, gin.config.ParserDelegate(skip_unknown=True))
    for statement in parser:
      if isinstance(statement, config_parser.BindingStatement) and not statement.arg_name:
        scope = statement.scope
        names.append(f'{scope}/{statement.selector}' if scope else statement.selector)
  return names


def _macro_references(value: Any) -> Iterator[str]:
  """Macro names referred to (`%NAME`) anywhere inside a bound value."""
  if isinstance(value, gin.config.ConfigurableReference):
    scoped = value.scoped_selector
    if scoped.endswith('/' + _MACRO):
      yield scoped[:-len(_MACRO) - 1]
  elif isinstance(value, dict):
    for v in value.values():
      yield from _macro_references(v)
  elif isinstance(value, (list, tuple, set)):
    for v in value:
      yield from _macro_references(v)


def referenced_macros() -> set[str]:
  """Every macro name some binding of the current gin configuration refers to."""
  config = gin.config._CONFIG  # pylint: disable=protected-access
  return {name for params in config.values() for value in params.values()
          for name in _macro_references(value)}


def check_macros_used(bindings: Sequence[str]) -> None:
  """ValueError naming each macro set in `bindings` that no binding of the parsed configuration
  refers to, with the closest macros it does use (`--gin.TRAIN_STEP=20` -> TRAIN_STEPS)."""
  used = referenced_macros()
  unused = [m for m in command_line_macros(bindings) if m not in used]
  if not unused:
    return
  parts = []
  for name in dict.fromkeys(unused):
    close = difflib.get_close_matches(name, sorted(used), n=3, cutoff=0.6)
    parts.append(f'--gin.{name}: no binding uses the macro {name}' +
                 (f' (closest macros in use: {", ".join(close)})' if close else ''))
  raise ValueError('; '.join(parts) + '. A macro takes effect only where a gin file refers to it '
                   'as %NAME.')
