"""Unused gin bindings (trainer.gin_checks.unused_bindings / watch_bindings) on small
configurables of this module: what gin's operative config says each call used, against every
binding of the configuration. The entry points' own runs: test_trainer_cli.py (an unused binding
fails train, evaluate and infer) and test_gin_runs.py (the run files leave none unused)."""
import importlib

import gin
import pytest

from moe_flan.trainer import gin_checks


@gin.configurable
def early(a: int = 1, b: int = 2) -> int:
  return a + b


@gin.configurable
def other(x: int = 0) -> int:
  return x


CONFIG = """
A = 3
UNREFERENCED_IN_FILE = 4
early.a = %A
early.b = 5
other.x = 6
s/early.b = 7
t/early.b = 8
"""


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  gin_checks.forget_queries()
  yield
  gin.clear_config()
  gin_checks.forget_queries()


def _parse(command_line=()):
  gin.parse_config(CONFIG)
  gin.parse_config(list(command_line))


def test_bindings_no_call_used_are_named_with_their_scope():
  _parse()
  early()
  assert gin_checks.unused_bindings(()) == ['other.x', 's/early.b', 't/early.b']
  with gin.config_scope('outer'):
    with gin.config_scope('s'):   # a scope nested in another still takes s/ bindings
      early()
  other()
  assert gin_checks.unused_bindings(()) == ['t/early.b']


def test_a_parameter_the_caller_passes_itself_is_unused():
  _parse()
  early(b=0)
  other()
  assert gin_checks.unused_bindings(()) == ['early.b', 's/early.b', 't/early.b']
  early()   # one call that takes b from gin is enough
  assert gin_checks.unused_bindings((), skip={f'{__name__}.early'}) == []


def test_command_line_macros_count_only_when_evaluated():
  # A macro set in a file that nothing evaluates is the file's business (a run file sets
  # macros for model files); one set on the command line is the user's and must be used.
  _parse(['A = 10', 'B = 11', 'other.x = %B'])
  early(), other()
  assert gin_checks.unused_bindings(['A = 10', 'B = 11', 'other.x = %B'],
                                    skip={f'{__name__}.early'}) == []
  gin.clear_config()
  _parse(['A = 10', 'B = 11', 'other.x = %B'])
  early(b=0)
  assert gin_checks.unused_bindings(['A = 10', 'B = 11'], skip={f'{__name__}.early'}) == [
      'other.x', 'B']
  assert gin_checks.unused_bindings(['A = 10', 'B = 11'], skip={f'{__name__}.early'},
                                    macros=False) == ['other.x']


def test_a_binding_read_by_query_parameter_is_used():
  _parse()
  early(), other()
  gin.parse_config(['s/other.x = 9'])
  assert gin_checks.unused_bindings(()) == ['s/early.b', 't/early.b', 's/other.x']
  assert gin_checks.query_parameter('s/other.x') == 9
  assert gin_checks.query_parameter('t/early.b') == 8
  assert gin_checks.unused_bindings(()) == ['s/early.b']


def test_reads_count_for_the_configuration_they_were_made_in(tmp_path):
  """Runs in one process (the experiment runner, tests): each parses its own configuration
  (cli.parse_gin); a read of an earlier one does not count in a later one, a read made before
  the run's watch starts does."""
  from moe_flan.trainer import cli  # pylint: disable=g-import-not-at-top
  path = tmp_path / 'run.gin'
  path.write_text(CONFIG)
  cli.parse_gin([str(path)], ['s/other.x = 9'])
  early(), other()
  assert gin_checks.query_parameter('t/early.b') == 8
  assert gin_checks.unused_bindings(()) == ['s/early.b', 's/other.x']
  cli.parse_gin([str(path)], ['s/other.x = 9'])   # the next run: the same bindings, new config
  early(), other()
  assert gin_checks.unused_bindings(()) == ['s/early.b', 't/early.b', 's/other.x']
  assert gin_checks.query_parameter('s/other.x') == 9
  with gin_checks.watch_bindings('moe_flan.train', ()) as watch:
    with pytest.raises(ValueError, match=r'never used the gin binding\(s\) s/early.b, t/early.b: '):
      watch.check_all()


def test_watch_checks_built_once_skipping_late_configurables_then_all(monkeypatch):
  monkeypatch.setattr(gin_checks, 'LATE_CONFIGURABLES', frozenset({f'{__name__}.other'}))
  _parse()
  gin_checks.check_built()   # outside a watch: nothing is checked
  with gin_checks.watch_bindings('moe_flan.train', ()) as watch:
    with gin.config_scope('s'), gin.config_scope('t'):
      early()
    gin_checks.check_built()   # other is late: not yet checked
    assert watch.built_checked
    with pytest.raises(ValueError) as e:
      watch.check_all()
  assert str(e.value).startswith('moe_flan.train never used the gin binding(s) other.x: ')
  assert '\n' not in str(e.value)
  assert gin_checks._WATCH is None   # pylint: disable=protected-access
  gin.clear_config()
  _parse()
  with gin_checks.watch_bindings('moe_flan.evaluate', ()):   # nothing called yet
    with pytest.raises(ValueError, match=r'^moe_flan.evaluate never used the gin binding\(s\) '
                                         r'early.a, early.b, s/early.b, t/early.b: '):
      gin_checks.check_built()
    gin_checks.check_built()   # once per run


def test_late_configurables_exist():
  from moe_flan.trainer import tf_startup  # pylint: disable=g-import-not-at-top
  tf_startup.start_tensorflow()
  registry = gin.config._REGISTRY   # pylint: disable=protected-access
  for name in gin_checks.LATE_CONFIGURABLES:
    importlib.import_module(name.rsplit('.', 1)[0])
    assert registry.get_match(name).selector == name
