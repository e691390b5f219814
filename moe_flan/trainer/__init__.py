"""The trainer: what `python -m moe_flan.train / evaluate / infer` run.

Modules (import by name, e.g. `from moe_flan.trainer import loop`):
  loop          train(model_dir, model, data, run, optimizer, checkpoint, eval_data) -- gin entry
  model_setup   build_model_setup(config) -> ModelSetup: partitioner, model, abstract params and
                shardings, restore_params(path) (the one way evaluation, inference and
                moe_flan.load restore params), eval step and mean eval metrics
  builder       build(...) -> TrainSetup: the training side on top of a ModelSetup: input
                checks, optimizer, train-state shardings, checkpointer, jitted train step
  train_step    make_train_step / make_eval_step (loss via moe_flan.model.compute_loss)
  distill       DistillConfig, build_teacher -> Teacher: a frozen teacher inside the train step
                (gin/runs/distill.gin; loss in moe_flan.model.distillation)
  step_buffers  jit_train_step: donated state, or (opt-in, XLA:CPU) buffers kept across steps
  train_state   TrainState(step, params, opt_state, rng)
  optimizers    OptimizerConfig, ScheduleConfig, make_optimizer (Adafactor per-expert factoring,
                AdamW), make_schedule (constant, rsqrt, linear, cosine)
  freezing      parameter groups router / experts / non_expert / embeddings; with_freezing
  checkpoints   CheckpointConfig, Checkpointer (orbax), restore_initial_params; falls back from
                a damaged step to the newest intact one
  checkpoint_integrity  per-step checksums.json: names a truncated or overwritten file
  data          DataConfig, batches (tasks.pipeline), check_task_exists, report_truncation
  final_eval    the end-of-run evaluation on named mixtures (RunConfig.final_eval_mixtures)
  inference     InferConfig, infer (greedy / sampling / beam search)
  checkpoint_eval  evaluate(): restores a checkpoint and runs the evaluation engine
                (moe_flan.evaluation) on it -- the gin entry of `python -m moe_flan.evaluate`
  cli           flags shared by the entry points; gin_checks (missing gin files, unused
                command-line macros, bindings a run never used) and tf_startup (TensorFlow
                without accelerators) serve it
  metrics, progress, plots, nan_guard
"""
