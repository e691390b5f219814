"""The evaluation engine (seqio.Evaluator + our score / predict functions) on tiny benchmark
directories in their published layouts, with a tiny random T5: prompt-once scoring equals
per-option re-encoding, every record's log-likelihoods equal an independent `score_targets` of
the same texts, results.json agrees with the predictions, 8-device sharding changes nothing,
and bad input fails before any model work, naming the file, row or setting."""
import csv
import dataclasses
import json
import os

import flax.linen as nn
import gin
import jax
import numpy as np
import pytest

import benchmark_fixtures as bf
from moe_flan import decoding
from moe_flan.config import T5Config
from moe_flan.evaluation import engine as engine_lib
from moe_flan.evaluation import report, scoring
from moe_flan.model import EncoderDecoder
from moe_flan.partitioning import mesh as mesh_lib
from moe_flan.partitioning import partitioner as part_lib
from tasks import benchmarks, vocab

pytestmark = pytest.mark.usefixtures('persistent_compilation_cache')

CONFIG = T5Config(vocab_size=3072, emb_dim=16, num_heads=2, head_dim=8, num_encoder_layers=1,
                  num_decoder_layers=1, mlp_dim=32, dropout_rate=0.0)
LENGTHS = {'inputs': 512, 'targets': 8}


@pytest.fixture(scope='module')
def model_and_params():
  net = EncoderDecoder(CONFIG)
  ones = np.ones((2, 8), np.int32)
  params = jax.jit(lambda r: nn.unbox(net.init(r, ones, ones, ones)['params']))(
      jax.random.PRNGKey(1))
  return net, params


@pytest.fixture(scope='module')
def dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp('benchmarks')
  out = {'mmlu': bf.write_mmlu(str(root / 'mmlu')), 'bbh': bf.write_bbh(str(root / 'bbh')),
         'bigbench': bf.write_bigbench(str(root / 'bigbench'))}
  yield out
  gin.clear_config()


def _engine(dirs, name, split='test', lengths=None, batch_size=8, mmlu=None, options=None,
            **settings):
  gin.clear_config()
  gin.bind_parameter('tasks.benchmarks.register_benchmarks.mmlu_dir', mmlu or dirs['mmlu'])
  gin.bind_parameter('tasks.benchmarks.register_benchmarks.bbh_dir', dirs['bbh'])
  gin.bind_parameter('tasks.benchmarks.register_benchmarks.bigbench_dir', dirs['bigbench'])
  if options:
    gin.bind_parameter('tasks.mmlu.mmlu_settings.options', options)
  return engine_lib.Engine(engine_lib.EvalSettings(
      mixture_or_task_name=name, split=split, task_feature_lengths=lengths or LENGTHS,
      batch_size=batch_size, **settings))


def _ids(text):
  return list(vocab.default_vocabulary().encode(text)) + [1]


def _pad(rows, length):
  out = np.zeros((len(rows), length), np.int32)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out


def test_prompt_once_scoring_equals_per_option_reencoding(model_and_params):
  net, params = model_and_params
  rng = np.random.default_rng(0)
  prompts = rng.integers(2, 3000, (4, 12)).astype(np.int32)
  prompts[1, 7:] = 0                                     # a shorter prompt
  prompts[3] = 0                                         # a padding prompt
  prompt_index = np.array([0, 0, 0, 1, 1, 2, 2, 2], np.int32)
  targets = rng.integers(2, 3000, (8, 5)).astype(np.int32)
  targets[:, 3:] = 0
  targets[:, 2] = 1                                      # EOS
  targets[4, 1:] = 0
  ll, n = scoring.score_rows(net, params, prompts, prompt_index, targets)
  want = decoding.score_targets(net, params, {'encoder_input_tokens': prompts[prompt_index],
                                              'decoder_target_tokens': targets})
  np.testing.assert_allclose(np.asarray(ll), np.asarray(want), rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(n), (targets > 0).sum(1))


