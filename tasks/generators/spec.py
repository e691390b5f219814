"""What an embedded generated task is: a seeded example generator plus its instruction templates."""
from __future__ import annotations

import dataclasses
import random
from typing import Callable, Dict, List, Optional, Sequence

from tasks.templates import Template

Example = Dict[str, object]  # fields for templates; always 'answer', maybe 'options', 'rationale'


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """One embedded task.

  Attributes:
    name: short task name; the registered seqio task is `emb_{name}` (plus `_fs`, `_cot`).
    cluster: task cluster (FLAN's unit of held-out evaluation).
    generate: `rng -> Example`; must be deterministic given the rng state.
    templates: >= 5 instruction phrasings.
    train_size: examples in the train split (validation/test have `eval_size`).
    eval_size: examples in each of validation and test.
    fixed_examples: for authored (human-written) tasks: `split -> examples`, used instead of
      `generate`; sizes are then those of the authored data.
  """
  name: str
  cluster: str
  generate: Optional[Callable[[random.Random], Example]]
  templates: Sequence[Template]
  train_size: int = 1000
  eval_size: int = 100
  fixed_examples: Optional[Callable[[str], List[Example]]] = None

  @property
  def has_rationale(self) -> bool:
    return getattr(self.generate, 'has_rationale', False)

  @property
  def human_written(self) -> bool:
    return self.fixed_examples is not None


def with_rationale(fn):
  """Marks a generator whose examples carry a 'rationale' (enables the `_cot` variant)."""
  fn.has_rationale = True
  return fn


def t(inputs: str, targets: str = '{answer}') -> Template:
  return Template(inputs, targets)
