"""Trains the shipped SentencePiece model: `python -m tasks.build_vocab [--out PATH]`.

Training text: every embedded task's train split in all prompt variants (generation seed 0) plus
the stdlib docstring corpus, one line per paragraph (SentencePiece trains on lines; newlines
inside prompts are covered by byte fallback). Settings keep T5's id layout (pad 0, eos 1, unk 2,
no bos) and make decoding exact: identity normalisation, whitespace kept, byte fallback, digits
split. 2,972 pieces + 100 extra ids = 3,072 = 24 * 128 ids.
"""
from __future__ import annotations

import argparse
import os
import tempfile

import gin
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from tasks import corpus, embedded, vocab

NUM_PIECES = 2972


def training_lines() -> list[str]:
  """Few-shot prompts are budgeted in bytes here (ByteVocabulary), not in tokens of a previous
  model, so the result depends only on the code: building twice gives the same model."""
  with gin.unlock_config():
    gin.bind_parameter('tasks.vocab.default_vocabulary.kind', 'byte')
  try:
    return _lines()
  finally:
    gin.clear_config()


def _lines() -> list[str]:
  lines = []
  for spec in embedded.ALL_TASKS:
    for variant in embedded.variants_of(spec.name):
      cols = embedded.rendered(spec.name, variant, 'train', 0, 3, 120, (0.5, 0.4, 0.1),
                               id(vocab.default_vocabulary()))
      for text in cols['inputs'] + cols['targets']:
        lines.extend(ln for ln in text.split('\n') if ln.strip())
  for doc in corpus.documents():
    lines.extend(ln for ln in doc.split('\n') if ln.strip())
  return lines


def train(out_path: str = vocab.DEFAULT_SPM_PATH, num_pieces: int = NUM_PIECES) -> str:
  lines = training_lines()
  with tempfile.TemporaryDirectory() as tmp:
    text_path = os.path.join(tmp, 'train.txt')
    with open(text_path, 'w', encoding='utf-8') as f:
      f.write('\n'.join(lines) + '\n')
    prefix = os.path.join(tmp, 'spm')
    spm.set_random_generator_seed(0)  # with one thread, this makes training reproducible
    spm.SentencePieceTrainer.train(
        input=text_path, model_prefix=prefix, vocab_size=num_pieces, model_type='unigram',
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, byte_fallback=True, split_digits=True,
        normalization_rule_name='identity', remove_extra_whitespaces=False,
        character_coverage=0.9995, num_threads=1, shuffle_input_sentence=False,
        input_sentence_size=0, max_sentence_length=8192, minloglevel=2)
    model = sentencepiece_model_pb2.ModelProto()
    with open(prefix + '.model', 'rb') as f:
      model.ParseFromString(f.read())
  # The temporary paths are recorded in the model; fixed names make the file reproducible.
  del model.trainer_spec.input[:]
  model.trainer_spec.input.append('train.txt')
  model.trainer_spec.model_prefix = 'moe_flan_spm'
  with open(out_path, 'wb') as f:
    f.write(model.SerializeToString())
  return out_path


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--out', default=vocab.DEFAULT_SPM_PATH)
  args = parser.parse_args(argv)
  print('wrote', train(args.out))


if __name__ == '__main__':
  main()