def test_pack_groups_keeps_questions_whole():
  groups = scoring.group_rows(np.array([[1], [1], [1], [2], [2], [3], [3], [3]]))
  assert groups == [(0, 3), (3, 2), (5, 3)]
  assert scoring.pack_groups(groups, 4) == [[(0, 3)], [(3, 2)], [(5, 3)]]
  assert scoring.pack_groups(groups, 5) == [[(0, 3)], [(3, 2), (5, 3)]][:1] + [[(3, 2)], [(5, 3)]] \
      if False else scoring.pack_groups(groups, 5) == [[(0, 3), (3, 2)], [(5, 3)]]
  assert scoring.pack_groups([(0, 7)], 3) == [[(0, 3)], [(3, 3)], [(6, 1)]]   # split if too big


@pytest.fixture(scope='module')
def mmlu_result(dirs, model_and_params):
  net, params = model_and_params
  engine = _engine(dirs, 'mmlu_5shot')
  return engine.evaluate(net, params, part_lib.create_partitioner((8, 1, 1)), step=7)


def test_mmlu_scores_equal_an_independent_computation(mmlu_result, model_and_params):
  net, params = model_and_params
  records = mmlu_result.records['mmlu_anatomy_5shot']
  assert len(records) == 3
  rows, options = [], []
  for r in records:
    assert r['options'] == ['A', 'B', 'C', 'D']
    assert r['input'].startswith('The following are multiple choice questions (with answers) '
                                 'about anatomy.\n\nWhich anatomy item is number 0?\nA. item 0')
    for o in r['options']:
      rows.append(_ids(r['input']))
      options.append(_ids(o))
  want = np.asarray(decoding.score_targets(net, params, {
      'encoder_input_tokens': _pad(rows, LENGTHS['inputs']),
      'decoder_target_tokens': _pad(options, LENGTHS['targets'])})).reshape(3, 4)
  got = np.array([r['log_likelihood'] for r in records])
  np.testing.assert_allclose(got, want, atol=1e-4)
  for r, w in zip(records, want):
    assert r['prediction'] == 'ABCD'[int(np.argmax(w))]
    assert r['correct'] == (r['prediction'] == r['target'])
    np.testing.assert_allclose(r['normalized_score'],
                               np.array(r['log_likelihood']) / np.array(r['num_target_tokens']))


def test_mmlu_results_agree_with_predictions(mmlu_result, tmp_path):
  results = report.build_results(mmlu_result.metrics, mmlu_result.records, benchmarks.category,
                                 mmlu_result.step, 'model', {'split': 'test'})
  report.write_all(str(tmp_path), results, mmlu_result.records)
  with open(tmp_path / 'results.json') as f:
    saved = json.load(f)
  assert saved['checkpoint_step'] == 7
  total_correct, total = 0, 0
  for subject in bf.MMLU_SUBJECTS:
    task = f'mmlu_{subject}_5shot'
    with open(tmp_path / 'predictions' / f'{task}.jsonl') as f:
      lines = [json.loads(l) for l in f]
    correct = sum(l['correct'] for l in lines)
    total_correct, total = total_correct + correct, total + len(lines)
    acc = saved['tasks'][task]['metrics']['accuracy']
    assert acc['value'] == pytest.approx(100 * correct / len(lines)) and acc['n'] == len(lines)
    assert saved['tasks'][task]['mean_shots'] == 5 and saved['tasks'][task]['counts'] == {
        'truncated': 0}
  assert saved['overall']['micro']['accuracy']['value'] == pytest.approx(
      100 * total_correct / total)
  assert set(saved['categories']) == {'mmlu/STEM', 'mmlu/humanities', 'mmlu/social sciences',
                                      'mmlu/other'}
  table = report.markdown_table(saved)
  assert '| mmlu_anatomy_5shot | mmlu/other | 3 |' in table


