"""The train_step case: the jitted train step (forward, backward, Adafactor update) of whole models.

Reports tokens/s (encoder + decoder tokens) and model FLOP utilisation: the step's model FLOPs
per second (flops.py: useful matmul work, active experts only) over the XLA matmul rate. The
matmul is timed round-robin with the step in the same process (rounds of: step, matmul), so
the utilisation is a per-round ratio that machine drift largely cancels out of.

Models:
  quickstart       gin/models/flan_moe_tiny.gin at the quickstart's batch (16 x 128 -> 32)
  base-like        Switch-base-like: d_model 768, 12 heads, gated-GELU d_ff 2048, 2+2 blocks,
                   one sparse block per stack (8 experts, top-1) -- base width, few layers
  base-like dense  its dense twin (T5.1.1-base width, 2+2 blocks)
  (gpu suite) switch-base-like: the same at bf16 with 128 experts, 4+4 blocks, Switch-base's
                   batch (256 x 512 -> 128), twice: with the suite's dispatcher and with
                   'dropless' on JAX's Hopper grouped-matmul kernels ('switch-base-like
                   dropless'); and its dense twin. Why that batch: with 2.5B parameters
                   (10 GB in f32) the gradients, the optimizer update and the bf16 weight
                   copies move several times 10 GB per step whatever the batch (>= 10 ms at
                   4.8 TB/s), against 6.4 ms of model FLOPs at batch 32 on an H200 (51 ms at
                   256): only a large batch lets the matmuls dominate.
MoE models use the suite's dispatcher unless the workload names one (dispatch_choice).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Optional

import gin
import jax
import numpy as np

from benchmarks import context as ctx_lib
from benchmarks import dispatch_choice
from moe_flan.model import flops as flops_lib
from benchmarks import peak as peak_lib
from benchmarks import timing
from moe_flan.config import MoeConfig, T5Config

CASE = 'train_step'
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Step rates measured in this process, read by the input-pipeline case: name -> examples/s.
MEASURED_EXAMPLES_PER_S: dict[str, float] = {}


@dataclasses.dataclass(frozen=True)
class Workload:
  name: str
  config: T5Config
  batch: int
  inputs_len: int
  targets_len: int
  dispatch: Optional[str] = None      # None: the suite's (dispatch_choice)


def gin_model(path: str) -> T5Config:
  """The T5Config a gin model file binds (parsed in a clean gin scope)."""
  with gin.unlock_config():
    gin.clear_config()
    gin.parse_config_file(os.path.join(REPO, path))
    cfg = T5Config()
    gin.clear_config()
  return cfg


def base_like(num_experts: Optional[int], layers: int, dtype: str = 'float32') -> T5Config:
  moe = None
  if num_experts:
    moe = MoeConfig(num_experts=num_experts, num_selected_experts=1, group_size=4096,
                    expert_mlp_dim=2048, expert_activations=('gelu', 'linear'))
  return T5Config(vocab_size=32128, emb_dim=768, num_heads=12, head_dim=64,
                  num_encoder_layers=layers, num_decoder_layers=layers, mlp_dim=2048,
                  dtype=dtype, moe=moe)


def workloads(suite: str, quick: bool) -> list[Workload]:
  if quick:
    tiny = T5Config(vocab_size=512, emb_dim=32, num_heads=2, head_dim=16, num_encoder_layers=2,
                    num_decoder_layers=2, mlp_dim=64,
                    moe=MoeConfig(num_experts=4, num_selected_experts=2, expert_mlp_dim=64))
    return [Workload('quickstart', tiny, 4, 32, 8)]
  if suite == 'gpu':
    switch = base_like(128, 4, 'bfloat16')
    return [Workload('switch-base-like', switch, 256, 512, 128),
            Workload('switch-base-like dropless', switch, 256, 512, 128, 'dropless mosaic_gpu'),
            Workload('base-like dense', base_like(None, 4, 'bfloat16'), 256, 512, 128)]
  return [Workload('quickstart', gin_model('gin/models/flan_moe_tiny.gin'), 16, 128, 32),
          Workload('base-like', base_like(8, 2), 4, 256, 64),
          Workload('base-like dense', base_like(None, 2), 4, 256, 64)]


def workload_config(w: Workload, suite: str) -> T5Config:
  """The model `w` runs in `suite`: its config with its own or the suite's dispatcher."""
  return dispatch_choice.model_with_dispatch(w.config,
                                             w.dispatch or dispatch_choice.for_suite(suite))


def random_batch(w: Workload, seed: int = 0) -> dict[str, np.ndarray]:
  """Unpacked batch of random non-padding tokens (every position is a real token)."""
  rng = np.random.default_rng(seed)
  tok = lambda n: rng.integers(2, w.config.vocab_size, (w.batch, n)).astype(np.int32)
  targets = tok(w.targets_len)
  decoder_inputs = np.concatenate([np.zeros((w.batch, 1), np.int32), targets[:, :-1]], 1)
  return {'encoder_input_tokens': tok(w.inputs_len), 'decoder_input_tokens': decoder_inputs,
          'decoder_target_tokens': targets,
          'decoder_loss_weights': np.ones((w.batch, w.targets_len), np.float32)}


