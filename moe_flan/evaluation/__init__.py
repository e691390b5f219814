"""Evaluation the t5x/seqio way: `seqio.Evaluator` driven by our decoding and scoring.

Modules (import by name, e.g. `from moe_flan.evaluation import engine`):
  engine     EvalSettings, Engine (seqio.Evaluator over a mixture), EvalResult
  model_fns  ModelFns: the Evaluator's predict_fn (greedy / beam) and score_fn, fixed-shape
             batches sharded over the mesh
  scoring    score_rows: rank classification with each prompt encoded once
  records    per-example records (predictions/{task}.jsonl)
  report     results.json (task / category / overall, with n and standard errors), TensorBoard
             scalars, the markdown table
Tasks declare their postprocessors and metrics in `tasks/eval_metrics.py`; benchmarks a user
brings (MMLU, BBH, BIG-bench) are registered by `tasks/benchmarks.py`. The package sits below
the trainer and takes a model, params and a partitioner; restoring a checkpoint to evaluate it
(`python -m moe_flan.evaluate`) is `moe_flan.trainer.checkpoint_eval`.
"""
