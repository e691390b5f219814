"""Sizes that fit in a head: every Python module of the project is at most MAX_MODULE_LINES
lines and every function (methods and nested functions included) at most MAX_FUNCTION_LINES,
counted from its `def` line (decorators excluded) to its last line."""
import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDERS = ('moe_flan', 'tasks', 'benchmarks', 'launch', 'tests')
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60


def oversized(root: str) -> list[str]:
  """One line per module or function over its limit, under `root`'s FOLDERS."""
  out = []
  for folder in FOLDERS:
    for dirpath, _, files in os.walk(os.path.join(root, folder)):
      for name in sorted(files):
        if not name.endswith('.py'):
          continue
        path = os.path.join(dirpath, name)
        rel = os.path.relpath(path, root)
        with open(path) as f:
          text = f.read()
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
          out.append(f'{rel}: {lines} lines (at most {MAX_MODULE_LINES})')
        for node in ast.walk(ast.parse(text, rel)):
          if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
              out.append(f'{rel}:{node.lineno} {node.name}: {length} lines '
                         f'(at most {MAX_FUNCTION_LINES})')
  return out


def test_modules_and_functions_stay_small():
  found = oversized(REPO)
  assert not found, 'split these:\n  ' + '\n  '.join(found)


def test_the_check_counts_modules_and_nested_functions(tmp_path):
  body = ''.join(f'    x{i} = {i}\n' for i in range(MAX_FUNCTION_LINES - 1))
  nested = f'def outer():\n  def inner():\n{body}    return 0\n  return inner\n'
  (tmp_path / 'moe_flan').mkdir()
  (tmp_path / 'moe_flan' / 'ok.py').write_text('def f():\n  return 1\n' * 10)
  (tmp_path / 'moe_flan' / 'nested.py').write_text(nested)
  (tmp_path / 'moe_flan' / 'long.py').write_text('x = 1\n' * (MAX_MODULE_LINES + 1))
  assert oversized(str(tmp_path)) == [
      f'moe_flan/long.py: {MAX_MODULE_LINES + 1} lines (at most {MAX_MODULE_LINES})',
      f'moe_flan/nested.py:1 outer: {MAX_FUNCTION_LINES + 3} lines (at most {MAX_FUNCTION_LINES})',
      f'moe_flan/nested.py:2 inner: {MAX_FUNCTION_LINES + 1} lines (at most {MAX_FUNCTION_LINES})',
  ]
