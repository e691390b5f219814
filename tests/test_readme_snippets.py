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


@pytest.mark.parametrize('index', range(len(_BLOCKS)))
def test_readme_python_block_runs(index, capsys):
  namespace = {'__name__': f'readme_block_{index}'}
  code = compile(_BLOCKS[index], f'README.md python block {index}', 'exec')
  exec(code, namespace)  # pylint: disable=exec-used
  if 'layer' in namespace:   # the MoE-layer block: output shaped like the input, metrics sown
    assert namespace['y'].shape == namespace['x'].shape
    lb = float(namespace['metrics']['load_balancing_loss'])
    assert 0.5 < lb < 2.0 and np.isfinite(lb)   # fresh router: near 1 (balanced), not E
    assert capsys.readouterr().out.startswith('(2, 16, 128) ')
