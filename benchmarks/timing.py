"""Timing harness: warm-up, block_until_ready, medians of repeats, and side-by-side ratios.

On small shared machines times drift by tens of percent between (and within) runs because
other processes share the cores, so absolute times mean little. `compare` therefore runs the
candidates round-robin in one process and reports, beside each candidate's median time, the
median of its per-round ratio to a baseline: drift that hits a whole round cancels out of the
ratio. The order rotates every round (A B C, B C A, C A B, ...): a candidate that frees a lot
of memory can leave the next one to fault fresh pages in, and a fixed order would pin that cost
on one candidate.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Callable, Mapping

import jax


@dataclasses.dataclass(frozen=True)
class Timing:
  """Seconds per call: median of `repeats` timed calls, with their min and max (the spread)."""
  median_s: float
  min_s: float
  max_s: float
  repeats: int

  def as_dict(self) -> dict[str, float]:
    return {'median_s': self.median_s, 'min_s': self.min_s, 'max_s': self.max_s,
            'repeats': self.repeats}


def block(tree: Any) -> Any:
  """Waits until every jax array in `tree` is computed (jax dispatch is asynchronous); other
  leaves (numpy, PyTorch CPU tensors: already computed when returned) pass through."""
  for leaf in jax.tree.leaves(tree):
    if isinstance(leaf, jax.Array):
      leaf.block_until_ready()
  return tree


def _timed_call(fn: Callable[[], Any]) -> float:
  start = time.perf_counter()
  block(fn())
  return time.perf_counter() - start


def summarize(samples: list[float]) -> Timing:
  if not samples:
    raise ValueError('summarize: samples must not be empty')
  return Timing(median_s=statistics.median(samples), min_s=min(samples), max_s=max(samples),
                repeats=len(samples))


def time_fn(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> Timing:
  """Times `fn()` (a closure over its inputs) after `warmup` untimed calls (compilation)."""
  if repeats < 1:
    raise ValueError(f'time_fn: repeats={repeats} must be >= 1')
  for _ in range(warmup):
    block(fn())
  return summarize([_timed_call(fn) for _ in range(repeats)])


@dataclasses.dataclass(frozen=True)
class Comparison:
  """Round-robin timings of several candidates and their per-round ratios to a baseline."""
  timings: Mapping[str, Timing]
  ratios: Mapping[str, Timing]    # per-round time / baseline time; 'median_s' holds the ratio
  baseline: str


def compare(fns: Mapping[str, Callable[[], Any]], baseline: str, repeats: int = 5,
            warmup: int = 1, lead_in: int = 0) -> Comparison:
  """Times every candidate in `fns` round-robin and reports ratios to `fns[baseline]`.

  Each candidate is warmed up (compiled) first; then `repeats` rounds each call every candidate
  once, in an order rotated by one per round. Callers warm up and drop candidates that fail
  (e.g. out of memory) before calling this.

  lead_in: untimed calls of a candidate right before each of its timed calls, so that it is
  timed as in its own loop, step after step, rather than after the other candidates (e.g. two
  frameworks whose long steps would otherwise sit between each other's, see hf_switch).
  """
  if baseline not in fns:
    raise ValueError(f'compare: baseline={baseline!r} is not one of {sorted(fns)}')
  for _, fn in fns.items():
    for _ in range(warmup):
      block(fn())
  samples: dict[str, list[float]] = {name: [] for name in fns}
  names = list(fns)
  for round_index in range(repeats):
    shift = round_index % len(names)
    for name in names[shift:] + names[:shift]:
      for _ in range(lead_in):
        block(fns[name]())
      samples[name].append(_timed_call(fns[name]))
  timings = {name: summarize(s) for name, s in samples.items()}
  base = samples[baseline]
  ratios = {name: summarize([a / b for a, b in zip(s, base)]) for name, s in samples.items()}
  return Comparison(timings=timings, ratios=ratios, baseline=baseline)