def test_sharded_evaluation_equals_one_device(dirs, model_and_params, mmlu_result):
  net, params = model_and_params
  single = part_lib.Partitioner(mesh_lib.make_mesh((1, 1, 1), devices=jax.devices()[:1]))
  one = _engine(dirs, 'mmlu_5shot').evaluate(net, params, single, step=7)
  assert one.metrics == mmlu_result.metrics
  for task, records in one.records.items():
    for a, b in zip(records, mmlu_result.records[task]):
      np.testing.assert_allclose(a['log_likelihood'], b['log_likelihood'], atol=1e-5)
      assert a['prediction'] == b['prediction']


def test_few_shot_prompts_drop_exemplars_to_fit(dirs, model_and_params):
  """A 96-token budget fits fewer than 5 exemplars; the question is always whole."""
  engine = _engine(dirs, 'mmlu_5shot', lengths={'inputs': 96, 'targets': 8})
  result = engine.evaluate(*model_and_params, part_lib.create_partitioner((8, 1, 1)))
  for task, records in result.records.items():
    subject = task[len('mmlu_'):-len('_5shot')]
    for i, r in enumerate(records):
      assert 0 <= r['num_shots'] < 5 and not r['truncated']
      assert len(_ids(r['input'])) <= 96
      question = bf.mmlu_rows(subject, 3, bf.MMLU_SUBJECTS.index(subject))[i][0]
      assert r['input'].endswith(question + '\nA. item %d\nB. thing %d\nC. piece %d\nD. part %d'
                                 '\nAnswer:' % (i, i + 1, i + 2, i + 3))
      assert r['input'].count('\nAnswer: ') == r['num_shots']


def test_bbh_direct_and_cot(dirs, model_and_params):
  net, params = model_and_params
  engine = _engine(dirs, 'bbh_3shot', lengths={'inputs': 256, 'targets': 8})
  result = engine.evaluate(net, params, part_lib.create_partitioner((8, 1, 1)))
  mc = result.records['bbh_largest_option_3shot']
  assert [r['options'] for r in mc] == [['(A)', '(B)', '(C)']] * 3
  assert mc[0]['input'].startswith('Answer questions about which option is the largest number.'
                                   '\n\nQ: Which is largest?\nOptions:\n(A) 3\n(B) 9\nA: (B)\n\n')
  assert 'accuracy' in result.metrics['bbh_largest_option_3shot']
  gen = result.records['bbh_multistep_arithmetic_two_3shot']
  assert 'exact_match' in result.metrics['bbh_multistep_arithmetic_two_3shot']
  assert gen[0]['input'].endswith('Q: 4 + 4 =\nA: 8\n\nQ: 1 + 2 =\nA:')
  engine = _engine(dirs, 'bbh_3shot_cot', lengths={'inputs': 256, 'targets': 8})
  result = engine.evaluate(net, params, part_lib.create_partitioner((8, 1, 1)))
  cot = result.records['bbh_largest_option_3shot_cot']
  assert cot[0]['input'].endswith("Q: Which is largest?\nOptions:\n(A) 1\n(B) 8\n(C) 3\n"
                                  "A: Let's think step by step.")
  m = result.metrics['bbh_largest_option_3shot_cot']
  # A random model never writes the answer phrase: all unparsable, all wrong.
  assert m['unparsable'] == sum(r['prediction'] is None for r in cot) and m['exact_match'] == (
      100.0 * sum(r['correct'] for r in cot) / 3)


def test_bigbench_multiple_choice_and_generative(dirs, model_and_params):
  result = _engine(dirs, 'bigbench_3shot').evaluate(*model_and_params,
                                                    part_lib.create_partitioner((8, 1, 1)))
  pick = result.records['bigbench_pick_3shot']
  assert [r['target'] for r in pick] == ['red', 'green', 'blue']
  assert pick[0]['options'] == ['red', 'green', 'blue'] and pick[0]['num_shots'] == 2
  assert 'Q: Pick the colour of grass.\nA: green' in pick[0]['input']
  assert {'exact_match', 'f1'} <= set(result.metrics['bigbench_echo_3shot'])


def _write(path, text):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.write(text)


