"""tasks.flan_collection.shards.IdsSource gives the examples of seqio.TFExampleDataSource over
the same id shards (then cast to int32), in the same order: whole and per host, shuffled with a
seed or not, with files longer and shorter than a parse batch and empty id lists."""
import numpy as np
import pytest
import seqio
import tensorflow as tf

from tasks.flan_collection import shards

SIZES = (1, 3, 70, 130, 200, 17)   # records per file: under, over and several parse batches


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp('id_shards')
  rng = np.random.default_rng(0)
  paths = []
  for i, n in enumerate(SIZES):
    path = str(root / f'task.train.tfrecord-{i:05d}-of-{len(SIZES):05d}')
    with tf.io.TFRecordWriter(path) as writer:
      for _ in range(n):
        feature = {'inputs': tf.train.Feature(bytes_list=tf.train.BytesList(value=[b'text']))}
        for k in ('inputs_ids', 'targets_ids'):
          ids = rng.integers(1, 32_000, rng.integers(0, 40)).tolist()   # 0..39 ids, some empty
          feature[k] = tf.train.Feature(int64_list=tf.train.Int64List(value=ids))
        writer.write(tf.train.Example(features=tf.train.Features(
            feature=feature)).SerializeToString())
    paths.append(path)
  return paths


def _seqio_examples(files, **kwargs):
  description = {k: tf.io.RaggedFeature(tf.int64) for k in ('inputs_ids', 'targets_ids')}
  ds = seqio.TFExampleDataSource({'train': files}, description).get_dataset('train', **kwargs)
  ds = ds.map(lambda ex: {k: tf.cast(ex[f'{k}_ids'], tf.int32) for k in ('inputs', 'targets')})
  return list(ds.as_numpy_iterator())


@pytest.mark.parametrize('kwargs', [dict(shuffle=False), dict(shuffle=True, seed=3),
                                    dict(shuffle=True, seed=4,
                                         shard_info=seqio.ShardInfo(index=1, num_shards=3))])
def test_same_examples_in_the_same_order_as_seqio(files, kwargs):
  source = shards.IdsSource({'train': files}, {'train': sum(SIZES)})
  ours = list(source.get_dataset('train', **kwargs).as_numpy_iterator())
  theirs = _seqio_examples(files, **kwargs)
  assert len(ours) == len(theirs) > 0
  # host 1 of 3 reads files 1 and 4 (seqio's file sharding, before the shuffle)
  assert len(ours) == (SIZES[1] + SIZES[4] if 'shard_info' in kwargs else sum(SIZES))
  for a, b in zip(ours, theirs):
    assert sorted(a) == sorted(b) == ['inputs', 'targets']
    for k in a:
      assert a[k].dtype == b[k].dtype == np.int32
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert any(len(ex['inputs']) == 0 for ex in ours)
  assert source.num_input_examples('train') == sum(SIZES)


def test_too_few_files_for_the_hosts_is_named(files):
  with pytest.raises(ValueError, match='2 files cannot be split between 3 hosts'):
    shards.IdsSource({'train': files[:2]}).get_dataset(
        'train', shard_info=seqio.ShardInfo(index=0, num_shards=3))
