"""FLAN tasks over TFDS datasets, run under tfds.testing.mock_data (nothing is downloaded)."""
import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

import tasks  # pylint: disable=unused-import
from tasks import pipeline, quality, templates, tfds_tasks, vocab


@pytest.fixture(scope='module')
def mock_data():
  with tfds.testing.mock_data(num_examples=6):
    yield


@pytest.mark.parametrize('spec', tfds_tasks.SPECS, ids=lambda s: s.name)
def test_task_yields_rendered_examples(mock_data, spec):
  del mock_data
  task = seqio.get_mixture_or_task(tfds_tasks.task_name(spec))
  rows = list(task.get_dataset(None, 'validation', shuffle=False, num_epochs=1,
                               try_in_mem_cache=False).as_numpy_iterator())
  v = vocab.default_vocabulary()
  assert rows
  for row in rows:
    text, target = v.decode(row['inputs'].tolist()), v.decode(row['targets'].tolist())
    assert row['targets'][-1] == v.eos_id and target.strip()
    if spec.options and '{' not in ''.join(spec.options):
      assert templates.parse_options(text) == list(spec.options)
      assert target in spec.options


@pytest.mark.parametrize('name', ['flan_glue_rte'])
def test_get_batches_under_mock_data(mock_data, name):
  del mock_data
  b = next(pipeline.get_batches(name, 'train', {'inputs': 64, 'targets': 16}, 2, seed=0))
  assert b['encoder_input_tokens'].shape == (2, 64) and b['decoder_loss_weights'].sum() > 0


def test_tf_rendering_matches_python_templates():
  spec = next(s for s in tfds_tasks.SPECS if s.name == 'super_glue_copa')
  ex = {'premise': 'The man fell.', 'question': 'cause', 'choice1': 'He slipped.',
        'choice2': 'He sang.', 'label': 1}
  tf_ex = {k: tf.constant(v) for k, v in ex.items()}
  fields = dict(ex, options=['He slipped.', 'He sang.'], answer='He sang.')
  expected = {templates.render_zero_shot(fields, t, with_options=True) for t in spec.templates}
  got = tfds_tasks.render_example(spec, tf_ex)
  assert (got['inputs'].numpy().decode(), got['targets'].numpy().decode()) in expected
  # Every template, forced one at a time, renders exactly like the Python engine.
  for t in spec.templates:
    one = tfds_tasks.TfdsSpec(spec.name, spec.tfds_name, spec.extract, [t], spec.options)
    got = tfds_tasks.render_example(one, tf_ex)
    assert (got['inputs'].numpy().decode(), got['targets'].numpy().decode()) == \
        templates.render_zero_shot(fields, t, with_options=True)


def test_unlabeled_and_bad_text_are_counted_skips():
  quality.reset()
  spec = next(s for s in tfds_tasks.SPECS if s.name == 'glue_sst2')
  ds = tf.data.Dataset.from_tensor_slices({'sentence': ['good', 'bad', 'meh', 'x'],
                                           'label': np.array([1, -1, 0, 1], np.int64)})
  ds = tfds_tasks._preprocess(ds, spec)  # pylint: disable=protected-access
  rows = list(ds.as_numpy_iterator())
  assert len(rows) == 3 and quality.report() == {'unlabeled/glue_sst2': 1}
  bad = tf.data.Dataset.from_tensor_slices({'inputs': ['ok', 'ok', b'\xff\xfe'],
                                            'targets': ['y', '  ', 'z']})
  kept = list(quality.filter_bad_text(bad, task='t').as_numpy_iterator())
  assert [r['inputs'] for r in kept] == [b'ok']
  assert quality.report() == {'empty_target/t': 1, 'invalid_utf8/t': 1,
                              'unlabeled/glue_sst2': 1}
