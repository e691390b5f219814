"""MoeLayer: the sparse feed-forward block (group -> route -> dispatch -> experts -> combine).

    MoeLayer(config: MoeConfig, emb_dim: int, router_type: str, num_selected_experts: int,
             dtype=jnp.float32)(x <float>[B, L, D], padding_mask <bool|float>[B, L] | None,
                                 enable_dropout: bool = False) -> <dtype>[B, L, D]

Params: router/kernel <float32>[D, E]; experts/{wi_0, wi_1 | wi} <float32>[E, D, F];
experts/wo <float32>[E, F, D] (see experts.py for axes).

Tokens are split into G groups of T tokens as `config.routing_groups` says (capacity.py): at
evaluation and decoding any batch size and length works, the last group completed with padding
tokens that are never routed; training keeps groups exact.
`router_type` picks the routing strategy from `ROUTERS` (routing.py) and `config.dispatch` the
dispatcher from `DISPATCHERS` (dispatch.py). `enable_dropout=True` is training: train capacity
factor, router jitter and expert dropout on (rng stream 'dropout'). Per call the layer sows into
'moe_metrics' the scalars 'load_balancing_loss', 'router_z_loss', 'fraction_dropped',
'top1_prob' and 'expert_load' <float32>[E] (losses.py); the caller weights and adds the losses.
With a dropless dispatcher tokens-choose routing runs with capacity = T (nothing is dropped);
experts-choose always uses the configured capacity.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from moe_flan import axes
from moe_flan.config import MoeConfig
from moe_flan.moe import capacity as capacity_lib
from moe_flan.moe import dispatch as dispatch_lib
from moe_flan.moe import losses
from moe_flan.moe import resharding
from moe_flan.moe import routing as routing_lib
from moe_flan.moe.experts import ExpertFFN, ExpertParams

_TOKEN_AXES = (axes.BATCH, axes.LENGTH, axes.EMBED)   # grouped tokens <[G, T, D]>


def check_config(cfg: MoeConfig) -> None:
  """Raises a one-line ValueError for a router or dispatcher name that is neither built in nor
  registered, or a capacity factor <= 0 with a dispatcher that has a capacity. `MoeConfig`
  checks everything else itself; these names live here, where the routers and dispatchers are.
  """
  for name in ('router_type', 'decoder_router_type'):
    value = getattr(cfg, name)
    if value is not None and value not in routing_lib.router_names():
      raise ValueError(f'Bad config: MoeConfig.{name}={value!r}: unknown router; choose one of '
                       f'{routing_lib.router_names()} (or add one with '
                       'moe_flan.moe.register_router)')
  dispatch_lib.get_dispatcher(cfg.dispatch)
  if not dispatch_lib.is_dropless(cfg.dispatch):
    for name in ('train_capacity_factor', 'eval_capacity_factor'):
      if getattr(cfg, name) <= 0:
        raise ValueError(f'Bad config: MoeConfig.{name}={getattr(cfg, name)!r}: must be > 0 '
                         f'with the capacity-based dispatch {cfg.dispatch!r}')


class MoeLayer(nn.Module):
  """Sparse MoE feed-forward block; see the module docstring."""
  config: MoeConfig
  emb_dim: int
  router_type: str
  num_selected_experts: int
  dtype: Any = jnp.float32

  def _capacity(self, tokens_per_group: int, training: bool) -> int:
    cfg = self.config
    if dispatch_lib.is_dropless(cfg.dispatch) and self.router_type != 'experts_choose':
      return tokens_per_group
    return capacity_lib.expert_capacity(
        tokens_per_group, cfg.num_experts, self.num_selected_experts,
        cfg.capacity_factor(training), cfg.min_capacity, cfg.capacity_convention)

  @nn.compact
  def __call__(self, x: jax.Array, padding_mask: Optional[jax.Array] = None,
               enable_dropout: bool = False) -> jax.Array:
    cfg = self.config
    b, l, d = x.shape
    if d != self.emb_dim:
      raise ValueError(f'MoeLayer: input width {d} != emb_dim={self.emb_dim}')
    if not 1 <= self.num_selected_experts <= cfg.num_experts:
      raise ValueError(f'Bad config: num_selected_experts={self.num_selected_experts!r}: must '
                       f'be between 1 and num_experts={cfg.num_experts}')
    check_config(cfg)
    route = routing_lib.get_router(self.router_type)
    dispatch = dispatch_lib.get_dispatcher(cfg.dispatch)
    g, t = capacity_lib.token_groups(b, l, cfg.group_size, cfg.routing_groups, enable_dropout)
    if padding_mask is not None and tuple(padding_mask.shape) != (b, l):
      raise ValueError(f'MoeLayer: padding_mask shape {tuple(padding_mask.shape)} != inputs\' '
                       f'[batch, length] {(b, l)}')
    real = (jnp.ones((b * l,), bool) if padding_mask is None
            else jnp.asarray(padding_mask).reshape(b * l) > 0)
    tokens = x.reshape(b * l, d).astype(self.dtype)
    fill = g * t - b * l   # trailing padding that completes the last group (never routed)
    if fill:
      tokens = jnp.pad(tokens, ((0, fill), (0, 0)))
      real = jnp.pad(real, (0, fill))
    tokens = resharding.constrain(tokens.reshape(g, t, d), _TOKEN_AXES)
    real = real.reshape(g, t)

    logits = routing_lib.Router(cfg.num_experts, cfg.router_init_std, cfg.jitter_noise,
                                name='router')(tokens, enable_dropout)
    routing = route(logits, real, num_selected_experts=self.num_selected_experts,
                    capacity=self._capacity(t, enable_dropout),
                    batch_prioritized_routing=cfg.batch_prioritized_routing)

    weights = ExpertParams(cfg.num_experts, d, cfg.expert_mlp_dim, tuple(cfg.expert_activations),
                           name='experts')()
    use_dropout = enable_dropout and cfg.expert_dropout_rate > 0
    ffn = ExpertFFN(weights, tuple(cfg.expert_activations), self.dtype,
                    cfg.expert_dropout_rate, self.make_rng('dropout') if use_dropout else None,
                    cfg.grouped_matmul)
    y = dispatch(routing, tokens, ffn)
    y = resharding.constrain(y.astype(self.dtype), _TOKEN_AXES)

    metrics = losses.router_metrics(
        logits, real, routing, cfg.load_balancing_convention, self.num_selected_experts,
        experts_choose=self.router_type == 'experts_choose')
    for name, value in metrics.items():
      self.sow('moe_metrics', name, value)
    return y.reshape(g * t, d)[:b * l].reshape(b, l, d)
