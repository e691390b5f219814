"""notebooks/flan_moe_quickstart.ipynb runs headlessly (nbclient) at small sizes and shows what it
promises: rendered FLAN examples, a falling loss, the loss and expert-load figures, zero-shot
held-out results and predictions that agree with the files the evaluation wrote."""
import ast
import json
import os
import pathlib

import nbclient
import nbformat
import pytest

from conftest import FAST_COMPILE_ENV

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, 'notebooks', 'flan_moe_quickstart.ipynb')
EVAL_EXAMPLES = 2
HELDOUT_SCORING_TASKS = 10     # flan_embedded_heldout_scoring


def _read():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  return nb


def test_the_committed_notebook_is_clean_and_installs_itself_first():
  nb = _read()
  code = [c for c in nb.cells if c.cell_type == 'code']
  assert all(not c.outputs and c.execution_count is None for c in code), 'strip the outputs'
  assert "'-e', str(clone)" in code[0].source and 'find_spec' in code[0].source
  assert any('parameters' in c.metadata.get('tags', ()) for c in code)


def test_the_install_cell_finds_the_clone_at_above_or_below_the_working_directory(tmp_path):
  source = _read().cells[1].source
  (fn,) = [n for n in ast.parse(source).body
           if isinstance(n, ast.FunctionDef) and n.name == 'find_clone']
  namespace = {'pathlib': pathlib}
  exec(compile(ast.Module([fn], []), 'cell', 'exec'), namespace)   # the function alone
  find_clone = lambda d: namespace['find_clone'](pathlib.Path(d))
  clone = tmp_path / 'moe_flan_clone'
  (clone / 'moe_flan').mkdir(parents=True)
  (clone / 'notebooks').mkdir()
  (clone / 'setup.py').write_text('')
  (clone / 'moe_flan' / '__init__.py').write_text('')
  for start in (clone / 'notebooks', clone, tmp_path):   # Colab: /content above the clone
    assert find_clone(start) == clone, start
  (tmp_path / 'elsewhere').mkdir()
  assert find_clone(tmp_path / 'elsewhere') is None


def _outputs(nb, output_type=None):
  for i, cell in enumerate(nb.cells):
    for out in cell.get('outputs', ()):
      if output_type is None or out.output_type == output_type:
        yield i, out


def test_the_quickstart_notebook_runs_and_shows_its_results(tmp_path, monkeypatch):
  model_dir = tmp_path / 'run'
  for name, value in (('TRAIN_STEPS', 12), ('BATCH_SIZE', 8), ('LOG_PERIOD', 2),
                      ('EVAL_EXAMPLES', EVAL_EXAMPLES), ('MODEL_DIR', model_dir)):
    monkeypatch.setenv(f'QUICKSTART_{name}', str(value))
  # The kernel runs on one CPU device (the tests' 8 simulated devices only slow it down) and
  # compiles as the suite does: FAST_COMPILE_ENV's XLA_FLAGS name no device count (conftest).
  for name, value in FAST_COMPILE_ENV.items():
    monkeypatch.setenv(name, value)
  monkeypatch.setenv('PYTHONPATH', os.pathsep.join(
      p for p in (REPO, os.environ.get('PYTHONPATH')) if p))
  nb = _read()
  nbclient.NotebookClient(nb, timeout=600, kernel_name='python3',
                          resources={'metadata': {'path': os.path.dirname(NOTEBOOK)}}).execute()
  assert not list(_outputs(nb, 'error'))
  text = '\n'.join(out.get('text', '') for _, out in _outputs(nb, 'stream'))

  # Rendered examples of the three formats.
  for title in ('=== zero-shot:', '=== few-shot:', '=== chain-of-thought:'):
    assert title in text
  assert "Let's think step by step" in text and 'OPTIONS:' in text

  # Training ran the steps asked for, and the loss fell.
  with open(model_dir / 'metrics' / 'train.jsonl') as f:
    records = [json.loads(line) for line in f]
  assert [r['step'] for r in records] == list(range(2, 13, 2))
  assert records[-1]['loss'] < records[0]['loss'] - 0.3, [r['loss'] for r in records]
  assert f'trained 12 steps; loss {records[0]["loss"]:.3f}' in text

  # The loss curve and the expert-load heatmap.
  images = [i for i, out in _outputs(nb, 'display_data') if 'image/png' in out.get('data', {})]
  assert len(images) == 2 and images[0] < images[1]
  assert 'encoder/layers_1:' in text and 'decoder/layers_1:' in text

  # Zero-shot held-out results and the predictions shown come from the evaluation's files.
  eval_dir = model_dir / 'eval' / 'heldout_zero_shot'
  with open(eval_dir / 'results.json') as f:
    results = json.load(f)
  accuracy = results['overall']['macro']['accuracy']
  assert accuracy['n'] == EVAL_EXAMPLES * HELDOUT_SCORING_TASKS
  assert f"{accuracy['value']:.1f}% ± {accuracy['stderr']:.1f} (n={accuracy['n']})" in text
  (table,) = [out['data']['text/markdown'] for _, out in _outputs(nb, 'display_data')
              if 'text/markdown' in out.get('data', {})]
  rows = [r for r in table.splitlines()[2:] if r.startswith('| ')]
  assert len(rows) == 8
  task = rows[0].split(' | ')[0][2:]
  with open(eval_dir / 'predictions' / f'{task}.jsonl') as f:
    first = json.loads(f.readline())
  assert rows[0].split(' | ')[2:4] == [first['prediction'], first['target']]
