"""Command-line flags shared by the train / evaluate / infer entry points (t5x conventions); the
gin flags (`add_gin_flags`, `parse_with_gin`) also serve `moe_flan.aot` and `moe_flan.convert`.

  --gin_file=F            (repeatable, or comma-separated) gin files; the repo's gin/ is searched
  --gin_search_paths=P,Q  extra directories to search for gin files and includes
  --gin.NAME=VALUE        one binding, e.g. --gin.MODEL_DIR="'/tmp/run'" or --gin.TRAIN_STEPS=100
  --gin_bindings=B        (repeatable) a raw binding line, as in t5x
  --coordinator_address, --num_processes, --process_id, --distributed_auto_detect,
  --distributed_timeout_s, --distributed_heartbeat_timeout_s
                          multi-host (jax.distributed; also $MOE_FLAN_* and SLURM detection)

Bad input fails here, before anything is built: a --gin_file found neither as given nor under a
search path, an unknown configurable or parameter (gin's error names it), a macro set on the
command line that no binding uses (named, with the closest macros in use) and any macro still at
%gin.REQUIRED (named, with the flag that sets it). TensorFlow (the input pipeline) is started
with accelerators hidden and without its device start-up lines (`tf_startup`).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import logging
import os
import sys
from typing import Callable, Iterator, Optional, Sequence

import gin
from gin import config as gin_config

from moe_flan.partitioning import distributed
from moe_flan.partitioning import liveness
from moe_flan.trainer import gin_checks
from moe_flan.trainer import tf_startup

REPO_GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), 'gin')

# Modules whose gin configurables a run file may bind.
CONFIGURABLE_MODULES = (
    'moe_flan.config', 'moe_flan.model', 'moe_flan.partitioning.mesh',
    'moe_flan.partitioning.rules', 'moe_flan.trainer.optimizers', 'moe_flan.trainer.data',
    'moe_flan.trainer.checkpoints', 'moe_flan.trainer.loop', 'moe_flan.trainer.distill',
    'moe_flan.trainer.inference', 'moe_flan.trainer.checkpoint_eval', 'moe_flan.evaluation.engine',
    'tasks', 'tasks.benchmarks')


@dataclasses.dataclass(frozen=True)
class Flags:
  gin_files: tuple[str, ...]
  gin_bindings: tuple[str, ...]
  gin_search_paths: tuple[str, ...]
  coordinator_address: Optional[str] = None
  num_processes: Optional[int] = None
  process_id: Optional[int] = None
  distributed_auto_detect: bool = False
  distributed_timeout_s: int = distributed.DEFAULT_TIMEOUT_S
  distributed_heartbeat_timeout_s: int = distributed.DEFAULT_HEARTBEAT_TIMEOUT_S
  prog: str = 'moe_flan'
  external_coordinator: Optional[bool] = None   # None: $MOE_FLAN_EXTERNAL_COORDINATOR


def split_commas(values: Sequence[str]) -> tuple[str, ...]:
  """Repeated flag values, each possibly comma-separated, as one flat tuple."""
  return tuple(v for value in values for v in value.split(',') if v)


def add_gin_flags(parser: argparse.ArgumentParser) -> None:
  """Adds --gin_file, --gin_bindings and --gin_search_paths (each repeatable); `parse_with_gin`
  adds --gin.NAME=VALUE."""
  parser.add_argument('--gin_file', action='append', default=[],
                      help='gin file (repeatable or comma-separated); the repo\'s gin/ is searched')
  parser.add_argument('--gin_bindings', action='append', default=[],
                      help='a raw gin binding line (repeatable)')
  parser.add_argument('--gin_search_paths', action='append', default=[],
                      help='extra directories to search for gin files and includes')


def parse_with_gin(parser: argparse.ArgumentParser, argv: Sequence[str],
                   no_gin_file: Optional[str] = None) -> tuple[argparse.Namespace, list[str]]:
  """(flags, gin bindings) from `argv` for a parser with `add_gin_flags`: the bindings are the
  --gin_bindings, then each --gin.NAME=VALUE as `NAME = VALUE`. Exits with usage on an unknown
  flag, a --gin. flag without `=`, or (the error `no_gin_file`, when given) no --gin_file."""
  dotted = [a for a in argv if a.startswith('--gin.')]
  args = parser.parse_args([a for a in argv if not a.startswith('--gin.')])
  bindings = list(args.gin_bindings)
  for arg in dotted:
    name, sep, value = arg[len('--gin.'):].partition('=')
    if not sep:
      parser.error(f'{arg}: expected --gin.NAME=VALUE')
    bindings.append(f'{name} = {value}')
  if no_gin_file is not None and not args.gin_file:
    parser.error(no_gin_file)
  return args, bindings


def parse_flags(argv: Sequence[str], prog: str = 'moe_flan') -> Flags:
  """Flags from `argv` (without the program name). Unknown flags -> SystemExit with usage."""
  parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  add_gin_flags(parser)
  distributed.add_flags(parser)
  args, bindings = parse_with_gin(parser, argv, 'at least one --gin_file is required')
  return Flags(split_commas(args.gin_file), tuple(bindings), split_commas(args.gin_search_paths),
               args.coordinator_address, args.num_processes, args.process_id,
               args.distributed_auto_detect, args.distributed_timeout_s,
               args.distributed_heartbeat_timeout_s, prog, args.external_coordinator)


def import_configurables() -> None:
  """Imports every module with gin configurables (and `tasks`, to register seqio tasks)."""
  tf_startup.start_tensorflow()    # before `tasks` imports TensorFlow
  for name in CONFIGURABLE_MODULES:
    importlib.import_module(name)


def required_macros_unset() -> list[str]:
  """Names of macros whose value is still %gin.REQUIRED."""
  config = gin.config._CONFIG  # pylint: disable=protected-access
  return sorted(scope for (scope, selector), params in config.items()
                if selector == 'gin.macro' and str(params.get('value')) == '%gin.REQUIRED')


class _QuietGinProbes(logging.Filter):
  """gin logs 'Path not found' at ERROR while probing a search path that lacks an include;
  the include is then found on the next path, so the message only alarms users."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith('Path not found:')


