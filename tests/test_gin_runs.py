"""Every gin run file parses, finalizes and runs (one train step, or eval/infer) at tiny size;
bad gin input fails before anything is built, naming the culprit. Each run is watched as its
entry point watches it: no binding of the run files (with their documented models) goes unused."""
import glob
import json
import os

import gin
import pytest

from moe_flan.trainer import builder, checkpoint_eval, cli, gin_checks, inference, loop
from t5_fixtures import TINY_GIN_MODEL

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = os.path.join(REPO, 'gin', 'runs')
MODEL = os.path.join(REPO, 'gin', 'models', 'flan_moe_tiny.gin')
# Shrinks any run file's model and data to test size (8 simulated devices: batch 8).
TINY = TINY_GIN_MODEL + ["TASK_FEATURE_LENGTHS = {'inputs': 32, 'targets': 8}", 'BATCH_SIZE = 8']
NO_TRUNCATION_CHECK = 'DataConfig.truncation_check_examples = 0'
NO_PLOTS = 'RunConfig.write_plots = False'
TRAIN_RUNS = {'quickstart.gin': [], 'instruction_tune.gin': [MODEL], 'pretrain.gin': [MODEL],
              'finetune.gin': [MODEL]}


pytestmark = pytest.mark.usefixtures('persistent_compilation_cache')


@pytest.fixture(scope='module', autouse=True)
def _clear_gin():
  yield
  gin.clear_config()


def _configure(files, bindings):
  cli.configure_gin(cli.Flags(tuple(files), tuple(bindings), ()))


def _watched(run, bindings):
  """run() checked for unused gin bindings as `python -m moe_flan.train / evaluate / infer`
  checks it (with `bindings` as the command line's)."""
  with gin_checks.watch_bindings('test', bindings) as watch:
    result = run()
    assert watch.built_checked
    watch.check_all()
  return result


def test_every_run_file_is_covered_and_documented():
  names = {os.path.basename(p) for p in glob.glob(os.path.join(RUNS, '*.gin'))
           if not os.path.basename(p).startswith('_')}
  # distill.gin needs a teacher checkpoint: tests/test_trainer_distill.py runs it.
  assert names == set(TRAIN_RUNS) | {'eval.gin', 'infer.gin', 'distill.gin'}
  for name in names:
    with open(os.path.join(RUNS, name)) as f:
      text = f.read()
    assert 'python -m moe_flan.' in text.split('\n\n')[0] + text[:600], name
    assert 'Required to be set:' in text and '- MODEL_DIR' in text, name


@pytest.fixture(scope='module')
def trained_dirs(tmp_path_factory):
  dirs = {}
  for name, models in TRAIN_RUNS.items():
    model_dir = str(tmp_path_factory.mktemp(name.split('.')[0]))
    # The start-up truncation check reads every task of the mixture (seconds for the 45 of the
    # embedded one): the quickstart keeps it; test_trainer_cli tests what it measures.
    # instruction_tune.gin trains on four of the embedded FLAN tasks: the quickstart already
    # builds the input pipelines of all 45 here (a run's longest part at this size).
    # The quickstart draws its figures as a user's run does; the other run files' figures are
    # the same code (test_trainer_metrics checks them) and would only add seconds.
    extra = {'finetune.gin': ["MIXTURE_OR_TASK_NAME = 'emb_nli'", NO_TRUNCATION_CHECK, NO_PLOTS],
             'instruction_tune.gin': ["MIXTURE_OR_TASK_NAME = 'flan_embedded_n4'",
                                      NO_TRUNCATION_CHECK, NO_PLOTS],
             'pretrain.gin': [NO_TRUNCATION_CHECK, NO_PLOTS],
             'quickstart.gin': ['FINAL_EVAL_BATCHES = 1']}[name]
    bindings = TINY + extra + [f"MODEL_DIR = '{model_dir}'", 'TRAIN_STEPS = 1', 'LOG_PERIOD = 1']
    _configure(models + [os.path.join(RUNS, name)], bindings)
    result = _watched(loop.train, bindings)
    dirs[name] = (model_dir, result)
  return dirs


@pytest.mark.parametrize('name', sorted(TRAIN_RUNS))
def test_train_run_file_runs_one_step(trained_dirs, name):
  model_dir, result = trained_dirs[name]
  assert result.step == 1
  with open(os.path.join(model_dir, 'metrics', 'train.jsonl')) as f:
    record = json.loads(f.readline())
  assert record['step'] == 1 and record['loss'] > 0
  assert os.path.isdir(os.path.join(model_dir, 'checkpoints', '1'))


