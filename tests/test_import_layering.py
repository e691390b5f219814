"""Dependencies run one way: no module of moe_flan imports a layer above its own, no two
modules import each other (directly or through others), and no two packages of moe_flan
(moe_flan/<name>) do either, counting imports inside functions too.

Layers, bottom to top (moe_flan/<name>, the first component after `moe_flan.`):
  config, axes, config_gin, atomic_file  ->  layers, kernels  ->  moe  ->  model  ->
  partitioning  ->  decoding  ->  evaluation  ->  trainer  ->  convert  ->  entry points (train,
  evaluate, infer, list_shardings, loading, aot, experiments, and the package itself).
`tasks` (SeqIO tasks) stands beside the model stack: it imports nothing of moe_flan, and only
the evaluation layer and above import it.
"""
import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = [
    {'config', 'axes', 'config_gin', 'atomic_file'},
    {'layers', 'kernels'},
    {'moe'},
    {'model'},
    {'partitioning'},
    {'decoding'},
    {'evaluation'},
    {'trainer'},
    {'convert'},
    {'train', 'evaluate', 'infer', 'list_shardings', 'loading', 'aot', 'experiments', '__init__',
     '__main__'},
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}
TASKS_MIN_RANK = RANK['evaluation']


def module_files(root: str, package: str) -> dict[str, str]:
  """Dotted module name -> file, for every .py file of `package` under `root`."""
  out = {}
  for dirpath, _, files in os.walk(os.path.join(root, package)):
    for f in files:
      if f.endswith('.py'):
        rel = os.path.relpath(os.path.join(dirpath, f), root)[:-3].split(os.sep)
        if rel[-1] == '__init__':
          rel = rel[:-1]
        out['.'.join(rel)] = os.path.join(dirpath, f)
  return out


def imports_of(name: str, path: str, known: set[str]) -> set[str]:
  """Every module `name` imports, at module level or inside functions (known modules only).

  `from a.b import c` counts as importing `a.b.c` when that is a module, else `a.b`. Importing
  a module also runs the `__init__` of each package above it, so those packages count too,
  except the top-level ones and the packages `name` itself sits in.
  """
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  is_package = path.endswith('__init__.py')
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:   # relative import
        parts = name.split('.')
        parts = parts if is_package else parts[:-1]
        parts = parts[:len(parts) - node.level + 1]
        base = '.'.join(parts + ([base] if base else []))
      for alias in node.names:
        sub = f'{base}.{alias.name}'
        found.add(sub if sub in known else base)
  own = {'.'.join(name.split('.')[:i]) for i in range(1, name.count('.') + 2)}
  for module in list(found):
    parts = module.split('.')
    found.update('.'.join(parts[:i]) for i in range(2, len(parts)))
  return {m for m in found if m in known and m not in own}


def layer_of(module: str) -> int:
  parts = module.split('.')
  return RANK['__init__'] if len(parts) == 1 else RANK[parts[1]]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def violations(root: str) -> list[str]:
  """Every upward import, unassigned module and import cycle under `root`, one line each."""
  modules = {**module_files(root, 'moe_flan'), **module_files(root, 'tasks')}
  known = set(modules)
  problems = []
  graph = {}
  for name, path in sorted(modules.items()):
    targets = imports_of(name, path, known)
    if name.split('.')[0] == 'tasks':
      problems += [f'{name} imports {t}: tasks import nothing of moe_flan'
                   for t in sorted(targets) if t.split('.')[0] == 'moe_flan']
      continue
    parts = name.split('.')
    if len(parts) > 1 and parts[1] not in RANK:
      problems.append(f'{name}: not in any layer; add moe_flan.{parts[1]} to LAYERS')
      continue
    graph[name] = {t for t in targets if t.split('.')[0] == 'moe_flan'}
    for t in sorted(targets):
      if t.split('.')[0] == 'tasks':
        if layer_of(name) < TASKS_MIN_RANK:
          problems.append(f'{name} imports {t}: below evaluation, nothing imports tasks')
      elif len(t.split('.')) > 1 and t.split('.')[1] in RANK and layer_of(t) > layer_of(name):
        problems.append(f'{name} (layer {layer_of(name)}) imports {t} (layer {layer_of(t)}): '
                        'an upward import')
  for graph_node in graph.values():
    graph_node.intersection_update(graph)
  problems += [f'import cycle: {" <-> ".join(c)}' for c in cycles(graph)]
  problems += [f'package import cycle: {" <-> ".join(c)}' for c in cycles(package_graph(graph))]
  return problems


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
  """The module graph with each module replaced by its package moe_flan.<name> (top-level
  modules stand for themselves): two packages whose modules import each other form a cycle
  even when no module does."""
  def package(module):
    return '.'.join(module.split('.')[:2])
  out: dict[str, set[str]] = {}
  for name, targets in graph.items():
    out.setdefault(package(name), set()).update(package(t) for t in targets)
  for name, targets in out.items():
    targets.discard(name)
    targets.intersection_update(out)
  return out


