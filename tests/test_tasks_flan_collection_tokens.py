"""Token ids stored at prepare time (`prepare --vocabulary`): they are the vocabulary's encoding
of the stored text, training from them gives exactly the packed batches of tokenizing the text
while reading, deterministically, and shards made with another vocabulary are refused."""
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

import tasks  # pylint: disable=unused-import  (registers the built-in tasks)
from tasks import pipeline, vocab
from tasks.flan_collection import prepare, registration, tokens, writing
import flan_collection_fixtures as fx

LENGTHS = {'inputs': 64, 'targets': 32}


@pytest.fixture(scope='module')
def src(tmp_path_factory):
  return fx.write_split(tmp_path_factory.mktemp('export') / 'src', fx.rows(), 'jsonl', parts=2)


@pytest.fixture(scope='module')
def data_dir(src, tmp_path_factory):
  out = str(tmp_path_factory.mktemp('tokenized') / 'data')
  prepare.prepare(src, out, log=lambda *_: None, num_shards=2, min_rows_per_shard=50,
                  vocabulary='default')
  return out


def _records(data_dir, n=40):
  index = json.load(open(os.path.join(data_dir, 'index.json')))
  files = [os.path.join(data_dir, s['file']) for u in index['units']
           for s in u['splits']['train']['shards']]
  desc = writing.feature_description(tokens.ID_FEATURES.values())
  ds = tf.data.TFRecordDataset(files).map(lambda r: tf.io.parse_single_example(r, desc))
  return list(ds.take(n).as_numpy_iterator())


def test_stored_ids_are_the_vocabularys_encoding_of_the_text(data_dir):
  index = json.load(open(os.path.join(data_dir, 'index.json')))
  assert index['vocabulary'] == tokens.describe(vocab.default_vocabulary())
  assert index['vocabulary']['name'] == 'moe_flan_spm.model'
  sp = vocab.default_vocabulary()
  for ex in _records(data_dir):
    for text, ids in (('inputs', 'inputs_ids'), ('targets', 'targets_ids')):
      # seqio's in-graph SentencePiece op: what the text path runs while reading
      want = sp.encode_tf(tf.constant(ex[text])).numpy().tolist()
      assert ex[ids].tolist() == want and want


def _batches(name, seed, n=8):
  it = pipeline.get_batches(name, 'train', LENGTHS, batch_size=3, seed=seed)
  return [next(it) for _ in range(n)]


def test_tokenized_path_gives_the_text_paths_packed_batches(data_dir):
  registration.register(data_dir, group_by='task', name_prefix='ids_', use_tokens=True)
  registration.register(data_dir, group_by='task', name_prefix='txt_', use_tokens=False)
  # a two-task mixture (Flan 2021: anli_r1, trivia_qa): sampling, shuffling and packing
  ids, txt = _batches('ids_flan2022_flan2021', 3), _batches('txt_flan2022_flan2021', 3)
  for a, b in zip(ids, txt):
    assert sorted(a) == sorted(b)
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert max(b['encoder_segment_ids'].max() for b in ids) > 1                # really packed
  again = _batches('ids_flan2022_flan2021', 3)                               # deterministic
  assert all(np.array_equal(a[k], b[k]) for a, b in zip(ids, again) for k in a)


def test_other_vocabulary_is_refused_naming_both(src, tmp_path):
  out = str(tmp_path / 'byte')
  prepare.prepare(src, out, log=lambda *_: None, num_shards=1, vocabulary='byte')
  with pytest.raises(ValueError, match=r"byte 'byte' .*moe_flan_spm\.model"):
    registration.register(out, name_prefix='byte_')
  registration.register(out, name_prefix='byte_text_', use_tokens=False)   # text still works


def test_text_only_dir_and_bad_vocabulary_argument(src, tmp_path):
  out = str(tmp_path / 'text')
  index = prepare.prepare(src, out, log=lambda *_: None, num_shards=1)
  assert index['vocabulary'] is None
  with pytest.raises(ValueError, match='no token ids'):
    registration.register(out, name_prefix='text_', use_tokens=True)
  assert registration.register(out, name_prefix='text_auto_')['tasks']   # auto: text path
  with pytest.raises(ValueError, match="--vocabulary 'nope.model': no such"):
    prepare.prepare(src, str(tmp_path / 'bad'), log=lambda *_: None, vocabulary='nope.model')


def test_rerun_with_another_vocabulary_is_refused(src, data_dir, tmp_path):
  out = str(tmp_path / 'copy')
  shutil.copytree(data_dir, out)
  with pytest.raises(ValueError, match='other settings'):
    prepare.prepare(src, out, log=lambda *_: None, num_shards=2, min_rows_per_shard=50,
                    vocabulary='byte')
