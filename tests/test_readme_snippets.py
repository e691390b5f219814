"""Every ```python block of the README runs as written (a user copies them verbatim)."""
import os
import re

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_BLOCK = re.compile(r'^```python\n(.*?)^```', re.S | re.M)


def python_blocks(markdown: str) -> list[str]:
  return _BLOCK.findall(markdown)


with open(os.path.join(REPO, 'README.md')) as f:
  _BLOCKS = python_blocks(f.read())


def test_blocks_are_found():
  assert len(_BLOCKS) >= 1
  assert python_blocks('text\n```python\nx = 1\n```\n```bash\nls\n```\n') == ['x = 1\n']


QUICKSTART_DIR = '/tmp/moe_flan_quickstart'


@pytest.fixture(scope='module')
def tiny_model_dir(tmp_path_factory):
  from test_loading import write_model_dir  # pylint: disable=g-import-not-at-top
  directory = str(tmp_path_factory.mktemp('quickstart'))
  write_model_dir(directory)
  return directory


@pytest.mark.parametrize('index', range(len(_BLOCKS)))
def test_readme_python_block_runs(index, capsys, request):
  namespace = {'__name__': f'readme_block_{index}'}
  source = _BLOCKS[index]
  if QUICKSTART_DIR in source:   # a tiny trained MODEL_DIR stands in for the quickstart's
    source = source.replace(QUICKSTART_DIR, request.getfixturevalue('tiny_model_dir'))
  code = compile(source, f'README.md python block {index}', 'exec')
  exec(code, namespace)  # pylint: disable=exec-used
  if 'layer' in namespace:   # the MoE-layer block: output shaped like the input, metrics sown
    assert namespace['y'].shape == namespace['x'].shape
    lb = float(namespace['metrics']['load_balancing_loss'])
    assert 0.5 < lb < 2.0 and np.isfinite(lb)   # fresh router: near 1 (balanced), not E
    assert capsys.readouterr().out.startswith('(2, 16, 128) ')
  if 'vocabulary' in namespace:   # the loading block: the model decoded a prompt into text
    assert namespace['config'].vocab_size >= namespace['vocabulary'].vocab_size
    assert namespace['out'].shape[0] == 1 and capsys.readouterr().out.endswith('\n')