@pytest.mark.parametrize('case,match', [
    ('columns', r'anatomy_test.csv: row 2 has 5 columns'),
    ('answer', r"anatomy_test.csv: row 1: answer 'E' is not one of A, B, C, D"),
    ('no_dev', r'MMLU 5-shot needs the dev split: .*anatomy_dev.csv'),
    ('bbh_no_examples', r'empty.json: no "examples" list'),
    ('empty_split', r"task 'mmlu_anatomy_5shot' split 'test': no examples"),
    ('no_options', r"example 0 has 1 options; rank classification needs at least 2"),
    ('no_split', r"task 'bbh_empty_3shot' has no split 'validation'"),
])
def test_bad_input_fails_before_model_work(tmp_path, dirs, case, match):
  mmlu = str(tmp_path / 'mmlu')
  name = 'mmlu_5shot'
  if case in ('columns', 'answer', 'no_dev', 'empty_split'):
    bf.write_mmlu(mmlu, subjects=('anatomy',), dev=case != 'no_dev')
    rows = {'columns': 'q,a,b,c,d,A\nq,a,b,c,B\n', 'answer': 'q,a,b,c,d,E\n',
            'no_dev': 'q,a,b,c,d,A\n', 'empty_split': ''}[case]
    _write(os.path.join(mmlu, 'test', 'anatomy_test.csv'), rows)
  bbh = dirs['bbh']
  if case in ('bbh_no_examples', 'no_split'):
    bbh = bf.write_bbh(str(tmp_path / 'bbh'))
    _write(os.path.join(bbh, 'bbh', 'empty.json'),
           '{"canary": "x"}' if case == 'bbh_no_examples' else
           '{"examples": [{"input": "1 + 1 =", "target": "2"}]}')
    _write(os.path.join(bbh, 'cot-prompts', 'empty.txt'), bf.BBH_ARITH_COT)
    name = 'bbh_3shot'
  if case == 'no_options':
    from tasks import eval_prompts  # pylint: disable=g-import-not-at-top
    eval_prompts.register('test_no_options', lambda split: [eval_prompts.Prompted(
        '', (), 'q', 'a', ('a',), 0)], ['test'], 'rank', fingerprint='test_no_options')
    name = 'test_no_options'
  gin.clear_config()
  gin.bind_parameter('tasks.benchmarks.register_benchmarks.mmlu_dir',
                     mmlu if os.path.isdir(mmlu) else dirs['mmlu'])
  gin.bind_parameter('tasks.benchmarks.register_benchmarks.bbh_dir', bbh)
  split = 'validation' if case == 'no_split' else 'test'
  with pytest.raises(ValueError, match=match):
    engine_lib.Engine(engine_lib.EvalSettings(mixture_or_task_name=name, split=split,
                                              task_feature_lengths=LENGTHS, batch_size=8))


def test_unregistered_benchmark_names_its_directory_macro():
  gin.clear_config()
  with pytest.raises(ValueError, match=r"'mmlu_7shot'.*set --gin.MMLU_DIR=... to register"):
    engine_lib.Engine(engine_lib.EvalSettings(mixture_or_task_name='mmlu_7shot'))


