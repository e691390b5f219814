"""User-provided JSONL instruction data as seqio Tasks.

One JSON object per line:
  {"instruction": "Translate to French.", "input": "cheese", "target": "fromage",
   "options": ["fromage", "pain"]}          # input and options are optional
Rendered FLAN-style: instruction, a blank line and the input (when present), then the option
block "OPTIONS:\\n- ..." (when present). Files are read lazily, at first use.

Bad lines: invalid UTF-8, invalid JSON, a missing/ill-typed field, an empty target, or a target
not among its options -> ValueError naming the file and line. With on_bad_example='skip' they are
skipped instead and counted (tasks.quality, reason 'bad_jsonl_line'), and logged.

Gin:
  tasks.jsonl.register_jsonl_task.name = 'my_task'
  tasks.jsonl.register_jsonl_task.files = {'train': '/data/train.jsonl', 'validation': ...}
  MIXTURE = @tasks.jsonl.register_jsonl_task()
"""
from __future__ import annotations

import json
from typing import Dict, Iterator, List, Mapping, Sequence, Tuple, Union

from absl import logging
import gin
import seqio
import tensorflow as tf

from tasks import quality, registry, templates, vocab

REQUIRED = ('instruction', 'target')
OPTIONAL = ('input', 'options')
BAD_LINE_POLICIES = ('error', 'skip')


def _parse_line(raw: bytes, path: str, lineno: int) -> Dict:
  where = f'{path}:{lineno}'
  try:
    text = raw.decode('utf-8')
  except UnicodeDecodeError as e:
    raise ValueError(f'{where}: not valid UTF-8 ({e.reason} at byte {e.start})') from None
  try:
    obj = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f'{where}: invalid JSON ({e.msg} at column {e.colno})') from None
  if not isinstance(obj, dict):
    raise ValueError(f'{where}: expected a JSON object, got {type(obj).__name__}')
  unknown = set(obj) - set(REQUIRED) - set(OPTIONAL)
  if unknown:
    raise ValueError(f'{where}: unknown fields {sorted(unknown)}; allowed: '
                     f'{list(REQUIRED + OPTIONAL)}')
  for field in REQUIRED + ('input',):
    if field in obj and not isinstance(obj[field], str):
      raise ValueError(f'{where}: field {field!r} must be a string')
  if not str(obj.get('instruction', '')).strip() and not str(obj.get('input', '')).strip():
    raise ValueError(f'{where}: needs a non-empty "instruction" (or "input")')
  if not str(obj.get('target', '')).strip():
    raise ValueError(f'{where}: empty or whitespace-only "target"')
  options = obj.get('options')
  if options is not None:
    if not (isinstance(options, list) and options and all(isinstance(o, str) for o in options)):
      raise ValueError(f'{where}: "options" must be a non-empty list of strings')
    if obj['target'] not in options:
      raise ValueError(f'{where}: target {obj["target"]!r} is not among options {options}')
  return obj


def render(obj: Mapping) -> Tuple[str, str]:
  """(inputs, targets) of one parsed line."""
  prompt = '\n\n'.join(p for p in (obj.get('instruction', '').strip(),
                                   obj.get('input', '').strip()) if p)
  template = templates.Template('{prompt}', '{answer}')
  example = {'prompt': prompt, 'answer': obj['target'], 'options': obj.get('options')}
  return templates.render_zero_shot(example, template, with_options=True)


def _rendered_lines(paths: Union[str, Sequence[str]], on_bad_example: str
                   ) -> Iterator[Union[Tuple[str, str], ValueError]]:
  """(inputs, targets) of each non-blank line of `paths`, in order; a bad line raises its
  ValueError (on_bad_example='error') or is yielded as that error ('skip')."""
  if on_bad_example not in BAD_LINE_POLICIES:
    raise ValueError(f'on_bad_example={on_bad_example!r}: choose one of {BAD_LINE_POLICIES}')
  for path in [paths] if isinstance(paths, str) else list(paths):
    with tf.io.gfile.GFile(path, 'rb') as f:
      for lineno, raw in enumerate(f, 1):
        if not raw.strip():
          continue
        try:
          yield render(_parse_line(raw.rstrip(b'\r\n'), path, lineno))
        except ValueError as e:
          if on_bad_example == 'error':
            raise
          yield e


def read_jsonl(paths: Union[str, Sequence[str]], task: str = 'jsonl',
               on_bad_example: str = 'error') -> Tuple[List[str], List[str]]:
  """(inputs, targets) of every line of `paths` (blank lines are ignored)."""
  inputs, targets = [], []
  for line in _rendered_lines(paths, on_bad_example):
    if isinstance(line, ValueError):
      quality.counter('bad_jsonl_line', task).assign_add(1)
      logging.warning('skipping %s', line)
      continue
    inputs.append(line[0])
    targets.append(line[1])
  return inputs, targets


def count_examples(paths: Union[str, Sequence[str]], on_bad_example: str = 'error') -> int:
  """How many examples `read_jsonl` yields, without counting or logging the skipped lines."""
  return sum(1 for line in _rendered_lines(paths, on_bad_example)
             if not isinstance(line, ValueError))


def _dataset_fn(name: str, files: Mapping[str, Union[str, Sequence[str]]], on_bad_example: str):
  def dataset_fn(split: str, shuffle_files: bool, seed=None) -> tf.data.Dataset:
    inputs, targets = read_jsonl(files[split], name, on_bad_example)
    if not inputs:
      raise ValueError(f'JSONL task {name!r}: split {split!r} ({files[split]}) has no examples')
    voc = vocab.default_vocabulary()
    ds = tf.data.Dataset.from_tensor_slices({'inputs': vocab.tokenize_to_ragged(voc, inputs),
                                             'targets': vocab.tokenize_to_ragged(voc, targets)})
    if shuffle_files:
      ds = ds.shuffle(len(inputs), seed=seed, reshuffle_each_iteration=True)
    return ds
  return dataset_fn


class _JsonlSource(seqio.FunctionDataSource):
  """Counts examples lazily (once per split), so JSONL tasks can join examples-proportional
  mixtures. Counting does not add to the skipped-line counters: reading the split does."""

  def __init__(self, name, files, on_bad_example):
    super().__init__(_dataset_fn(name, files, on_bad_example), splits=tuple(files))
    self._files, self._on_bad_example = files, on_bad_example
    self._counts: Dict[str, int] = {}

  def num_input_examples(self, split: str) -> int:
    if split not in self._counts:
      self._counts[split] = count_examples(self._files[split], self._on_bad_example)
    return self._counts[split]


@gin.configurable
def register_jsonl_task(name: str = gin.REQUIRED,
                        files: Mapping[str, Union[str, Sequence[str]]] = gin.REQUIRED,
                        on_bad_example: str = 'error') -> str:
  """Registers (idempotently) a Task over JSONL files {split: path or paths}; returns `name`."""
  if not files:
    raise ValueError(f'register_jsonl_task(name={name!r}): files is empty; give {{split: path}}')
  if on_bad_example not in BAD_LINE_POLICIES:
    raise ValueError(f'register_jsonl_task.on_bad_example={on_bad_example!r}: choose one of '
                     f'{BAD_LINE_POLICIES}')
  files = {k: (v if isinstance(v, str) else tuple(v)) for k, v in files.items()}
  source = _JsonlSource(name, files, on_bad_example)
  registry.add_task(name, fingerprint=f'jsonl:{sorted(files.items())}:{on_bad_example}',
                    source=source, output_features=vocab.output_features(), preprocessors=[],
                    shuffle_buffer_size=64)
  return name
