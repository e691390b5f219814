"""Checks of what a user gave on the command line against the parsed gin configuration.

  * a `--gin_file` that exists neither as given nor under a search path is named, with the search
    paths and the closest gin files that do exist (instead of gin's traceback);
  * a macro set on the command line (`--gin.TRAIN_STEP=20`) that no binding refers to would be
    silently ignored; it is named with the closest macros the configuration does use;
  * a binding (from a gin file or the command line) of a configurable the run never calls, or of
    a parameter every call passes itself, would be silently ignored too, e.g.
    `--gin.InferConfig.num_beams=4` given to `moe_flan.train` or a binding in a scope no call
    enters. gin records what each call used (its operative config); `watch_bindings` compares
    the bindings with it: `check_built` once the run has called everything but
    LATE_CONFIGURABLES (training: after the first step; evaluation and inference: after their
    set-up), `UnusedBindingsWatch.check_all` at the end of the run, when command-line macros
    that no call evaluated count as unused too. Macros set in gin files are not checked: a run
    file sets macros for model files that some models do not refer to. A value the code reads
    from the configuration instead of taking it in a call (`query_parameter`) counts as used.

An unknown configurable or parameter (`--gin.T5Config.emb_dm=8`) fails in gin while parsing.
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
from typing import Any, Collection, Iterator, Optional, Sequence

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


# Configurables that a run calls only when it builds a dataset that needs them, which may happen
# only at an EVAL_PERIOD step, in the end-of-run evaluation of RunConfig.final_eval_mixtures, or
# when the engine registers benchmarks: `check_built` skips their bindings, `check_all` (at the
# end of the run) does not.
LATE_CONFIGURABLES = frozenset({
    'tasks.benchmarks.register_benchmarks',      # the evaluation engine, at its first use
    'tasks.bigbench.bigbench_settings',          # the tasks' preprocessors, when a dataset of
    'tasks.embedded.few_shot_settings',          # a mixture that uses them is built
    'tasks.embedded.format_weights',
    'tasks.embedded.generation_seed',
    'tasks.flan_collection.mixtures.flan2022_settings',
    'tasks.mixtures.mixing_cap',
    'tasks.mixtures.submix_weights',
    'tasks.mmlu.mmlu_settings',
    'tasks.span_corruption.span_corruption_settings',
})


# (scope, selector, parameter) of the bindings read by `query_parameter` from the current gin
# configuration; `forget_queries` empties it when a new configuration is parsed (cli.parse_gin),
# so in a process that runs several entry points in turn (the experiment runner, tests) a read
# of an earlier run's configuration does not make a later run's binding count as used.
_QUERIED: set[tuple[str, str, str]] = set()


def forget_queries() -> None:
  """A new gin configuration replaces the current one: no binding of it has been read yet."""
  _QUERIED.clear()


@contextlib.contextmanager
def queries_set_aside() -> Iterator[None]:
  """The reads of the current configuration survive a block that parses another one (e.g. a
  distillation teacher's gin files, parsed mid-run and then replaced by the run's again)."""
  saved = set(_QUERIED)
  try:
    yield
  finally:
    _QUERIED.clear()
    _QUERIED.update(saved)


def query_parameter(binding_key: str) -> Any:
  """gin.query_parameter(binding_key), and the binding counts as used: e.g. a distillation
  teacher takes the run's MoeConfig.dispatch, which a dense student never calls MoeConfig with."""
  value = gin.query_parameter(binding_key)
  key = gin.config.ParsedBindingKey.parse(binding_key)
  _QUERIED.add((key.scope, key.complete_selector, key.arg_name))
  return value


def _within(scope: str, call_scope: str) -> bool:
  """Whether a binding in `scope` reaches a call made in `call_scope` (gin applies a binding
  of scope 'a' to calls inside 'a', also nested in other scopes)."""
  if not scope:
    return True
  return f'/{scope}/' in f'/{call_scope}/'


def _display(scope: str, selector: str, param: str) -> str:
  name = selector.rsplit('.', 1)[-1]
  return f'{scope}/{name}.{param}' if scope else f'{name}.{param}'


def unused_bindings(command_line: Sequence[str], skip: Collection[str] = (),
                    macros: bool = True) -> list[str]:
  """Bindings of the current gin configuration that no call of a configurable used (as
  `[scope/]Name.param`), skipping configurables in `skip` (full selectors); with `macros`, also
  the macros `command_line` sets that no call evaluated."""
  # pylint: disable=protected-access
  config, operative = gin.config._CONFIG, dict(gin.config._OPERATIVE_CONFIG)
  # pylint: enable=protected-access
  calls: dict[str, list[tuple[str, Collection[str]]]] = {}
  for (call_scope, selector), params in operative.items():
    calls.setdefault(selector, []).append((call_scope, set(params)))
  set_on_command_line = set(command_line_macros(command_line))
  out = []
  for (scope, selector), params in config.items():
    if selector == _MACRO:
      if macros and scope in set_on_command_line and (scope, _MACRO) not in operative:
        out.append(scope)
      continue
    if selector in skip:
      continue
    for param in params:
      if (scope, selector, param) in _QUERIED:
        continue
      if not any(param in used and _within(scope, call_scope)
                 for call_scope, used in calls.get(selector, ())):
        out.append(_display(scope, selector, param))
  return out


@dataclasses.dataclass
class UnusedBindingsWatch:
  """The unused-binding checks of one run of an entry point (`watch_bindings`)."""
  prog: str
  command_line: Sequence[str]
  built_checked: bool = False

  def check(self, skip: Collection[str] = (), macros: bool = True) -> None:
    unused = unused_bindings(self.command_line, skip, macros)
    if unused:
      raise ValueError(f'{self.prog} never used the gin binding(s) {", ".join(unused)}: no call '
                       'of the configurable took that parameter from gin (a configurable of '
                       'another entry point, a scope no call enters, a macro nothing '
                       'evaluated, or a setting this run does not need); remove them.')

  def check_all(self) -> None:
    """At the end of a run: every binding, and every command-line macro."""
    self.check()


_WATCH: Optional[UnusedBindingsWatch] = None


@contextlib.contextmanager
def watch_bindings(prog: str, command_line: Sequence[str]) -> Iterator[UnusedBindingsWatch]:
  """While the block runs (an entry point's run, gin already configured), `check_built` checks
  the bindings; the block calls `.check_all()` when the run ends normally. Library calls of
  `loop.train` etc. outside an entry point are not checked."""
  global _WATCH
  _WATCH = UnusedBindingsWatch(prog, tuple(command_line))
  try:
    yield _WATCH
  finally:
    _WATCH = None


def check_built() -> None:
  """Called by a run once it has built everything but LATE_CONFIGURABLES (the first train step
  ran; evaluation or inference set up): a ValueError naming the bindings no call used. Once
  per watched run; a no-op outside `watch_bindings`."""
  if _WATCH is not None and not _WATCH.built_checked:
    _WATCH.built_checked = True
    _WATCH.check(LATE_CONFIGURABLES, macros=False)
