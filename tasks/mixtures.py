"""Mixing rates: examples-proportional with a per-task cap, and weighted sub-mixtures.

FLAN (Wei et al. 2022) mixes tasks in proportion to their training-set size, capped at 3,000
examples per task, so no big task dominates; FLAN 2022 (Longpre et al. 2023) additionally weighs
whole sub-mixtures (flan/t0/niv2/cot/dialog). Our embedded training mixture has one sub-mixture
per task cluster; 'flan_embedded_formats' has one per prompt format (zs/fs/cot).

Rates are callables evaluated when a dataset is built, so these gin bindings apply even though the
mixtures are registered at import time:
    tasks.mixtures.mixing_cap.cap = 3000
    tasks.mixtures.mixing_cap.temperature = 1.0
    tasks.mixtures.submix_weights.weights = {'arithmetic': 2.0, 'zs': 0.5}  # others: 1.0
"""
from __future__ import annotations

from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import gin
import seqio
import tensorflow as tf

from tasks import registry

FLAN_CAP = 3000
DEFAULT_SUBMIX_WEIGHT = 1.0


@gin.configurable
def mixing_cap(cap: int = FLAN_CAP, temperature: float = 1.0) -> Tuple[int, float]:
  """(cap, temperature) of examples-proportional mixing; cap <= 0 means uncapped."""
  if temperature <= 0:
    raise ValueError(f'mixing_cap.temperature={temperature!r}: must be > 0')
  return int(cap), float(temperature)


@gin.configurable
def submix_weights(weights: Optional[Mapping[str, float]] = None) -> Dict[str, float]:
  """Weight of each named sub-mixture inside a composite mixture (unlisted: 1.0)."""
  weights = dict(weights or {})
  bad = {k: v for k, v in weights.items() if v < 0}
  if bad:
    raise ValueError(f'submix_weights.weights has negative entries {bad}')
  return weights


def capped_size(task: seqio.Task, split: str = 'train') -> float:
  """min(num train examples, cap) ** (1 / temperature)."""
  cap, temperature = mixing_cap()
  n = task.num_input_examples(split)
  if n is None:
    raise ValueError(f'Task {task.name!r} does not know its number of {split} examples; '
                     'examples-proportional mixing needs it')
  n = min(n, cap) if cap > 0 else n
  return float(n) ** (1.0 / temperature)


def examples_proportional_rate(task: seqio.Task) -> float:
  """seqio mixing-rate callable: capped examples-proportional."""
  return capped_size(task)


def submix_rate(submix: str, members: Sequence[str]) -> Callable[[seqio.Task], float]:
  """Rate of a task inside the sub-mixture `submix` of a composite mixture:
  weight(submix) * capped_size(task) / sum(capped_size(members))."""
  members = tuple(members)

  def rate(task: seqio.Task) -> float:
    total = sum(capped_size(seqio.TaskRegistry.get(m)) for m in members)
    weight = submix_weights().get(submix, DEFAULT_SUBMIX_WEIGHT)
    return weight * capped_size(task) / total

  rate.__name__ = f'submix_rate_{submix}'
  return rate


class Mixture(seqio.Mixture):
  """seqio.Mixture that skips the per-task feature-filtering map when a task already yields
  exactly the mixture's features (each traced tf.data map costs ~0.1 s at start-up)."""

  def get_task_dataset(self, task, output_feature_keys, sequence_length=None, split='train',
                       use_cached=False, shuffle=True, seed=None, shard_info=None,
                       num_epochs=None, trim_output_features=True, try_in_mem_cache=True):
    ds = task.get_dataset(
        sequence_length=sequence_length, split=split, use_cached=use_cached, shuffle=shuffle,
        seed=seed, shard_info=shard_info, num_epochs=num_epochs,
        trim_output_features=trim_output_features, try_in_mem_cache=try_in_mem_cache)
    if set(ds.element_spec) == set(output_feature_keys):
      return ds
    select = lambda ex: {k: ex[k] for k in output_feature_keys}
    return ds.map(tf.autograph.experimental.do_not_convert(select),
                  num_parallel_calls=tf.data.AUTOTUNE)


def register_proportional(name: str, task_names: Sequence[str]) -> seqio.Mixture:
  """Mixture of `task_names` with capped examples-proportional rates."""
  return registry.add_mixture(name, [(t, examples_proportional_rate) for t in task_names],
                              fingerprint=f'proportional:{",".join(task_names)}',
                              mixture_cls=Mixture)


def register_submixed(name: str, submixes: Mapping[str, Sequence[str]]) -> seqio.Mixture:
  """Flat mixture over sub-mixtures {submix name: task names}, weighted by `submix_weights`.

  Flat (not seqio's nested mixtures) because seqio requires a nested mixture's rate to be a
  number fixed at registration, and we want the weights to come from gin.
  """
  entries = []
  for submix, members in submixes.items():
    if members:
      entries += [(t, submix_rate(submix, members)) for t in members]
  fingerprint = 'submixed:' + ';'.join(f'{k}={",".join(v)}' for k, v in submixes.items())
  return registry.add_mixture(name, entries, fingerprint=fingerprint, mixture_cls=Mixture)