def test_quickstart_ends_with_its_final_evaluation(trained_dirs):
  model_dir = trained_dirs['quickstart.gin'][0]
  for figure in ('loss_curves.png', 'expert_utilisation.png'):   # and draws its figures
    with open(os.path.join(model_dir, figure), 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n', figure
  for mixture in ('flan_embedded', 'flan_embedded_heldout'):
    with open(os.path.join(model_dir, 'metrics', f'final_eval_{mixture}.jsonl')) as f:
      (record,) = [json.loads(line) for line in f]
    assert record['step'] == 1 and record['num_tokens'] > 0
    assert record['cross_entropy'] > 0 and 0 <= record['accuracy'] <= 1


def test_eval_and_infer_run_files(trained_dirs, tmp_path):
  model_dir = trained_dirs['quickstart.gin'][0]
  out = str(tmp_path / 'eval')
  bindings = TINY + [f"MODEL_DIR = '{model_dir}'", 'NUM_EXAMPLES = 4', f"EVAL_OUTPUT_DIR = '{out}'",
                     "MIXTURE_OR_TASK_NAME = 'emb_nli_scoring'",
                     # Whole prompts, so their option blocks survive for rank classification.
                     "TASK_FEATURE_LENGTHS = {'inputs': 128, 'targets': 8}"]
  _configure([MODEL, os.path.join(RUNS, 'eval.gin')], bindings)
  results = _watched(checkpoint_eval.evaluate, bindings)
  accuracy = results['tasks']['emb_nli_scoring']['metrics']['accuracy']
  assert 0 <= accuracy['value'] <= 100 and accuracy['n'] == 4
  assert results['checkpoint_step'] == 1
  with open(os.path.join(out, 'results.json')) as f:
    assert json.load(f)['tasks'].keys() == {'emb_nli_scoring'}
  with open(os.path.join(out, 'predictions', 'emb_nli_scoring.jsonl')) as f:
    assert len(f.readlines()) == 4
  bindings = TINY_GIN_MODEL + [f"MODEL_DIR = '{model_dir}'", 'InferConfig.max_decode_length = 4',
                               'InferConfig.input_length = 32']
  _configure([MODEL, os.path.join(RUNS, 'infer.gin')], bindings)   # infer.gin: no data macros
  rows = _watched(inference.infer, bindings)
  assert [r['input'] for r in rows] == ['Write the number 12 in words.', 'What is 3 plus 4?']
  with open(os.path.join(model_dir, 'inference.jsonl')) as f:
    assert len(f.readlines()) == 2


@pytest.mark.parametrize('bindings,match', [
    (["MODEL_DIR = '/tmp/x'", 'T5Config.no_such_field = 3'], 'no_such_field'),
    (["MODEL_DIR = '/tmp/x'", 'no_such_function.x = 3'], 'no_such_function'),
    ([], 'Required to be set: MODEL_DIR'),
])
def test_bad_gin_fails_while_parsing(bindings, match):
  with pytest.raises(ValueError, match=match):
    _configure([os.path.join(RUNS, 'quickstart.gin')], bindings)


def test_finetune_requires_its_task():
  with pytest.raises(ValueError, match='Required to be set: MIXTURE_OR_TASK_NAME, MODEL_DIR'):
    _configure([MODEL, os.path.join(RUNS, 'finetune.gin')], [])


def test_unknown_task_fails_before_building(tmp_path, monkeypatch):
  monkeypatch.setattr(builder.model_setup_lib, 'build_model_setup',
                      lambda *a, **k: pytest.fail('model was built'))
  _configure([os.path.join(RUNS, 'quickstart.gin')],
             [f"MODEL_DIR = '{tmp_path}'", "MIXTURE_OR_TASK_NAME = 'flan_embeded'"])
  with pytest.raises(ValueError, match="MIXTURE_OR_TASK_NAME='flan_embeded' is not a registered.*'flan_embedded'"):
    loop.train()


def test_flags():
  flags = cli.parse_flags(['--gin_file=a.gin,b.gin', '--gin_file=c.gin', "--gin.MODEL_DIR='/m'",
                           '--gin.TRAIN_STEPS=5', '--gin_search_paths=/p', '--num_processes=1'])
  assert flags.gin_files == ('a.gin', 'b.gin', 'c.gin')
  assert flags.gin_bindings == ("MODEL_DIR = '/m'", 'TRAIN_STEPS = 5')
  assert flags.gin_search_paths == ('/p',) and flags.num_processes == 1
  with pytest.raises(SystemExit):
    cli.parse_flags(["--gin.MODEL_DIR='/m'"])            # no --gin_file
  with pytest.raises(SystemExit):
    cli.parse_flags(['--gin_file=a.gin', '--bogus=1'])


def test_every_command_reads_gin_flags_alike(capsys):
  """Train/evaluate/infer, moe_flan.aot and moe_flan.convert share one gin flag parser."""
  # pylint: disable=g-import-not-at-top
  from moe_flan.aot import cli as aot_cli
  from moe_flan.convert import cli as convert_cli
  argv = ['--gin_file=a.gin,b.gin', "--gin.MODEL_DIR='/m'", '--gin_bindings=X = 1', '--gin.Y=2']
  aot = ['--topology=v5e:2x2']
  convert = ['--from', 'hf', '--src', 's', '--out', 'o']
  flags = cli.parse_flags(argv)
  aot_args, aot_bindings = aot_cli.parse_args(argv + aot)
  convert_args = convert_cli.parse_args(argv + convert)
  want = ('X = 1', "MODEL_DIR = '/m'", 'Y = 2')
  assert flags.gin_bindings == tuple(aot_bindings) == tuple(convert_args.gin_bindings) == want
  assert flags.gin_files == tuple(convert_args.gin_file) == cli.split_commas(aot_args.gin_file)
  for parse, extra in ((cli.parse_flags, []), (aot_cli.parse_args, aot),
                       (convert_cli.parse_args, convert)):
    with pytest.raises(SystemExit):
      parse(['--gin_file=a.gin', '--gin.MODEL_DIR'] + extra)
    assert '--gin.MODEL_DIR: expected --gin.NAME=VALUE' in capsys.readouterr().err
