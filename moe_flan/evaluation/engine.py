"""The evaluation engine: `seqio.Evaluator` driven by our predict and score functions.

    engine = Engine(EvalSettings(mixture_or_task_name='mmlu_5shot', split='test', ...))
    result = engine.evaluate(model, params, partitioner, step)   # EvalResult

Tasks carry their own postprocessors and metric functions (`tasks/eval_metrics.py`); the
Evaluator caches each task's whole split once (`num_examples=None`), converts it to fixed-length
model features, calls `score_fn` for score metrics (rank classification) and `predict_fn` for
prediction metrics (generation, chain-of-thought), and computes the metrics. The engine adds
the per-example records (`records.py`) the reports need. Datasets are read and checked when the
Engine is built, before any model work; bad benchmark files fail there.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any, Mapping, Optional

import gin
import jax
import numpy as np
import seqio

from moe_flan.evaluation import model_fns as model_fns_lib
from moe_flan.evaluation import records as records_lib
from moe_flan.evaluation import report


@gin.configurable
@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """What to evaluate and how.

  mixture_or_task_name: a registered seqio task or mixture (benchmarks need their directory,
    see tasks/benchmarks.py); split: e.g. 'validation' or 'test'; task_feature_lengths: the
    prompt budget (few-shot prompts are fitted to 'inputs') and target length; batch_size: rows
    per model call (global); num_examples: None = whole splits, else the first n per task;
    max_decode_length (default: the targets length), num_beams, beam_alpha: generation.
  """
  mixture_or_task_name: str = 'flan_embedded_heldout'
  split: str = 'validation'
  task_feature_lengths: Mapping[str, int] = dataclasses.field(
      default_factory=lambda: {'inputs': 512, 'targets': 128})
  batch_size: int = 16
  num_examples: Optional[int] = None
  max_decode_length: Optional[int] = None
  num_beams: int = 1
  beam_alpha: float = 0.6

  def __post_init__(self):
    if self.num_examples is not None and self.num_examples < 1:
      raise ValueError(f'NUM_EXAMPLES={self.num_examples}: must be None (whole splits) or >= 1')
    if self.batch_size < 1:
      raise ValueError(f'EvalSettings.batch_size={self.batch_size}: must be >= 1')
    if self.num_beams < 1:
      raise ValueError(f'EvalSettings.num_beams={self.num_beams}: must be >= 1')

  def decode_settings(self, eos_id: int) -> model_fns_lib.DecodeSettings:
    length = self.max_decode_length or int(self.task_feature_lengths['targets'])
    return model_fns_lib.DecodeSettings(length, self.num_beams, self.beam_alpha, eos_id)


@dataclasses.dataclass
class EvalResult:
  """metrics: task -> metric -> value (seqio's output); records: task -> per-example dicts;
  rows_fed / rows_total: the (prompt, target) rows this process fed to the model, of all rows
  (its data shard's share of every batch; all of them on one host)."""
  metrics: dict[str, dict[str, float]]
  records: dict[str, list[dict[str, Any]]]
  step: int
  rows_fed: int = 0
  rows_total: int = 0


def check_tasks(name: str, split: str) -> list[seqio.Task]:
  """The mixture's tasks; ValueError naming the task that lacks `split` or metrics."""
  from tasks import benchmarks, registry  # pylint: disable=g-import-not-at-top
  try:
    provider = registry.get(name)
  except ValueError as e:
    macro = benchmarks.missing_directory(name)
    hint = f'; set --gin.{macro}=... to register it' if macro else ''
    raise ValueError(f'MIXTURE_OR_TASK_NAME={name!r}: {e}{hint}') from None
  subtasks = seqio.get_subtasks(provider)
  for task in subtasks:
    if split not in task.splits:
      raise ValueError(f'task {task.name!r} has no split {split!r} (it has {list(task.splits)});'
                       ' set SPLIT')
    if not task.metric_objs:
      raise ValueError(f'task {task.name!r} declares no metric_fns; it cannot be evaluated')
  return subtasks


# Engine.shared's engines, least recently used first.
_SHARED: collections.OrderedDict[Any, 'Engine'] = collections.OrderedDict()
_SHARED_MAX = 4


class Engine:
  """A `seqio.Evaluator` over the settings' mixture, built (datasets read) once."""

  def __init__(self, settings: EvalSettings):
    from tasks import benchmarks, eval_prompts  # pylint: disable=g-import-not-at-top
    benchmarks.register_benchmarks()
    self.settings = settings
    self.tasks = check_tasks(settings.mixture_or_task_name, settings.split)
    # The example limit applies while the Evaluator reads (and caches) its datasets.
    with eval_prompts.limit_examples(settings.num_examples):
      self.evaluator = seqio.Evaluator(
          settings.mixture_or_task_name,
          feature_converter=seqio.EncDecFeatureConverter(pack=False),
          eval_split=settings.split, sequence_length=dict(settings.task_feature_lengths),
          num_examples=None, shuffle=False, use_memory_cache=True, async_compute_metrics=False)
    for task in self.evaluator.eval_tasks:
      if int(self.evaluator.cached_task_datasets[task.name].cardinality()) == 0:
        raise ValueError(f'task {task.name!r} split {settings.split!r} has no examples')

  @classmethod
  def shared(cls, settings: EvalSettings) -> 'Engine':
    """An Engine for `settings`, reused from an earlier call in this process when the settings
    and the registered tasks (the same seqio.Task objects) are unchanged: reading and caching
    the datasets is most of a small evaluation's time, and an experiment evaluates every run
    on the same mixtures. The Evaluator holds data only, no model. Keeps the last few."""
    from tasks import benchmarks  # pylint: disable=g-import-not-at-top
    benchmarks.register_benchmarks()
    tasks = check_tasks(settings.mixture_or_task_name, settings.split)
    key = (dataclasses.replace(settings, task_feature_lengths=()),
           tuple(sorted(settings.task_feature_lengths.items())))
    hit = _SHARED.get(key)
    if hit is not None and len(hit.tasks) == len(tasks) and all(
        a is b for a, b in zip(hit.tasks, tasks)):
      _SHARED.move_to_end(key)
      return hit
    engine = cls(settings)
    _SHARED[key] = engine
    while len(_SHARED) > _SHARED_MAX:
      _SHARED.popitem(last=False)
    return engine

  def vocab_size(self) -> int:
    return self.tasks[0].output_features['targets'].vocabulary.vocab_size

  def evaluate(self, model, params: Any, partitioner, step: int = 0) -> EvalResult:
    """Scores / decodes every example of every task; returns metrics and records."""
    eos = self.tasks[0].output_features['targets'].vocabulary.eos_id
    fns = model_fns_lib.ModelFns(model, params, partitioner, self.settings.batch_size,
                                 self.settings.decode_settings(eos))
    future, outputs = self.evaluator.evaluate(compute_metrics=True, step=step,
                                              predict_fn=fns.predict_fn, score_fn=fns.score_fn)
    metrics = {task: {k: float(np.asarray(v)) for k, v in m.items()}
               for task, m in future.result().items()}
    records = {task.name: records_lib.task_records(
        task, self.evaluator.cached_task_datasets[task.name], outputs[task.name])
        for task in self.evaluator.eval_tasks}
    return EvalResult(metrics, records, step, fns.rows_fed, fns.rows_total)

  def evaluate_and_write(self, model, params: Any, partitioner, step: int, output_dir: str,
                         model_gin: str = '') -> dict[str, float]:
    """`evaluate`, then results.json / predictions / TensorBoard under `output_dir` (process
    0); returns the flat scalars (per task, category and overall) for the caller's logs."""
    from tasks import benchmarks  # pylint: disable=g-import-not-at-top
    result = self.evaluate(model, params, partitioner, step)
    results = report.build_results(result.metrics, result.records, benchmarks.category, step,
                                   model_gin, dataclasses.asdict(self.settings))
    if jax.process_index() == 0:
      report.write_all(output_dir, results, result.records)
    return report.scalars(results)
