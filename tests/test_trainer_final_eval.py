"""The end-of-run evaluation (RunConfig.final_eval_mixtures): validation splits of the named
mixtures with the train data's shapes, one line each, bad names refused before training."""
import json
import os

import pytest

from moe_flan.trainer import data as data_lib
from moe_flan.trainer import final_eval, loop


def test_eval_data_is_the_validation_split_of_the_mixture_with_train_shapes():
  train = data_lib.DataConfig(mixture_or_task_name='flan_embedded', batch_size=16,
                              task_feature_lengths={'inputs': 128, 'targets': 32})
  cfg = final_eval.eval_data(train, 'flan_embedded_heldout')
  assert cfg.mixture_or_task_name == 'flan_embedded_heldout' and cfg.split == 'validation'
  assert not cfg.shuffle and cfg.batch_size == 16 and cfg.pack == train.pack
  assert dict(cfg.task_feature_lengths) == {'inputs': 128, 'targets': 32}


def test_line_names_the_mixture_its_role_and_the_token_count():
  m = {'cross_entropy': 2.25, 'accuracy': 0.5, 'num_tokens': 977.0}
  assert final_eval.format_line('flan_embedded', m, 'flan_embedded') == (
      '  flan_embedded (training mixture): cross entropy 2.250, token accuracy 0.500 over 977 '
      'target tokens')
  assert '(training mixture)' not in final_eval.format_line('flan_embedded_heldout', m,
                                                              'flan_embedded')


def test_unknown_final_eval_mixture_fails_before_training(tmp_path):
  with pytest.raises(ValueError, match="'flan_embeded_heldout' is not a registered"):
    final_eval.check_mixtures(['flan_embedded', 'flan_embeded_heldout'], 3072)
  with pytest.raises(ValueError, match='final_eval_batches=0'):
    loop.RunConfig(final_eval_mixtures=('flan_embedded',), final_eval_batches=0)


class _Setup:
  """What evaluate_at_end uses of a TrainSetup; `evaluate` records the data it was given."""
  def __init__(self, model_dir):
    self.model_dir = model_dir
    self.data = data_lib.DataConfig(mixture_or_task_name='flan_embedded', batch_size=4)
    self.seen = []

  def evaluate(self, params, num_batches, cfg):
    self.seen.append((params, num_batches, cfg.mixture_or_task_name, cfg.split))
    return {'loss': 1.0 + len(self.seen), 'cross_entropy': float(len(self.seen)),
            'accuracy': 0.25, 'num_tokens': 10.0}


def test_evaluate_at_end_writes_and_prints_each_mixture(tmp_path, capsys):
  setup = _Setup(str(tmp_path))
  out = final_eval.evaluate_at_end(setup, 'params', 7, ['flan_embedded', 'emb_nli'], 3)
  assert setup.seen == [('params', 3, 'flan_embedded', 'validation'),
                        ('params', 3, 'emb_nli', 'validation')]
  assert out['emb_nli']['cross_entropy'] == 2.0
  with open(os.path.join(str(tmp_path), 'metrics', 'final_eval_emb_nli.jsonl')) as f:
    assert json.loads(f.read())['step'] == 7
  printed = capsys.readouterr().out
  assert 'final evaluation at step 7 (3 batches of 4 from each validation split)' in printed
  assert 'flan_embedded (training mixture): cross entropy 1.000' in printed
  assert 'emb_nli: cross entropy 2.000, token accuracy 0.250 over 10 target tokens' in printed
