"""User JSONL instruction data: rendering, and errors that name the file and line."""
import json

import pytest
import seqio

import tasks  # pylint: disable=unused-import
from tasks import jsonl, pipeline, quality, vocab


def _write(path, lines):
  with open(path, 'wb') as f:
    for line in lines:
      f.write((json.dumps(line) if isinstance(line, dict) else line).encode('utf-8')
              if not isinstance(line, bytes) else line)
      f.write(b'\n')
  return str(path)


GOOD = [{'instruction': 'Say hi.', 'target': 'hi'},
        {'instruction': 'Pick one.', 'input': 'x or y', 'target': 'y', 'options': ['x', 'y']}]


def test_lines_render_flan_style(tmp_path):
  path = _write(tmp_path / 'a.jsonl', GOOD + [''])  # blank line ignored
  inputs, targets = jsonl.read_jsonl(path)
  assert inputs == ['Say hi.', 'Pick one.\n\nx or y\n\nOPTIONS:\n- x\n- y']
  assert targets == ['hi', 'y']


def test_registered_task_yields_batches(tmp_path):
  path = _write(tmp_path / 'b.jsonl', GOOD)
  name = jsonl.register_jsonl_task('test_jsonl_b', {'train': path})
  assert jsonl.register_jsonl_task('test_jsonl_b', {'train': path}) == name  # idempotent
  assert seqio.get_mixture_or_task(name).num_input_examples('train') == 2
  batches = list(pipeline.get_batches(name, 'train', {'inputs': 32, 'targets': 8}, 2, seed=0,
                                      pack=False, shuffle=False, repeat=False))
  v = vocab.default_vocabulary()
  assert [v.decode(r.tolist()) for r in batches[0]['decoder_target_tokens']] == ['hi', 'y']
  with pytest.raises(ValueError, match='Duplicate task registration'):
    jsonl.register_jsonl_task('test_jsonl_b', {'train': path, 'test': path})


@pytest.mark.parametrize('bad,message', [
    ('{"instruction": "a", "target": ', r'c.jsonl:2: invalid JSON'),
    (b'{"instruction": "\xff", "target": "x"}', r'c.jsonl:2: not valid UTF-8'),
    ({'instruction': 'a', 'target': '   '}, r'c.jsonl:2: empty or whitespace-only "target"'),
    ({'instruction': 'a', 'target': 'z', 'options': ['x', 'y']}, r'c.jsonl:2: target .z.'),
    ({'instruction': 'a', 'answer': 'z'}, r"c.jsonl:2: unknown fields \['answer'\]"),
    ('[1, 2]', r'c.jsonl:2: expected a JSON object'),
])
def test_bad_line_names_file_and_line(tmp_path, bad, message):
  path = _write(tmp_path / 'c.jsonl', [GOOD[0], bad])
  with pytest.raises(ValueError, match=message):
    jsonl.read_jsonl(path)


def test_skip_policy_counts_bad_lines(tmp_path):
  path = _write(tmp_path / 'd.jsonl', [GOOD[0], '{oops', GOOD[1], {'instruction': 'a',
                                                                   'target': ''}])
  quality.reset()
  inputs, _ = jsonl.read_jsonl(path, task='d', on_bad_example='skip')
  assert len(inputs) == 2
  assert quality.report() == {'bad_jsonl_line/d': 2}
  with pytest.raises(ValueError, match="on_bad_example='ignore'"):
    jsonl.read_jsonl(path, on_bad_example='ignore')


def test_counting_examples_is_cached_and_leaves_the_skip_counters_alone(tmp_path):
  path = _write(tmp_path / 'e.jsonl', [GOOD[0], '{oops', GOOD[1]])
  name = jsonl.register_jsonl_task('test_jsonl_e', {'train': path}, on_bad_example='skip')
  task = seqio.get_mixture_or_task(name)
  quality.reset()
  assert task.num_input_examples('train') == 2
  assert quality.report() == {}   # only reading the data counts the skipped line
  _write(tmp_path / 'e.jsonl', [GOOD[0]])   # counted once per split: not read again
  assert task.num_input_examples('train') == 2
  assert jsonl.count_examples(path, 'skip') == 1
  bad = _write(tmp_path / 'f.jsonl', [GOOD[0], '{oops'])
  with pytest.raises(ValueError, match='f.jsonl:2: invalid JSON'):
    jsonl.count_examples(bad)   # the 'error' policy fails the count as it fails the read