def test_the_package_imports_one_way_only():
  problems = violations(REPO)
  assert not problems, 'layering broken:\n  ' + '\n  '.join(problems)


def _write(root, rel, text):
  path = os.path.join(root, *rel.split('/'))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.write(text)


@pytest.mark.parametrize('files,expected', [
    # Upward, inside a function (how lazy imports used to hide them).
    ({'moe_flan/moe/layer.py': 'def f():\n  from moe_flan.trainer import checkpoints\n'},
     'moe_flan.moe.layer (layer 2) imports moe_flan.trainer.checkpoints (layer 7)'),
    # Upward, relative, to a package's __init__.
    ({'moe_flan/partitioning/__init__.py': 'from ..trainer import evaluation\n'},
     'moe_flan.partitioning (layer 4) imports moe_flan.trainer.evaluation (layer 7)'),
    # A package's __init__ importing a module below that imports back into the package.
    ({'moe_flan/partitioning/__init__.py': 'from moe_flan.moe import layer\n',
      'moe_flan/partitioning/mesh.py': '',
      'moe_flan/moe/layer.py': 'from moe_flan.partitioning.mesh import x\n'},
     'import cycle: moe_flan.moe.layer <-> moe_flan.partitioning'),
    # Same layer, both ways: a cycle.
    ({'moe_flan/trainer/builder.py': 'from moe_flan.trainer import evaluation\n',
      'moe_flan/trainer/evaluation.py': 'def g():\n  import moe_flan.trainer.builder\n'},
     'import cycle: moe_flan.trainer.builder <-> moe_flan.trainer.evaluation'),
    # Packages in one layer importing each other through different modules: no module cycle.
    ({'moe_flan/layers/mlp.py': 'from moe_flan.kernels import grouped\n',
      'moe_flan/kernels/grouped.py': '', 'moe_flan/layers/norm.py': '',
      'moe_flan/kernels/tiles.py': 'import moe_flan.layers.norm\n'},
     'package import cycle: moe_flan.kernels <-> moe_flan.layers'),
    # Evaluation restoring params through the trainer, which runs the evaluation engine.
    ({'moe_flan/evaluation/run.py': 'def f():\n  from moe_flan.trainer import checkpoints\n'},
     'moe_flan.evaluation.run (layer 6) imports moe_flan.trainer.checkpoints (layer 7)'),
    ({'moe_flan/model/losses.py': 'import tasks.vocab\n'},
     'moe_flan.model.losses imports tasks.vocab: below evaluation, nothing imports tasks'),
    ({'tasks/vocab.py': 'from moe_flan import config\n'},
     'tasks.vocab imports moe_flan.config: tasks import nothing of moe_flan'),
    ({'moe_flan/utils/misc.py': ''}, 'moe_flan.utils.misc: not in any layer'),
])
def test_the_checker_reports_each_kind_of_violation(tmp_path, files, expected):
  root = str(tmp_path)
  base = {'moe_flan/__init__.py': '', 'moe_flan/config.py': '', 'moe_flan/moe/__init__.py': '',
          'moe_flan/moe/layer.py': 'from moe_flan import config\n',
          'moe_flan/trainer/__init__.py': '', 'moe_flan/trainer/checkpoints.py': '',
          'moe_flan/trainer/builder.py': '', 'moe_flan/trainer/evaluation.py': '',
          'moe_flan/partitioning/__init__.py': '', 'moe_flan/model/losses.py': '',
          'tasks/__init__.py': '', 'tasks/vocab.py': ''}
  for rel, text in base.items():
    _write(root, rel, text)
  assert violations(root) == []
  for rel, text in files.items():
    _write(root, rel, text)
  assert any(p.startswith(expected) for p in violations(root)), violations(root)