def _search_paths_first(search_paths: Sequence[str]) -> None:
  """gin looks for a file or an include under each of its location prefixes in turn; ours: the
  search paths (the project's gin/ first), then the working directory (gin's own order puts
  the working directory first, so a user's `runs/` folder could shadow the project's files)."""
  prefixes = gin_config._LOCATION_PREFIXES  # pylint: disable=protected-access
  prefixes[:] = list(dict.fromkeys(list(search_paths) + [p for p in prefixes if p] + ['']))


def _never_raises(exists: Callable[[str], bool]) -> Callable[[str], bool]:
  def safe(path: str) -> bool:
    try:
      return exists(path)
    except (TypeError, ValueError, ImportError):
      return False
  return safe


@contextlib.contextmanager
def _safe_file_readers() -> Iterator[None]:
  """While parsing, gin's extra file readers answer 'no such file' instead of failing: the
  Python-package reader took 'runs/x.gin' for a file of a package `runs` and raised a
  TypeError when the working directory held a `runs/` folder."""
  readers = gin_config._FILE_READERS  # pylint: disable=protected-access
  saved = list(readers)
  readers[:] = [(read, exists if read is open else _never_raises(exists))
                for read, exists in saved]
  try:
    yield
  finally:
    readers[:] = saved


def parse_gin(gin_files: Sequence[str], gin_bindings: Sequence[str],
              search_paths: Sequence[str] = (), skip_unknown: bool = False) -> None:
  """Clears gin and parses the files and bindings (not finalized). Files are found as given,
  else under the repository's gin/ and `search_paths`; one that is nowhere, or a missing
  include, is a one-line ValueError naming it and the search paths."""
  search_paths = (REPO_GIN_DIR,) + tuple(search_paths)
  gin_checks.check_gin_files(gin_files, search_paths)
  files = [os.path.abspath(f) if os.path.isfile(f) else f for f in gin_files]
  gin.clear_config()
  gin_checks.forget_queries()
  _search_paths_first(search_paths)
  quiet = _QuietGinProbes()
  logging.getLogger().addFilter(quiet)
  try:
    with _safe_file_readers():
      gin.parse_config_files_and_bindings(files, list(gin_bindings),
                                          finalize_config=False, skip_unknown=skip_unknown)
  except OSError as e:     # an include that is nowhere to be found: gin's message, one line
    raise ValueError(' '.join(line.strip() for line in str(e).splitlines())) from e
  finally:
    logging.getLogger().removeFilter(quiet)


def configure_gin(flags: Flags) -> None:
  """Parses the gin files and bindings, checks REQUIRED macros, finalizes the config."""
  # Missing files are named before TensorFlow starts (import_configurables takes seconds).
  gin_checks.check_gin_files(flags.gin_files, (REPO_GIN_DIR,) + flags.gin_search_paths)
  import_configurables()
  parse_gin(flags.gin_files, flags.gin_bindings, flags.gin_search_paths)
  gin_checks.check_macros_used(flags.gin_bindings)
  missing = required_macros_unset()
  if missing:
    how = ' '.join(f'--gin.{m}=...' for m in missing)
    raise ValueError(f'Required to be set: {", ".join(missing)} (gin macros still at '
                     f'%gin.REQUIRED); set them, e.g. {how}')
  gin.finalize()


def initialize_distributed(flags: Flags) -> None:
  """jax.distributed set-up from the flags, else $MOE_FLAN_* or SLURM; a no-op for one process."""
  distributed.initialize(flags.coordinator_address, flags.num_processes, flags.process_id,
                         auto_detect=flags.distributed_auto_detect,
                         timeout_s=flags.distributed_timeout_s,
                         heartbeat_timeout_s=flags.distributed_heartbeat_timeout_s,
                         external_coordinator=flags.external_coordinator, prog=flags.prog)


def start(argv: Optional[Sequence[str]], prog: str) -> Flags:
  """What train / evaluate / infer do first: parse `argv` (default: sys.argv[1:]), start
  jax.distributed, parse and finalize gin. Import modules that may start a JAX backend only
  after this."""
  flags = parse_flags(sys.argv[1:] if argv is None else argv, prog=prog)
  initialize_distributed(flags)
  configure_gin(flags)
  return flags


def console_entry(main: Callable[[], int], prog: str) -> None:
  """Runs an entry point's `main`; bad input (ValueError, whose message names the setting)
  exits 2 with the message instead of a traceback. In a multi-process run, any error ends
  the process through `liveness.exit_after_failure`: the other processes learn of it and stop
  instead of waiting for this one (a lost peer is named)."""
  try:
    sys.exit(main())
  except Exception as e:  # pylint: disable=broad-except
    if liveness.watching():
      liveness.exit_after_failure(prog, e)   # does not return
    if not isinstance(e, ValueError):
      raise
    print(f'{prog}: error: {without_gin_context(str(e))}', file=sys.stderr)
    sys.exit(2)


def without_gin_context(message: str) -> str:
  """`message` without the '  In call to configurable ...' lines gin appends to an error
  raised inside a configurable: the message already names the setting."""
  return '\n'.join(line for line in message.splitlines()
                   if not line.startswith('  In call to configurable'))
