"""End to end against transformers: a tiny HF T5 with a SentencePiece model trained here,
imported with `python -m moe_flan.convert --from hf` (the vocabulary follows the checkpoint),
evaluated with `python -m moe_flan.evaluate` on a tiny MMLU-layout directory. Every option's
log-likelihood and every chosen option equal what transformers computes for the same prompt
and option texts; results.json's accuracy is the fraction of correct predictions."""
import json
import os
import shutil

import gin
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
sentencepiece = pytest.importorskip('sentencepiece')

import benchmark_fixtures as bf  # pylint: disable=g-import-not-at-top
from moe_flan import evaluate  # pylint: disable=g-import-not-at-top
from moe_flan.convert import cli as convert_cli  # pylint: disable=g-import-not-at-top
import convert_fixtures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBJECTS = ('anatomy', 'philosophy')
PIECES = 200


def _train_spm(path_prefix: str) -> str:
  corpus = []
  for subject in SUBJECTS:
    for row in bf.mmlu_rows(subject, 20):
      corpus.append(', '.join(row))
  corpus += ['The following are multiple choice questions (with answers) about anatomy.',
             'Answer: A B C D'] * 5
  # T5's id layout: pad 0, eos 1, unk 2, no bos.
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(corpus), model_prefix=path_prefix, vocab_size=PIECES,
      model_type='unigram', pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False,
      character_coverage=1.0, num_threads=1, minloglevel=2)
  return path_prefix + '.model'


def _pieces(spm: str) -> int:
  return sentencepiece.SentencePieceProcessor(model_file=spm).get_piece_size()


def _hf_model(vocab_size):
  cfg = transformers.T5Config(
      vocab_size=vocab_size, d_model=16, d_kv=8, num_heads=2, d_ff=32, num_layers=2,
      num_decoder_layers=2, relative_attention_num_buckets=8,
      relative_attention_max_distance=16, feed_forward_proj='gated-gelu',
      tie_word_embeddings=False, decoder_start_token_id=0, dropout_rate=0.0)
  model = transformers.T5ForConditionalGeneration(cfg)
  return convert_fixtures.randomise_hf(model)


@pytest.fixture(scope='module')
def evaluated(tmp_path_factory):
  root = tmp_path_factory.mktemp('hf_eval')
  spm = _train_spm(str(root / 'spiece'))
  hf_dir = str(root / 'hf')
  model = _hf_model(_pieces(spm) + 100 + 4)    # HF pads its embedding past the vocabulary
  model.save_pretrained(hf_dir, safe_serialization=True)
  shutil.copy(spm, os.path.join(hf_dir, 'spiece.model'))
  ckpt = str(root / 'ckpt')
  assert convert_cli.main(['--from', 'hf', '--src', hf_dir, '--out', ckpt]) == 0
  mmlu = bf.write_mmlu(str(root / 'mmlu'), subjects=SUBJECTS, test_rows=4)
  out = str(root / 'eval')
  try:
    assert evaluate.main([
        f'--gin_file={ckpt}/model.gin', '--gin_file=runs/eval.gin',
        f"--gin.MODEL_DIR='{ckpt}'", "--gin.MIXTURE_OR_TASK_NAME='mmlu_5shot'",
        f"--gin.MMLU_DIR='{mmlu}'", "--gin.SPLIT='test'", f"--gin.EVAL_OUTPUT_DIR='{out}'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 512, 'targets': 4}", '--gin.BATCH_SIZE=8']) == 0
  finally:
    gin.clear_config()
  tokenizer = transformers.T5Tokenizer(os.path.join(hf_dir, 'spiece.model'), extra_ids=100,
                                       legacy=True)
  return dict(model=model, tokenizer=tokenizer, out=out, ckpt=ckpt)


def _hf_log_likelihood(model, tokenizer, prompt, option):
  enc = tokenizer(prompt, return_tensors='pt').input_ids
  labels = tokenizer(option, return_tensors='pt').input_ids
  with torch.no_grad():
    logits = model(input_ids=enc, labels=labels).logits
  lp = torch.log_softmax(logits.double(), -1)[0, torch.arange(labels.shape[1]), labels[0]]
  return float(lp.sum()), labels.shape[1]


def test_vocabulary_follows_the_checkpoint(evaluated):
  with open(os.path.join(evaluated['ckpt'], 'model.gin')) as f:
    text = f.read()
  assert f"spm_path = '{evaluated['ckpt']}/spiece.model'" in text


def test_scores_and_choices_equal_transformers(evaluated):
  model, tokenizer = evaluated['model'], evaluated['tokenizer']
  checked = 0
  for subject in SUBJECTS:
    with open(os.path.join(evaluated['out'], 'predictions', f'mmlu_{subject}_5shot.jsonl')) as f:
      records = [json.loads(line) for line in f]
    assert len(records) == 4
    for r in records:
      assert r['num_shots'] == 5 and not r['truncated']
      want = [_hf_log_likelihood(model, tokenizer, r['input'], o) for o in r['options']]
      np.testing.assert_allclose(r['log_likelihood'], [w[0] for w in want], atol=1e-4)
      assert r['num_target_tokens'] == [w[1] for w in want]
      assert r['prediction'] == r['options'][int(np.argmax([w[0] for w in want]))]
      checked += 1
  assert checked == 8


def test_results_accuracy_is_the_fraction_correct(evaluated):
  with open(os.path.join(evaluated['out'], 'results.json')) as f:
    results = json.load(f)
  for subject in SUBJECTS:
    task = f'mmlu_{subject}_5shot'
    with open(os.path.join(evaluated['out'], 'predictions', f'{task}.jsonl')) as f:
      correct = [json.loads(line)['correct'] for line in f]
    acc = results['tasks'][task]['metrics']['accuracy']
    assert acc['value'] == pytest.approx(100.0 * sum(correct) / len(correct))
    assert acc['n'] == len(correct)
  assert results['settings']['mixture_or_task_name'] == 'mmlu_5shot'


def test_vocabulary_larger_than_the_embedding_is_refused(tmp_path, capsys):
  spm = _train_spm(str(tmp_path / 'spiece'))
  hf_dir = str(tmp_path / 'hf')
  small = _hf_model(64)
  small.save_pretrained(hf_dir, safe_serialization=True)
  shutil.copy(spm, os.path.join(hf_dir, 'spiece.model'))
  out = str(tmp_path / 'ckpt')
  assert convert_cli.main(['--from', 'hf', '--src', hf_dir, '--out', out]) == 2
  err = capsys.readouterr().err
  assert f'has {_pieces(spm) + 100} ids' in err and 'embedding has 64 rows' in err, err
  assert not os.path.exists(out)
