"""Examples-proportional mixing with caps and gin-weighted sub-mixtures: empirical frequencies."""
import collections

import gin
import numpy as np
import pytest
import seqio
import tensorflow as tf

import tasks  # pylint: disable=unused-import
from tasks import mixtures, registry, vocab

SIZES = {'a': 100, 'b': 1000, 'c': 5000}


def _source(tag: int, n: int):
  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    ids = np.tile(np.array([[tag, 7, 1]], np.int32), (n, 1))
    return tf.data.Dataset.from_tensor_slices({'inputs': ids, 'targets': ids})
  return seqio.FunctionDataSource(dataset_fn, splits=['train'], num_input_examples={'train': n})


@pytest.fixture(scope='module')
def tiny_tasks():
  for i, (k, n) in enumerate(SIZES.items()):
    registry.add_task(f'test_mix_{k}', fingerprint=f'test:{k}', source=_source(10 + i, n),
                      output_features=vocab.output_features(), preprocessors=[])
  names = [f'test_mix_{k}' for k in SIZES]
  mixtures.register_proportional('test_mix_prop', names)
  mixtures.register_submixed('test_mix_sub', {'x': names[:1], 'y': names[1:]})
  return names


def _frequencies(name, n=4000):
  ds = seqio.get_mixture_or_task(name).get_dataset(None, split='train', shuffle=True, seed=3,
                                                   try_in_mem_cache=False)
  counts = collections.Counter(int(ex['inputs'][0]) for ex in ds.take(n).as_numpy_iterator())
  return np.array([counts[10 + i] for i in range(len(SIZES))]) / n


def test_capped_examples_proportional(tiny_tasks):
  del tiny_tasks
  expected = np.array([100, 1000, 1000]) / 2100  # cap 1000 (bound below)
  with gin.unlock_config():
    gin.bind_parameter('tasks.mixtures.mixing_cap.cap', 1000)
  try:
    np.testing.assert_allclose(_frequencies('test_mix_prop'), expected, atol=0.03)
  finally:
    gin.clear_config()


def test_uncapped_and_default_cap(tiny_tasks):
  del tiny_tasks
  default = np.array([100, 1000, 3000]) / 4100  # FLAN default cap 3000
  np.testing.assert_allclose(_frequencies('test_mix_prop'), default, atol=0.03)
  mix = seqio.get_mixture_or_task('test_mix_prop')
  with gin.unlock_config():
    gin.bind_parameter('tasks.mixtures.mixing_cap.cap', 0)
  try:
    rates = [mix.get_rate(t) for t in mix.tasks]
    assert rates == [100.0, 1000.0, 5000.0]
  finally:
    gin.clear_config()


def test_submixture_weights_from_gin(tiny_tasks):
  del tiny_tasks
  with gin.unlock_config():
    gin.bind_parameter('tasks.mixtures.submix_weights.weights', {'x': 1.0, 'y': 3.0})
    gin.bind_parameter('tasks.mixtures.mixing_cap.cap', 1000)
  try:
    np.testing.assert_allclose(_frequencies('test_mix_sub'), [0.25, 0.375, 0.375], atol=0.03)
  finally:
    gin.clear_config()
  # Default: every sub-mixture weighs 1.
  mix = seqio.get_mixture_or_task('test_mix_sub')
  rates = np.array([mix.get_rate(t) for t in mix.tasks])
  np.testing.assert_allclose(rates / rates.sum(), [0.5, 1000 / 8000, 3000 / 8000 + 0.0])


def test_bad_settings_raise():
  with gin.unlock_config():
    gin.bind_parameter('tasks.mixtures.mixing_cap.temperature', 0.0)
  try:
    with pytest.raises(ValueError, match='temperature=0.0'):
      mixtures.mixing_cap()
  finally:
    gin.clear_config()
