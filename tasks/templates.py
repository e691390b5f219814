"""FLAN template engine: render one raw example into (inputs, targets) strings.

A task owns several `Template`s (FLAN uses ~10 per dataset; we require >= 5). A raw example is a
plain dict of fields; a template is a pair of `str.format` patterns over those fields. Four
formats exist, following FLAN 2022 (Longpre et al. 2023):

- `zs_opt`   zero-shot with options:  inputs + "\\n\\nOPTIONS:\\n- a\\n- b"
- `zs_noopt` zero-shot, no options
- `fs_opt` / `fs_noopt` few-shot: k exemplars of the same task, each "inputs\\ntargets",
   joined by a blank line, then the query inputs; exemplars are dropped (last first) until
   `length_fn(prompt) <= max_length` (characters by default; tokens when given a tokenizer)
- `cot`      chain-of-thought: inputs + "\\n\\nLet's think step by step." ->
   "{rationale} So the answer is {answer}."

Options are rendered exactly the FLAN way so that rank-classification scoring can later parse
them back out of the prompt (`parse_options`).
"""
from __future__ import annotations

import dataclasses
import string
from typing import Callable, Mapping, Optional, Sequence, Tuple

FORMATS = ('zs_opt', 'zs_noopt', 'fs_opt', 'fs_noopt', 'cot')
OPTIONS_HEADER = 'OPTIONS:'
FEWSHOT_SEPARATOR = '\n\n'
COT_TRIGGER = "Let's think step by step."
COT_TARGET = '{rationale} So the answer is {answer}.'


@dataclasses.dataclass(frozen=True)
class Template:
  """One instruction phrasing: `inputs`/`targets` are `str.format` patterns over example fields.

  `{options_}` in `inputs` marks where the option block goes; without it the block is appended
  after a blank line (FLAN's most common placement).
  """
  inputs: str
  targets: str = '{answer}'

  def fields(self) -> set[str]:
    names = set()
    for pattern in (self.inputs, self.targets):
      names.update(f for _, f, _, _ in string.Formatter().parse(pattern) if f)
    return names


def format_options(options: Sequence[str]) -> str:
  """FLAN option block: 'OPTIONS:\\n- a\\n- b'."""
  return OPTIONS_HEADER + ''.join(f'\n- {o}' for o in options)


def parse_options(inputs: str) -> list[str]:
  """Inverse of `format_options` on a rendered prompt (the last option block wins)."""
  head, sep, tail = inputs.rpartition(OPTIONS_HEADER + '\n')
  if not sep:
    return []
  options = []
  for line in tail.split('\n'):
    if not line.startswith('- '):
      break
    options.append(line[2:])
  return options


def _fill(pattern: str, example: Mapping[str, object], task: str) -> str:
  try:
    return pattern.format(**example)
  except KeyError as e:
    raise ValueError(f'Template of task {task!r} uses field {e.args[0]!r} that the example '
                     f'does not have (fields: {sorted(example)})') from None


def render_zero_shot(example: Mapping[str, object], template: Template, with_options: bool,
                     task: str = '?') -> Tuple[str, str]:
  """Zero-shot rendering; `example['options']` (a list) is shown only when `with_options`."""
  options = example.get('options') or ()
  block = format_options(options) if (with_options and options) else ''
  fields = dict(example, options_=block)
  inputs = _fill(template.inputs, fields, task)
  if block and '{options_}' not in template.inputs:
    inputs = inputs + '\n\n' + block
  targets = _fill(template.targets, fields, task)
  return inputs.strip(), targets


def render_few_shot(example: Mapping[str, object], exemplars: Sequence[Mapping[str, object]],
                    template: Template, with_options: bool, max_length: int = 2000,
                    task: str = '?', length_fn: Callable[[str], int] = len) -> Tuple[str, str]:
  """Few-shot: exemplars (same task, same template) then the query, while
  `length_fn(prompt) <= max_length`.

  Exemplars are dropped from the end until the prompt fits; the query itself is never cut
  (over-long prompts are truncated, and counted, later at tokenization).
  """
  query, targets = render_zero_shot(example, template, with_options, task)
  shots = [render_zero_shot(e, template, with_options, task) for e in exemplars]
  while shots:
    prompt = FEWSHOT_SEPARATOR.join([f'{i}\n{t}' for i, t in shots] + [query])
    if length_fn(prompt) <= max_length:
      return prompt, targets
    shots.pop()
  return query, targets


def render_cot(example: Mapping[str, object], template: Template,
               task: str = '?') -> Tuple[str, str]:
  """Chain-of-thought: the prompt asks for reasoning; the target is rationale then answer."""
  if not example.get('rationale'):
    raise ValueError(f'Task {task!r}: chain-of-thought needs a non-empty "rationale" field')
  inputs, _ = render_zero_shot(example, template, with_options=False, task=task)
  targets = COT_TARGET.format(rationale=example['rationale'], answer=example['answer'])
  return f'{inputs}\n\n{COT_TRIGGER}', targets


def render(example: Mapping[str, object], template: Template, fmt: str,
           exemplars: Optional[Sequence[Mapping[str, object]]] = None, max_length: int = 2000,
           task: str = '?', length_fn: Callable[[str], int] = len) -> Tuple[str, str]:
  """Dispatch on `fmt` (one of FORMATS)."""
  if fmt not in FORMATS:
    raise ValueError(f'Unknown template format {fmt!r}; choose one of {FORMATS}')
  with_options = fmt.endswith('_opt')
  if fmt.startswith('zs'):
    return render_zero_shot(example, template, with_options, task)
  if fmt.startswith('fs'):
    return render_few_shot(example, exemplars or (), template, with_options, max_length, task,
                           length_fn)
  return render_cot(example, template, task)
