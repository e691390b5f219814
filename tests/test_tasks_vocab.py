"""The shipped SentencePiece vocabulary: T5 id layout, exact round trips, gin options."""
import gin
import pytest
import seqio
import tensorflow as tf

import tasks  # pylint: disable=unused-import
from tasks import vocab

TEXTS = ['Is 7968 even or odd?\n\nOPTIONS:\n- even\n- odd',
         '  two  spaces, a\ttab and ünïcødé: 日本語 🙂',
         "Let's think step by step. So the answer is 42.",
         '']


def test_t5_id_layout():
  v = vocab.default_vocabulary()
  assert isinstance(v, seqio.SentencePieceVocabulary)
  assert (v.pad_id, v.eos_id, v.unk_id) == (0, 1, 2)
  assert v.extra_ids == 100 and v.vocab_size == 3072 and v.vocab_size % 128 == 0
  assert v.tokenizer.id_to_piece(3) != '<unk>'
  assert v.decode([vocab.sentinel_id(v, 0)]) == '<extra_id_0>'


@pytest.mark.parametrize('text', TEXTS)
def test_round_trip_python_and_tf(text):
  v = vocab.default_vocabulary()
  ids = v.encode(text)
  assert v.decode(ids) == text
  assert 2 not in ids  # byte fallback: no unknowns
  tf_ids = v.encode_tf(tf.constant(text)).numpy().tolist()
  assert tf_ids == ids
  # The TF detokenizer drops leading spaces (SentencePiece's dummy-prefix handling); the
  # Python one, used for evaluation, is exact.
  assert v.decode_tf(tf.constant(ids, tf.int32)).numpy().decode('utf-8') == text.lstrip(' ')


def test_batched_encoding_matches_single():
  v = vocab.default_vocabulary()
  assert vocab.encode_batch(v, TEXTS) == [v.encode(t) for t in TEXTS]


def test_gin_selects_byte_vocabulary_and_lazy_proxy_follows():
  with gin.unlock_config():
    gin.bind_parameter('tasks.vocab.default_vocabulary.kind', 'byte')
  try:
    v = vocab.default_vocabulary()
    assert isinstance(v, seqio.ByteVocabulary)
    assert vocab.TASK_VOCABULARY.vocab_size == v.vocab_size
    assert vocab.TASK_VOCABULARY.decode(vocab.TASK_VOCABULARY.encode('héllo')) == 'héllo'
  finally:
    gin.clear_config()
  assert vocab.TASK_VOCABULARY.vocab_size == 3072


def test_bad_settings():
  with pytest.raises(ValueError, match="kind='words'"):
    vocab.default_vocabulary(kind='words')
  with pytest.raises(ValueError, match='no such file'):
    vocab.default_vocabulary(spm_path='/nonexistent/x.model')


def test_shipped_model_settings_are_the_documented_ones():
  from sentencepiece import sentencepiece_model_pb2  # pylint: disable=g-import-not-at-top
  model = sentencepiece_model_pb2.ModelProto()
  with open(vocab.DEFAULT_SPM_PATH, 'rb') as f:
    model.ParseFromString(f.read())
  spec = model.trainer_spec
  assert len(model.pieces) == 2972 and spec.byte_fallback and spec.split_digits
  assert model.normalizer_spec.name == 'identity'
  assert list(spec.input) == ['train.txt']  # no temporary paths: the build is reproducible
