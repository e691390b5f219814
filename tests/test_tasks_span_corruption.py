"""T5 span corruption: masks, sentinels, and inputs+targets reconstructing the original."""
import numpy as np
import pytest

import tasks  # pylint: disable=unused-import
from tasks import corpus, pipeline, span_corruption as sc, vocab


@pytest.mark.parametrize('length,seed', [(128, 0), (37, 1), (10, 2), (512, 3)])
def test_noise_mask_density_and_span_count(length, seed):
  mask = sc.noise_mask(length, 0.15, 3.0, np.random.default_rng(seed))
  num_noise = int(np.clip(round(length * 0.15), 1, length - 1))
  assert mask.shape == (length,) and mask.sum() == num_noise
  starts = np.sum(mask[1:] & ~mask[:-1]) + mask[0]
  assert starts == min(max(1, round(num_noise / 3.0)), num_noise, length - num_noise)
  assert not mask[0]  # T5 layout: starts with a kept span


def test_corrupt_then_reconstruct_is_identity():
  rng = np.random.default_rng(0)
  sentinel = lambda i: 1000 - i
  for _ in range(50):
    tokens = rng.integers(3, 500, size=rng.integers(5, 200)).tolist()
    mask = sc.noise_mask(len(tokens), 0.15, 3.0, rng)
    inputs, targets = sc.corrupt(tokens, mask, sentinel)
    num_spans = sum(t > 900 for t in inputs)
    assert num_spans == sum(t > 900 for t in targets) >= 1
    assert len(inputs) + len(targets) == len(tokens) + 2 * num_spans
    assert [t for t in inputs if t > 900] == [sentinel(i) for i in range(num_spans)]
    assert sc.reconstruct(inputs, targets, {sentinel(i) for i in range(100)}) == tokens


def test_task_batches_reconstruct_corpus_chunks():
  voc = vocab.default_vocabulary()
  b = next(pipeline.get_batches(sc.TASK_NAME, 'validation', {'inputs': 128, 'targets': 32}, 4,
                                seed=0, pack=False, shuffle=False))
  docs = corpus.split_documents('validation')
  stream = [t for ids in vocab.encode_batch(voc, docs) for t in ids]
  sentinels = {vocab.sentinel_id(voc, i) for i in range(voc.extra_ids)}
  assert vocab.sentinel_id(voc, 0) == voc.vocab_size - 1
  for row in range(4):
    inputs = b['encoder_input_tokens'][row]
    targets = b['decoder_target_tokens'][row]
    inputs, targets = inputs[inputs > 0].tolist(), targets[targets > 0].tolist()
    assert inputs[-1] == targets[-1] == voc.eos_id  # nothing truncated at 128 / 32
    original = sc.reconstruct(inputs[:-1], targets[:-1], sentinels)
    assert original == stream[row * 128:(row + 1) * 128]
    noise = len(targets) - 1 - sum(t in sentinels for t in targets)
    assert noise == round(128 * 0.15)


def test_corpus_is_deterministic_english_text():
  docs = corpus.documents()
  assert len(docs) > 200 and sum(map(len, docs)) > 100_000
  assert corpus.fingerprint() == corpus.fingerprint()
  assert set(corpus.split_documents('test')).isdisjoint(corpus.split_documents('train'))


def test_num_input_examples_counts_chunks():
  import seqio  # pylint: disable=g-import-not-at-top
  task = seqio.get_mixture_or_task(sc.TASK_NAME)
  voc = vocab.default_vocabulary()
  n_tokens = sum(len(ids) for ids in vocab.encode_batch(voc, corpus.split_documents('test')))
  assert task.num_input_examples('test') == n_tokens // 128
