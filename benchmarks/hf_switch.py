"""The hf_switch case: HF SwitchTransformers (PyTorch, CPU, 2 threads) vs our model, same config.

Both models are built in-process from one HF config (random init, nothing downloaded): HF's
`SwitchTransformersForConditionalGeneration(config)`, and ours from
`moe_flan.convert.hf_switch.config_from_hf` (Switch-classic: ReLU, tied embeddings, HF's
per-sequence absolute expert capacity, 'hf_switch' routing) with our fastest CPU dispatcher.
Timed round-robin in one process: the full forward (HF under torch.no_grad in eval mode; ours
jitted, eval mode) and forward + backward of the training loss (cross-entropy + router losses;
HF in train mode with dropout and jitter 0, gradients for every parameter). Each framework
keeps its gradients its own way: HF's step frees them (`zero_grad(set_to_none=True)`, PyTorch's
default), and its per-expert gradients (4 MiB each) come back from memory the C heap kept;
ours are written into the previous step's buffers, as our trainer does with its CPU opt-in
`OptimizerConfig.reuse_step_buffers` (moe_flan/trainer/step_buffers.py).
Ratios are ours / HF (below 1 = we are faster). Targets: <= 1 at E=8, <= 1/1.3 at E=128.

Each timed call follows an untimed call of the same model (`LEAD_IN`): a training loop runs
its step back to back. Strictly alternating, the other framework's step (~2 s at E=128) sits
between two of ours. XLA frees its per-step buffers (gigabytes at E=128) to the kernel, and a
virtual machine that reports free pages to its host then maps them back in at a higher fault
cost, so alternating would time the host's page reporting rather than the step. PyTorch keeps
its per-expert gradients in the C heap, so the alternation costs it far less.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import context as ctx_lib
from benchmarks import dispatch_choice
from benchmarks import timing
from moe_flan.trainer import step_buffers

CASE = 'hf_switch'
TORCH_THREADS = 2
LEAD_IN = 1           # untimed calls of a model right before each timed one (module doc)


@dataclasses.dataclass(frozen=True)
class SwitchShape:
  d_model: int
  d_ff: int
  heads: int
  d_kv: int
  layers: int
  vocab: int
  batch: int
  length: int                 # encoder and decoder length (HF routes per sequence)
  experts: tuple
  capacity_factor: float = 1.25


FULL = SwitchShape(d_model=512, d_ff=2048, heads=8, d_kv=64, layers=2, vocab=8192, batch=4,
                   length=256, experts=(8, 128))
QUICK = SwitchShape(d_model=32, d_ff=64, heads=2, d_kv=16, layers=2, vocab=128, batch=2,
                    length=16, experts=(8,))


def hf_config(s: SwitchShape, num_experts: int):
  from transformers import SwitchTransformersConfig
  capacity = max(int(np.ceil(s.capacity_factor * s.length / num_experts)), 1)
  return SwitchTransformersConfig(
      vocab_size=s.vocab, d_model=s.d_model, d_kv=s.d_kv, d_ff=s.d_ff, num_heads=s.heads,
      num_layers=s.layers, num_decoder_layers=s.layers, num_sparse_encoder_layers=s.layers // 2,
      num_sparse_decoder_layers=s.layers // 2, num_experts=num_experts, expert_capacity=capacity,
      dropout_rate=0.0, router_jitter_noise=0.0, dense_act_fn='relu', tie_word_embeddings=True,
      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)


def our_config(hf_cfg, s: SwitchShape):
  """Our T5Config of the HF config `hf_cfg` (routing per sequence of s.length, dropout 0) with
  the fastest CPU dispatcher."""
  from moe_flan.convert import hf_switch   # pylint: disable=g-import-not-at-top
  cfg = hf_switch.config_from_hf(hf_cfg.to_dict(), group_size=s.length)
  return dispatch_choice.model_with_dispatch(dataclasses.replace(cfg, dropout_rate=0.0),
                                             dispatch_choice.CPU_DISPATCH)


def _batch(s: SwitchShape) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  tok = lambda: rng.integers(2, s.vocab, (s.batch, s.length)).astype(np.int64)
  targets = tok()
  return {'inputs': tok(), 'targets': targets,
          'decoder_inputs': np.concatenate([np.zeros((s.batch, 1), np.int64), targets[:, :-1]], 1)}


def hf_steps(config, batch) -> tuple[Callable, Callable]:
  """(forward, forward+backward) closures of the HF model."""
  import torch
  from transformers import SwitchTransformersForConditionalGeneration
  torch.set_num_threads(TORCH_THREADS)
  torch.manual_seed(0)
  model = SwitchTransformersForConditionalGeneration(config)
  ids, labels = torch.from_numpy(batch['inputs']), torch.from_numpy(batch['targets'])
  dec = torch.from_numpy(batch['decoder_inputs'])

  def forward():
    model.eval()
    with torch.no_grad():
      return model(input_ids=ids, decoder_input_ids=dec).logits

  def forward_backward():
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, decoder_input_ids=dec, labels=labels, output_router_logits=True)
    out.loss.backward()
    return out.loss.detach()
  return forward, forward_backward


def our_steps(config, batch) -> tuple[Callable, Callable]:
  """(forward, forward+backward) closures of our model, jitted."""
  from moe_flan.model import EncoderDecoder, compute_loss
  model = EncoderDecoder(config)
  enc = jnp.asarray(batch['inputs'], jnp.int32)
  dec = jnp.asarray(batch['decoder_inputs'], jnp.int32)
  tgt = jnp.asarray(batch['targets'], jnp.int32)
  params = jax.jit(model.init)({'params': jax.random.PRNGKey(0),
                                'dropout': jax.random.PRNGKey(1)}, enc, dec, tgt)['params']
  fwd = jax.jit(lambda p: model.apply({'params': p}, enc, dec, tgt))

  def loss_fn(p):
    logits, state = model.apply({'params': p}, enc, dec, tgt, enable_dropout=True,
                                rngs={'dropout': jax.random.PRNGKey(2)}, mutable=['moe_metrics'])
    batch_ = {'decoder_target_tokens': tgt, 'decoder_loss_weights': jnp.ones_like(tgt, jnp.float32)}
    return compute_loss(config, logits, batch_, state['moe_metrics'])[0]
  # As the trainer with reuse_step_buffers: each step's gradients go into the previous step's.
  fb = step_buffers.ReusedGradientBuffers(jax.value_and_grad(loss_fn))
  return (lambda: fwd(params)), (lambda: fb(params))


def run(ctx: ctx_lib.Context) -> list[dict]:
  shape = QUICK if ctx.quick else FULL
  rows = []
  for e in shape.experts:
    hf_cfg = hf_config(shape, e)
    ours_cfg = our_config(hf_cfg, shape)
    batch = _batch(shape)
    hf_fwd, hf_fb = hf_steps(hf_cfg, batch)
    our_fwd, our_fb = our_steps(ours_cfg, batch)
    params = dict(d_model=shape.d_model, d_ff=shape.d_ff, layers=shape.layers, vocab=shape.vocab,
                  batch=shape.batch, length=shape.length, num_experts=e,
                  expert_capacity=hf_cfg.expert_capacity, torch_threads=TORCH_THREADS,
                  dispatch=ours_cfg.moe.dispatch, lead_in=LEAD_IN)
    for mode, ours, theirs in (('forward', our_fwd, hf_fwd),
                               ('forward+backward', our_fb, hf_fb)):
      name = f'E={e} {mode}'
      comparison = timing.compare({'moe_flan': ours, 'hf_torch': theirs}, baseline='hf_torch',
                                  repeats=ctx.repeats, warmup=1, lead_in=LEAD_IN)
      ctx.log(f'{name}: ours/HF {comparison.ratios["moe_flan"].median_s:.2f}')
      rows += ctx_lib.comparison_records(CASE, name, comparison, params)
  return rows