def test_eval_period_runs_the_same_engine_as_evaluate(dirs, tmp_path):
  """Training with eval_settings logs the engine's scores at each EVAL_PERIOD; they equal what
  `moe_flan.evaluate` (checkpoint_eval.evaluate) reports for the checkpoint of that step."""
  # pylint: disable=g-import-not-at-top
  from moe_flan.trainer import checkpoint_eval, checkpoints as ck, data as data_lib, loop
  from moe_flan.trainer import optimizers
  gin.clear_config()
  gin.bind_parameter('tasks.benchmarks.register_benchmarks.mmlu_dir', dirs['mmlu'])
  settings = engine_lib.EvalSettings(mixture_or_task_name='mmlu_0shot', split='test',
                                     task_feature_lengths={'inputs': 64, 'targets': 8},
                                     batch_size=8)
  model = T5Config(vocab_size=3072, emb_dim=16, num_heads=2, head_dim=8, num_encoder_layers=1,
                   num_decoder_layers=1, mlp_dim=16)
  model_dir = str(tmp_path / 'run')
  loop.train(model_dir, model, data_lib.DataConfig('emb_nli', {'inputs': 32, 'targets': 8},
                                                   batch_size=8, truncation_check_examples=0),
             loop.RunConfig(train_steps=2, log_period=1, eval_period=2, eval_steps=1,
                            write_plots=False),
             optimizers.OptimizerConfig(), ck.CheckpointConfig(period=2), eval_settings=settings)
  with open(os.path.join(model_dir, 'metrics', 'eval.jsonl')) as f:
    logged = json.loads(f.readline())
  with open(os.path.join(model_dir, 'eval', '2', 'results.json')) as f:
    during = json.load(f)
  after = checkpoint_eval.evaluate(model_dir, model, settings=settings,
                                   output_dir=str(tmp_path / 'after'))
  assert during['tasks'].keys() == after['tasks'].keys() and len(after['tasks']) == 4
  for task, entry in after['tasks'].items():
    assert during['tasks'][task]['metrics'] == entry['metrics']
  for cat, pooled in after['categories'].items():
    assert logged[f'eval/category/{cat}/accuracy'] == pytest.approx(
        pooled['macro']['accuracy']['value'])
  assert logged['step'] == 2 and 'loss' in logged


