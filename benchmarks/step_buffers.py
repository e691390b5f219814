"""The trainer's opt-in step buffers (moe_flan/trainer/step_buffers.py) against its default step.

The same jitted train step (forward, backward, Adafactor) of one model, built twice through
`step_buffers.jit_train_step`: with `OptimizerConfig.reuse_step_buffers` (gradients into the
previous step's buffers, the new state into the buffers of the state before last) and with the
default donated state (fresh gradients; XLA may copy the params it updates in place). Timed
round-robin, each call after an untimed call of itself (`lead_in`, as in the hf_switch case: a
training loop runs its steps back to back).
Ratio: kept buffers / donated state (below 1 = the step buffers are faster).

Models: base-like (the train_step case, 8 experts) and the hf_switch case's Switch config at
E=128 (d_model 512, d_ff 2048, 2+2 blocks, 4 x (256 -> 256), ~2.2 GB of params), where the
expert kernels dominate.
"""
from __future__ import annotations

from benchmarks import context as ctx_lib
from benchmarks import timing
from benchmarks import train_step as train_step_lib

CASE = 'step_buffers'
LEAD_IN = 1


def switch_config_workload(num_experts: int) -> train_step_lib.Workload:
  """The hf_switch case's HF Switch config (routing per sequence of 256) as a train-step workload."""
  from benchmarks import hf_switch   # pylint: disable=g-import-not-at-top
  shape = hf_switch.FULL
  cfg = hf_switch.our_config(hf_switch.hf_config(shape, num_experts), shape)
  return train_step_lib.Workload(f'switch-config E={num_experts}', cfg, shape.batch,
                                 shape.length, shape.length)


def workloads(quick: bool) -> list[train_step_lib.Workload]:
  if quick:
    return train_step_lib.workloads('cpu', quick=True)
  base_like = [w for w in train_step_lib.workloads('cpu', quick=False) if w.name == 'base-like']
  return base_like + [switch_config_workload(128)]


def measure(ctx: ctx_lib.Context, w: train_step_lib.Workload) -> list[dict]:
  cfg = train_step_lib.workload_config(w, 'cpu')
  batch = train_step_lib.random_batch(w)
  steps = {'kept step buffers': train_step_lib.build_step(cfg, batch, True),
           'donated state': train_step_lib.build_step(cfg, batch, False)}
  comparison = timing.compare(steps, baseline='donated state', repeats=min(ctx.repeats, 3),
                              warmup=1, lead_in=LEAD_IN)
  ratio = comparison.ratios['kept step buffers']
  ctx.log(f'{w.name}: kept step buffers / donated state {ratio.median_s:.2f} '
          f'[{ratio.min_s:.2f}-{ratio.max_s:.2f}]')
  params = {'batch': w.batch, 'inputs_len': w.inputs_len, 'targets_len': w.targets_len,
            'num_experts': cfg.moe.num_experts, 'dispatch': cfg.moe.dispatch,
            'lead_in': LEAD_IN}
  return ctx_lib.comparison_records(CASE, w.name, comparison, params)


def run(ctx: ctx_lib.Context) -> list[dict]:
  rows = []
  for w in workloads(ctx.quick):
    try:
      rows += measure(ctx, w)
    except Exception as e:  # noqa: BLE001  (record and continue with the next model)
      ctx.log(f'{w.name} failed: {type(e).__name__}: {e}'[:300])
      rows.append(ctx_lib.record(CASE, w.name, 'kept step buffers', status='failed',
                                 reason=f'{type(e).__name__}: {str(e)[:300]}'))
  return rows
