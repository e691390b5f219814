"""The entry points as a new user meets them, in subprocesses (stderr as a user sees it, without
the test suite's TF_CPP_MIN_LOG_LEVEL / CUDA_VISIBLE_DEVICES): typos and missing files give one
`error:` line and exit 2; a successful evaluate run prints what it evaluated and no error lines,
no TensorFlow device start-up lines and no orbax metadata warnings, and warns about truncation."""
import logging
import os
import re
import subprocess
import sys

import gin
import pytest

from moe_flan.trainer import cli, data as data_lib
from t5_fixtures import TINY_GIN_MODEL, write_step0_model_dir
from conftest import FAST_COMPILE_ENV

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = TINY_GIN_MODEL
# Lines that must never reach a user's terminal on a successful CPU run.
NOISE = re.compile(r'cuInit|cuda|Path not found|Metadata file does not exist|Traceback|^E\d{4}|'
                   r'^ERROR', re.MULTILINE | re.IGNORECASE)


def _run(module, *args, cwd=REPO):
  env = {k: v for k, v in os.environ.items()
         if k not in ('TF_CPP_MIN_LOG_LEVEL', 'CUDA_VISIBLE_DEVICES')}
  env['PYTHONPATH'] = REPO
  env.update(FAST_COMPILE_ENV)   # compiles faster (one device); prints nothing
  return subprocess.run([sys.executable, '-m', module, *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=600)


def test_misspelled_macro_is_one_error_line_naming_the_closest_macro(tmp_path):
  # Run from outside the repository: the search-path form finds the run file and its includes.
  proc = _run('moe_flan.train', '--gin_file=runs/quickstart.gin',
              f"--gin.MODEL_DIR='{tmp_path}'", '--gin.TRAIN_STEP=20', cwd=str(tmp_path))
  assert proc.returncode == 2, proc.stderr
  # One line: TensorFlow started (the gin files import the tasks) without a word about devices.
  assert proc.stderr.splitlines() == [
      'moe_flan.train: error: --gin.TRAIN_STEP: no binding uses the macro TRAIN_STEP (closest '
      'macros in use: TRAIN_STEPS). A macro takes effect only where a gin file refers to it as '
      '%NAME.'], proc.stderr
  assert not os.listdir(tmp_path)     # nothing was built


def test_missing_gin_file_is_one_error_line_with_the_search_paths(tmp_path):
  proc = _run('moe_flan.train', '--gin_file=gin/runs/quickstrat.gin', cwd=str(tmp_path))
  assert proc.returncode == 2
  assert proc.stderr.splitlines() == [
      f'moe_flan.train: error: --gin_file=gin/runs/quickstrat.gin: no such file relative to '
      f'{tmp_path} or under the gin search paths {os.path.join(REPO, "gin")}; did you mean '
      'runs/quickstart.gin?'], proc.stderr


@pytest.fixture(scope='module')
def step0_model_dir(tmp_path_factory):
  """A MODEL_DIR whose only checkpoint is the initial state (step 0: nothing to compile)."""
  model_dir = str(tmp_path_factory.mktemp('cli_run'))
  write_step0_model_dir(model_dir)
  return model_dir


def test_evaluate_says_what_it_evaluated_and_nothing_alarming(step0_model_dir, tmp_path):
  out = str(tmp_path / 'eval')
  proc = _run('moe_flan.evaluate', '--gin_file=models/flan_moe_tiny.gin',
              '--gin_file=runs/eval.gin', *[f'--gin.{b.replace(" ", "")}' for b in TINY],
              f"--gin.MODEL_DIR='{step0_model_dir}'", "--gin.MIXTURE_OR_TASK_NAME='emb_nli'",
              "--gin.TASK_FEATURE_LENGTHS={'inputs':128,'targets':2}", '--gin.BATCH_SIZE=4',
              '--gin.NUM_EXAMPLES=4', f"--gin.EVAL_OUTPUT_DIR='{out}'")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert not NOISE.search(proc.stderr), proc.stderr
  step_dir = os.path.join(step0_model_dir, 'checkpoints', '0')
  lines = proc.stdout.splitlines()
  assert lines[0] == (f"moe_flan.evaluate: checkpoint step 0 ({step_dir}) on 'emb_nli' "
                      "(split 'validation')")
  # The results table: one row for the task with its 4 examples, then category and overall.
  assert lines[1] == '| task | category | n | exact_match |'
  assert re.fullmatch(r'\| emb_nli \| embedded/classification \| 4 \| \d+\.\d ± \d+\.\d \|',
                      lines[3]), lines
  assert os.path.isfile(os.path.join(out, 'results.json'))
  # The truncation check ran on the evaluated examples (the split's first 4, in order) and
  # warned (2 target tokens cut answers), with the fraction an independent count gives.
  import tasks  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  from tasks import registry, vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  vocab = vocab_lib.default_vocabulary()
  first = registry.get('emb_nli').get_dataset(sequence_length=None, split='validation',
                                              shuffle=False, num_epochs=1).take(4)
  cut = sum(len(vocab.encode(ex['targets_pretokenized'].decode())) + 1 > 2
            for ex in first.as_numpy_iterator())
  assert cut > 0
  assert re.search(r"TASK_FEATURE_LENGTHS=\{'inputs': 128, 'targets': 2\} cut more than 1% of the "
                   r"first examples of emb_nli \(validation split\): .*emb_nli targets "
                   + re.escape(f'{100 * cut / 4:.1f}%'), proc.stderr), proc.stderr


def test_truncation_fractions_match_the_tokenized_text(caplog):
  """The measured fractions equal an independent count over the same examples' text: tokens +
  EOS longer than the feature length."""
  import tasks  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  from tasks import registry, vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  cfg = data_lib.DataConfig('emb_nli', {'inputs': 40, 'targets': 3}, batch_size=4,
                            truncation_check_examples=24)
  with caplog.at_level(logging.INFO):
    got = data_lib.report_truncation(cfg)
  task = registry.get('emb_nli')
  vocab = vocab_lib.default_vocabulary()
  ds = task.get_dataset(sequence_length={'inputs': 40, 'targets': 3}, split='train', shuffle=True,
                        seed=0, num_epochs=1, trim_output_features=False)
  texts = [(ex['inputs_pretokenized'].decode(), ex['targets_pretokenized'].decode())
           for ex in ds.take(24).as_numpy_iterator()]
  want = {k: sum(len(vocab.encode(t[i])) + 1 > n for t in texts) / 24
          for i, (k, n) in enumerate((('inputs', 40), ('targets', 3)))}
  assert got == {'emb_nli': {**want, 'examples': 24}}
  assert 0 < want['inputs'] < 1 and 0 < want['targets'] < 1    # the case is not degenerate
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1 and (f'emb_nli inputs {100 * want["inputs"]:.1f}%, emb_nli targets '
                                 f'{100 * want["targets"]:.1f}%') in warnings[0]
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    roomy = data_lib.report_truncation(
        data_lib.DataConfig('emb_nli', {'inputs': 512, 'targets': 64}, truncation_check_examples=24))
  assert roomy == {'emb_nli': {'inputs': 0.0, 'targets': 0.0, 'examples': 24}}
  assert not caplog.records


@pytest.mark.parametrize('kind', ['ragged', 'dense', 'dense_2d_extra', 'ragged_with_dense_extra'])
def test_first_lengths_read_in_one_batch_equal_a_count_example_by_example(kind):
  """Ragged features (embedded tasks) are read as one batch, dense ones as one batch padded
  with -1, and element types that allow neither one by one: the lengths are the same. Token id
  0 (padding in T5 vocabularies) inside an example counts as a token."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rows = {'inputs': [[5, 0, 7], [3], [], [0, 0, 9, 9, 9, 1], [2, 2]],
          'targets': [[1], [4, 4, 4, 4], [6, 1], [0], [8, 8, 8]]}
  features = {k: tf.ragged.constant(v, tf.int32) for k, v in rows.items()}
  if kind == 'ragged':
    features['template_id'] = tf.range(5)         # a fixed-shape extra batches as it is
    ds = tf.data.Dataset.from_tensor_slices(features)
  else:
    def gen():
      for i in range(5):
        ex = {k: tf.constant(v[i], tf.int64) for k, v in rows.items()}
        if kind == 'dense_2d_extra':
          ex['options'] = tf.fill([i, 2], 'o')    # padded_batch pads it too
        yield ex
    spec = {k: tf.TensorSpec([None], tf.int64) for k in rows}
    if kind == 'dense_2d_extra':
      spec['options'] = tf.TensorSpec([None, 2], tf.string)
    ds = tf.data.Dataset.from_generator(gen, output_signature=spec)
    if kind == 'ragged_with_dense_extra':   # neither batch nor padded_batch takes both
      extra = tf.data.Dataset.from_generator(lambda: (tf.zeros([i]) for i in range(5)),
                                             output_signature=tf.TensorSpec([None], tf.float32))
      ragged = tf.data.Dataset.from_tensor_slices(features['inputs'])
      ds = tf.data.Dataset.zip({'inputs': ragged, 'targets': ds.map(lambda ex: ex['targets']),
                                'extra': extra})
  for n in (3, 5, 9):
    want = {k: [len(v) for v in rows[k][:n]] for k in rows}
    got = data_lib.first_lengths(ds, ('inputs', 'targets'), n)
    assert {k: v.tolist() for k, v in got.items()} == want, (kind, n)
  empty = data_lib.first_lengths(ds.take(0), ('inputs', 'targets'), 4)
  assert {k: v.tolist() for k, v in empty.items()} == {'inputs': [], 'targets': []}


def test_a_macro_counts_as_used_wherever_a_binding_refers_to_it():
  """References inside dicts and lists count; an unreferenced command-line macro is named with
  the closest macros in use; gin files' own unused macros are not the user's typo."""
  files = ('runs/quickstart.gin',)
  try:
    cli.configure_gin(cli.Flags(files, ("MODEL_DIR = '/m'", 'INPUTS_LEN = 77',
                                        "TASK_FEATURE_LENGTHS = {'inputs': %INPUTS_LEN, "
                                        "'targets': 8}", 'GROUPS = ["router"]',
                                        'FROZEN_GROUPS = %GROUPS'), ()))
    assert gin.query_parameter('INPUTS_LEN/macro.value') == 77
    with pytest.raises(ValueError, match=r'^--gin.BATCH_SIZ: no binding uses the macro BATCH_SIZ '
                                         r'\(closest macros in use: BATCH_SIZE\)'):
      cli.configure_gin(cli.Flags(files, ("MODEL_DIR = '/m'", 'BATCH_SIZ = 4'), ()))
  finally:
    gin.clear_config()


def test_missing_include_is_a_one_line_error(tmp_path):
  run_file = tmp_path / 'run.gin'
  run_file.write_text("include 'runs/no_such_include.gin'\n")
  with pytest.raises(ValueError) as err:
    cli.configure_gin(cli.Flags((str(run_file),), (), ()))
  msg = str(err.value)
  assert '\n' not in msg and msg.startswith('Unable to open file: runs/no_such_include.gin')
  assert os.path.join(REPO, 'gin') in msg and f'In file "{run_file}", line 1' in msg


def test_includes_come_from_the_gin_directory_whatever_the_working_directory(tmp_path,
                                                                              monkeypatch):
  """A `runs/` folder in the working directory (here with a decoy _train_common.gin) neither
  breaks `include 'runs/_train_common.gin'` nor replaces the project's file; a run file given
  as a path relative to the working directory is still read from there."""
  (tmp_path / 'runs').mkdir()
  (tmp_path / 'runs' / '_train_common.gin').write_text('TRAIN_STEPS = 12345\n')
  (tmp_path / 'mine.gin').write_text("include 'runs/quickstart.gin'\nBATCH_SIZE = 6\n")
  monkeypatch.chdir(tmp_path)
  try:
    cli.configure_gin(cli.Flags(('runs/quickstart.gin',), ("MODEL_DIR = '/m'",), ()))
    assert gin.query_parameter('TRAIN_STEPS/macro.value') != 12345
    cli.configure_gin(cli.Flags(('mine.gin',), ("MODEL_DIR = '/m'",), ()))
    assert gin.query_parameter('BATCH_SIZE/macro.value') == 6
  finally:
    gin.clear_config()


def _snapshot(path):
  if os.path.isdir(path):
    return sorted(os.listdir(path))
  if os.path.isfile(path):
    with open(path, 'rb') as f:
      return f.read()
  return None


def _flags(bindings):
  return [f'--gin.{b.replace(" ", "")}' for b in bindings]


def test_a_binding_the_run_never_uses_fails_train_evaluate_and_infer(step0_model_dir):
  """A correctly spelled binding of a configurable this entry point never calls (another entry
  point's, or in a scope no call enters) is named once the run is built; gin's own check only
  catches misspelled names."""
  from moe_flan import evaluate, infer, train  # pylint: disable=g-import-not-at-top
  model = ['--gin_file=models/flan_moe_tiny.gin'] + _flags(TINY)
  here = f"--gin.MODEL_DIR='{step0_model_dir}'"
  runs = {
      # Resumes at step 0 of 0: checked after set-up, before the end-of-run evaluation.
      train: ['--gin_file=runs/quickstart.gin', *_flags(TINY), here, '--gin.TRAIN_STEPS=0',
              "--gin.MIXTURE_OR_TASK_NAME='emb_nli'", '--gin.RunConfig.write_plots=False',
              '--gin.DataConfig.truncation_check_examples=0', '--gin.InferConfig.num_beams=4',
              '--gin.eval/DataConfig.batch_size=4'],
      evaluate: [*model, '--gin_file=runs/eval.gin', here, "--gin.MIXTURE_OR_TASK_NAME='emb_nli'",
                 "--gin.TASK_FEATURE_LENGTHS={'inputs':32,'targets':4}", '--gin.NUM_EXAMPLES=4',
                 '--gin.BATCH_SIZE=4', '--gin.InferConfig.num_beams=4',
                 '--gin.eval/DataConfig.batch_size=4'],
      infer: [*model, '--gin_file=runs/infer.gin', here, '--gin.InferConfig.max_decode_length=2',
              '--gin.RunConfig.train_steps=5', '--gin.eval/DataConfig.batch_size=4'],
  }
  # What each run would have written after its check: it stopped before that.
  outputs = {train: 'metrics/final_eval_flan_embedded.jsonl', evaluate: 'eval/emb_nli',
             infer: 'inference.jsonl'}
  try:
    for module, argv in runs.items():
      unused = ('RunConfig.train_steps' if module is infer else 'InferConfig.num_beams') + (
          ', eval/DataConfig.batch_size')
      prog = module.__name__
      before = _snapshot(os.path.join(step0_model_dir, outputs[module]))
      with pytest.raises(ValueError, match=rf'^{prog} never used the gin binding\(s\) {unused}: '):
        module.main(argv)
      assert _snapshot(os.path.join(step0_model_dir, outputs[module])) == before, prog
  finally:
    gin.clear_config()