def test_predictions_have_one_fixed_length(model_and_params):
  """seqio stacks every task's predictions into one array: rows must share their length, the
  decode length (EOS then padding), whatever step each row stopped at."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from moe_flan.evaluation import model_fns  # pylint: disable=g-import-not-at-top
  net, params = model_and_params
  tokens = np.random.default_rng(0).integers(2, 3000, (5, 12)).astype(np.int32)
  dataset = tf.data.Dataset.from_tensor_slices({'encoder_input_tokens': tokens}).enumerate()
  fns = model_fns.ModelFns(net, params, part_lib.create_partitioner((8, 1, 1)), 8,
                           model_fns.DecodeSettings(max_decode_length=6))
  out = fns.predict_fn(dataset)
  assert [i for i, _ in out] == list(range(5)) and {len(t) for _, t in out} == {6}
  want = np.asarray(decoding.greedy_decode(net, params, tokens, 6))
  np.testing.assert_array_equal(np.array([t for _, t in out]), want)


def test_model_fns_of_equal_settings_share_their_jitted_functions(model_and_params):
  """An experiment evaluates many runs of one model: their ModelFns share the jitted score and
  generate functions (traced and compiled once per shape); whatever the programs depend on
  (model, decoding, mesh, logical-axis rules) gives others."""
  from moe_flan.evaluation import model_fns  # pylint: disable=g-import-not-at-top
  net, params = model_and_params
  decode = model_fns.DecodeSettings(max_decode_length=6)

  def jitted(model=net, settings=decode, mesh_shape=(8, 1, 1), rules=None):
    fns = model_fns.ModelFns(model, params, part_lib.create_partitioner(mesh_shape, rules), 8,
                             settings)
    return fns._score, fns._generate   # pylint: disable=protected-access

  first = jitted()
  assert jitted() == first
  rules = part_lib.create_partitioner((8, 1, 1)).rules
  others = [jitted(settings=model_fns.DecodeSettings(max_decode_length=7)),
            jitted(model=EncoderDecoder(dataclasses.replace(CONFIG, dropout_rate=0.5))),
            jitted(mesh_shape=(4, 2, 1)), jitted(rules=[('batch', None)] + rules)]
  assert all(a is not b for other in others for a, b in zip(other, first))
  assert jitted() == first


def test_mmlu_option_texts_are_shown_and_scored_under_their_letters(tmp_path, dirs,
                                                                    model_and_params):
  """options='texts': the prompt lists every option's text under its letter, the texts are
  the scored continuations, and the chosen text is the one at the letter of the best score."""
  net, params = model_and_params
  rows = [['Which organism causes influenza?', 'a bacterium', 'a fungus', 'a virus', 'a prion',
           'C'],
          ['What is the capital of France?', 'Paris', 'Rome', 'Berlin', 'Madrid', 'A']]
  root = tmp_path / 'mmlu_texts'
  (root / 'test').mkdir(parents=True)
  with open(root / 'test' / 'virology_test.csv', 'w', newline='') as f:
    csv.writer(f).writerows(rows)
  result = _engine(dirs, 'mmlu_0shot', mmlu=str(root), options='texts').evaluate(
      net, params, part_lib.create_partitioner((8, 1, 1)))
  records = result.records['mmlu_virology_0shot']
  header = 'The following are multiple choice questions (with answers) about virology.\n\n'
  for r, row in zip(records, rows):
    question, texts, letter = row[0], row[1:5], row[5]
    assert r['input'] == header + question + ''.join(
        f'\n{l}. {t}' for l, t in zip('ABCD', texts)) + '\nAnswer:'
    assert r['options'] == texts and r['target'] == texts['ABCD'.index(letter)]
    want = np.asarray(decoding.score_targets(net, params, {
        'encoder_input_tokens': _pad([_ids(r['input'])] * 4, LENGTHS['inputs']),
        'decoder_target_tokens': _pad([_ids(t) for t in texts], LENGTHS['targets'])}))
    np.testing.assert_allclose(r['log_likelihood'], want, atol=1e-4)
    best = int(np.argmax(want))
    assert r['prediction'] == texts[best]
    assert r['correct'] == ('ABCD'[best] == letter)
  # The options differ in length, so the per-token score is its own choice.
  for r in records:
    norm = np.array(r['log_likelihood']) / np.array(r['num_target_tokens'])
    assert r['prediction_norm'] == r['options'][int(np.argmax(norm))]


def test_beam_search_through_the_engine_equals_decoding_beam_search(dirs, model_and_params):
  net, params = model_and_params
  lengths = {'inputs': 256, 'targets': 8}
  task = 'bbh_multistep_arithmetic_two_3shot'
  beam = _engine(dirs, task, lengths=lengths, num_beams=3, beam_alpha=0.6).evaluate(
      net, params, part_lib.create_partitioner((8, 1, 1))).records[task]
  tokens = _pad([_ids(r['input']) for r in beam], lengths['inputs'])
  want, _ = decoding.beam_search(net, params, tokens, lengths['targets'], beam_size=3,
                                 alpha=0.6, eos_id=1)
  voc = vocab.default_vocabulary()
  outputs = [r['output'] for r in beam]
  assert outputs == [voc.decode(row.tolist()) for row in np.asarray(want[:, 0])]
  # This model and these prompts make beam search and greedy decoding disagree, so the
  # engine's output is the beam search's, not greedy's.
  greedy = decoding.greedy_decode(net, params, tokens, lengths['targets'])
  assert outputs != [voc.decode(row.tolist()) for row in np.asarray(greedy)]


def test_shared_engines_are_reused_only_for_the_same_settings_and_tasks(dirs, tmp_path):
  """Engine.shared (what `moe_flan.evaluate` and an experiment's runs use) gives back the engine
  built for equal settings over the same registered tasks; other settings, or a benchmark
  registered from another directory, get a new engine that reads its own data."""
  def shared(mmlu, **settings):
    gin.clear_config()
    gin.bind_parameter('tasks.benchmarks.register_benchmarks.mmlu_dir', mmlu)
    return engine_lib.Engine.shared(engine_lib.EvalSettings(
        mixture_or_task_name='mmlu_0shot', split='test',
        task_feature_lengths=dict(LENGTHS), batch_size=8, **settings))

  def rows(engine):
    return sum(int(engine.evaluator.cached_task_datasets[t.name].cardinality())
               for t in engine.evaluator.eval_tasks)

  first = shared(dirs['mmlu'])
  assert shared(dirs['mmlu']) is first
  assert shared(dirs['mmlu'], num_examples=1) is not first
  other = shared(bf.write_mmlu(str(tmp_path / 'mmlu_more'), test_rows=5))
  assert other is not first and rows(other) > rows(first)
  assert shared(dirs['mmlu']) is not other