def step_parts(cfg: T5Config, lengths: dict[str, int]
               ) -> tuple[Callable[[jax.Array], object], Callable[[bool], Callable]]:
  """(rng -> step-0 train state, make_step(return_grads) -> the trainer's train step) of a
  model with Adafactor at a constant LR, for batches of `lengths` ('inputs', 'targets')."""
  from moe_flan.model import EncoderDecoder
  from moe_flan.trainer import optimizers, train_state as ts
  from moe_flan.trainer import train_step as step_lib
  model = EncoderDecoder(cfg)
  opt_cfg = optimizers.OptimizerConfig(
      name='adafactor', schedule=optimizers.ScheduleConfig(name='constant'))
  schedule = optimizers.make_schedule(opt_cfg.schedule)
  tx = optimizers.make_optimizer(opt_cfg, schedule)
  init = ts.init_params_fn(model, lengths)

  def init_state(rng: jax.Array):
    return ts.new_state(init(rng), tx, rng)
  abstract_state = jax.eval_shape(init_state, jax.random.PRNGKey(0))
  frozen = jax.tree.map(lambda _: False, abstract_state.params)

  def make_step(return_grads: bool) -> Callable:
    return step_lib.make_train_step(model, cfg, tx, schedule, frozen, return_grads=return_grads)
  return init_state, make_step


def build_step(cfg: T5Config, batch: dict,
               reuse_step_buffers: bool = False) -> Callable[[], object]:
  """A closure running one jitted train step (Adafactor, constant LR) on `batch`, its state
  carried from call to call through the trainer's `step_buffers.jit_train_step` (by default the
  state donated; reuse_step_buffers: state double-buffered, gradients kept)."""
  from moe_flan.trainer import step_buffers
  lengths = {'inputs': batch['encoder_input_tokens'].shape[1],
             'targets': batch['decoder_input_tokens'].shape[1]}
  init_state, make_step = step_parts(cfg, lengths)
  state = jax.jit(init_state)(jax.random.PRNGKey(0))
  step = step_buffers.jit_train_step(make_step, reuse_step_buffers)
  device_batch = jax.device_put(batch)
  holder = {'state': state}

  def run():
    holder['state'], metrics = step(holder['state'], device_batch)
    return metrics['loss']
  return run


def measure(ctx: ctx_lib.Context, w: Workload) -> dict:
  cfg = workload_config(w, ctx.suite)
  step = build_step(cfg, random_batch(w))
  timing.block(step())                                            # compile
  mm_fn, mm_flops = peak_lib.matmul_fn(int(ctx.peak['size']), ctx.dtype)
  timing.block(mm_fn())
  # Whole-model steps are long and their spread is small next to the MoE-layer cases'.
  comparison = timing.compare({'train_step': step, 'matmul': mm_fn}, baseline='matmul',
                              repeats=min(ctx.repeats, 3), warmup=1)
  t = comparison.timings['train_step']
  step_flops = flops_lib.train_step_flops(cfg, w.batch, w.inputs_len, w.targets_len)
  # MFU per round = (step FLOPs / step time) / (matmul FLOPs / matmul time).
  mfu = step_flops / mm_flops / comparison.ratios['train_step'].median_s
  tokens = w.batch * (w.inputs_len + w.targets_len)
  MEASURED_EXAMPLES_PER_S[w.name] = w.batch / t.median_s
  metrics = {'tokens_per_s': tokens / t.median_s, 'examples_per_s': w.batch / t.median_s,
             'model_flops_per_step': step_flops, 'model_flops_per_s': step_flops / t.median_s,
             'matmul_flops_per_s': mm_flops / comparison.timings['matmul'].median_s,
             'mfu_vs_peak': mfu}
  params = {'batch': w.batch, 'inputs_len': w.inputs_len, 'targets_len': w.targets_len,
            'emb_dim': cfg.emb_dim, 'layers': cfg.num_encoder_layers, 'dtype': cfg.dtype,
            'num_experts': cfg.moe.num_experts if cfg.moe else 0,
            'dispatch': cfg.moe.dispatch if cfg.moe else None,
            'grouped_matmul': cfg.moe.grouped_matmul if cfg.moe else None}
  ctx.log(f'{w.name}: {metrics["tokens_per_s"]:.0f} tokens/s, MFU {mfu:.1%} of the matmul rate')
  return ctx_lib.record(CASE, w.name, 'train_step', time=t, baseline='matmul',
                        ratio=comparison.ratios['train_step'], metrics=metrics, params=params)


def run(ctx: ctx_lib.Context) -> list[dict]:
  rows = []
  for w in workloads(ctx.suite, ctx.quick):
    try:
      rows.append(measure(ctx, w))
    except Exception as e:  # noqa: BLE001  (record and continue with the next model)
      ctx.log(f'{w.name} failed: {type(e).__name__}: {e}'[:300])
      rows.append(ctx_lib.record(CASE, w.name, 'train_step', status='failed',
                                 reason=f'{type(e).__name__}: {str(e)[:300]}'))
  return rows
