"""Hugging Face SwitchTransformers <-> the Switch-classic moe_flan configuration.

HF Switch is T5 (same backbone tensors, see hf_t5.py) with:
  * non-gated feed-forward blocks (`dense_act_fn`, an ACT2FN name: ReLU for the released
    checkpoints; 'gelu' is the exact GELU, our 'gelu_exact'), the same `d_ff` for dense blocks
    and experts;
  * tied embeddings by default (`tie_word_embeddings`; logits = shared(y * d_model**-0.5));
  * sparse block i of a stack when `i % step == 1 or step == 1`, where
    step = num_layers // num_sparse_layers (num_layers when num_sparse_layers == 0 - which, as
    HF's own comment admits, still makes block 1 sparse) -> our layout 'hf_every' / 'all';
  * top-1 routing with an absolute per-sequence `expert_capacity` -> our 'hf_switch' router
    (moe_flan/moe/routing.py), whose capacity we express as `min_capacity` with a vanishing
    capacity factor (capacity = max(ceil(cf * T / E), min_capacity) = expert_capacity), and
    `routing_groups='sequence'` (HF routes each sequence as one group, whatever its length).

Sparse-block tensors (HF prefix P = {stack}.block.i.layer.{1|2}.mlp):
  P.router.classifier.weight [E, D]          {stack}/layers_i/moe/router/kernel [D, E]
  P.experts.expert_e.wi.weight [F, D] (x E)  {stack}/layers_i/moe/experts/wi [E, D, F]
  P.experts.expert_e.wo.weight [D, F] (x E)  {stack}/layers_i/moe/experts/wo [E, F, D]
Dense blocks: P.wi.weight / P.wo.weight      {stack}/layers_i/mlp/{wi,wo}/kernel
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Tuple

from moe_flan.config import MoeConfig, T5Config, sparse_block_indices
from moe_flan.convert import hf_t5
from moe_flan.convert.tensor_map import Entry

SWITCH_ARCHITECTURES = ('SwitchTransformersForConditionalGeneration',)
SWITCH_MODEL_TYPES = ('switch_transformers',)
# A capacity factor small enough that ceil(cf * T / E) == 1 for any realistic group, so the
# per-expert capacity is exactly `min_capacity` (= HF's absolute expert_capacity).
HF_CAPACITY_FACTOR = 1e-9
ROUTERS_EXPORTABLE = ('hf_switch', 'tokens_choose')


def hf_sparse_blocks(num_layers: int, num_sparse: int) -> Tuple[int, ...]:
  """The sparse block indices HF SwitchTransformers builds for one stack (see module doc)."""
  step = num_layers // num_sparse if num_sparse > 0 else num_layers
  if step <= 0:
    return ()
  return tuple(i for i in range(num_layers) if i % step == 1 or step == 1)


def _layout_for(num_layers: int, num_sparse: int, stack: str) -> Tuple[str, int]:
  """(our sparse layout, every) reproducing HF's sparse blocks for one stack."""
  want = hf_sparse_blocks(num_layers, num_sparse)
  step = num_layers // num_sparse if num_sparse > 0 else num_layers
  for layout, every in (('none', 1), ('all', 1), ('hf_every', max(step, 1))):
    if sparse_block_indices(layout, every, num_layers) == want:
      return layout, every
  raise ValueError(f'HF config: num_sparse_{stack}_layers={num_sparse} with {num_layers} layers '
                   f'makes blocks {want} sparse, which no moe_flan layout reproduces')


def _num_sparse_for(blocks: Tuple[int, ...], num_layers: int, stack: str) -> int:
  """The HF num_sparse_{stack}_layers value that builds exactly `blocks` sparse."""
  # num_layers + 1 gives step 0, i.e. no sparse block (HF's only way to express "none").
  for num_sparse in list(range(1, num_layers + 2)) + [0]:
    if hf_sparse_blocks(num_layers, num_sparse) == blocks:
      return num_sparse
  raise ValueError(f'MoeConfig.{stack}_sparse_layout: sparse blocks {blocks} of {num_layers} '
                   'cannot be expressed by HF SwitchTransformers (it makes blocks with '
                   'i % step == 1 sparse, step = num_layers // num_sparse_layers)')


def config_from_hf(hf: Mapping, group_size: Optional[int] = None) -> T5Config:
  """Switch-classic `T5Config` (router 'hf_switch') from a HF SwitchTransformers config dict.

  group_size: None (default) routes each sequence as one group, as HF does (exact for every
  batch size and length); a number routes groups of that many tokens spanning sequences
  (`routing_groups='group_size'`, flaxformer style), HF-exact only when it equals the length
  of both the encoder and decoder inputs.
  """
  hf_t5.check_architecture(hf, SWITCH_ARCHITECTURES, SWITCH_MODEL_TYPES)
  if group_size is not None and int(group_size) < 1:
    raise ValueError(f'group_size={group_size}: tokens per routing group must be >= 1 (or None: '
                     'one group per sequence, as HF)')
  if hf.get('router_bias', False):
    raise ValueError('HF config: router_bias=true is not supported (moe_flan routers have no bias)')
  act = hf.get('dense_act_fn', 'relu')
  if '-' in act:
    raise ValueError(f'HF config: dense_act_fn={act!r}: HF Switch blocks are non-gated and look '
                     'the name up in ACT2FN as it is; expected one activation name such as "relu"')
  acts = (hf_t5.activation_from_hf(act, f'dense_act_fn={act!r}'),)
  capacity = int(hf.get('expert_capacity', 64))
  if capacity < 1:
    raise ValueError(f'HF config: expert_capacity={capacity}: must be >= 1 (0 drops every token)')
  kwargs = hf_t5.backbone_kwargs(hf)
  enc_layout, enc_every = _layout_for(kwargs['num_encoder_layers'],
                                      int(hf.get('num_sparse_encoder_layers', 3)), 'encoder')
  dec_layout, dec_every = _layout_for(kwargs['num_decoder_layers'],
                                      int(hf.get('num_sparse_decoder_layers', 3)), 'decoder')
  moe = MoeConfig(
      num_experts=int(hf.get('num_experts', 8)), num_selected_experts=1, router_type='hf_switch',
      dispatch='einsum', group_size=int(group_size or 512),   # 512: unused per sequence
      routing_groups='sequence' if group_size is None else 'group_size',
      train_capacity_factor=HF_CAPACITY_FACTOR, eval_capacity_factor=HF_CAPACITY_FACTOR,
      min_capacity=capacity, jitter_noise=float(hf.get('router_jitter_noise', 0.01)),
      load_balancing_loss_weight=float(hf.get('router_aux_loss_coef', 1e-3)),
      router_z_loss_weight=float(hf.get('router_z_loss_coef', 1e-3)),
      expert_mlp_dim=kwargs['mlp_dim'], expert_activations=acts,
      encoder_sparse_layout=enc_layout, encoder_sparse_every=enc_every,
      decoder_sparse_layout=dec_layout, decoder_sparse_every=dec_every)
  return T5Config(**kwargs, mlp_activations=acts,
                  logits_via_embedding=bool(hf.get('tie_word_embeddings', True)), moe=moe)


def _export_problems(config: T5Config) -> List[str]:
  moe = config.moe
  problems = []
  if moe is None:
    return ['T5Config.moe is None: a dense model exports as T5 (moe_flan.convert.hf_t5)']
  if len(config.mlp_activations) != 1:
    problems.append(f'T5Config.mlp_activations={tuple(config.mlp_activations)!r}: HF Switch '
                    'blocks are non-gated (one activation)')
  if tuple(moe.expert_activations) != tuple(config.mlp_activations):
    problems.append(f'MoeConfig.expert_activations={tuple(moe.expert_activations)!r} != '
                    f'mlp_activations={tuple(config.mlp_activations)!r} (HF uses one dense_act_fn)')
  if moe.expert_mlp_dim != config.mlp_dim:
    problems.append(f'MoeConfig.expert_mlp_dim={moe.expert_mlp_dim} != mlp_dim={config.mlp_dim} '
                    '(HF uses one d_ff)')
  for name in ('router_type', 'decoder_effective_router_type'):
    if getattr(moe, name) not in ROUTERS_EXPORTABLE:
      problems.append(f'MoeConfig.{name}={getattr(moe, name)!r}: HF Switch routes top-1 '
                      f'tokens-choose; choose one of {ROUTERS_EXPORTABLE}')
  for name in ('num_selected_experts', 'decoder_effective_num_selected_experts'):
    if getattr(moe, name) != 1:
      problems.append(f'MoeConfig.{name}={getattr(moe, name)}: HF Switch is top-1')
  if moe.extra_dense_mlp:
    problems.append('MoeConfig.extra_dense_mlp=True: HF Switch has no extra dense MLP')
  return problems


def hf_expert_capacity(moe: MoeConfig) -> int:
  """HF's absolute per-sequence capacity: exact for 'hf_switch', else the eval capacity of one
  group of `group_size` tokens (HF has no capacity factor)."""
  if moe.router_type == 'hf_switch':
    return int(moe.min_capacity)
  return int(max(math.ceil(moe.eval_capacity_factor * moe.group_size / moe.num_experts),
                 moe.min_capacity))


def config_to_hf(config: T5Config) -> Dict:
  """HF SwitchTransformers config.json dict (ValueError listing what HF cannot express)."""
  problems = _export_problems(config)
  num_sparse = {}
  if not problems:
    for stack, blocks, n in (
        ('encoder', config.encoder_sparse_blocks(), config.num_encoder_layers),
        ('decoder', config.decoder_sparse_blocks(), config.num_decoder_layers)):
      try:
        num_sparse[stack] = _num_sparse_for(blocks, n, stack)
      except ValueError as e:
        problems.append(str(e))
  if problems:
    raise ValueError('config cannot be exported as HF SwitchTransformers:\n  ' +
                     '\n  '.join(problems))
  moe = config.moe
  return dict(
      hf_t5.backbone_to_hf(config), architectures=list(SWITCH_ARCHITECTURES),
      model_type='switch_transformers', num_experts=moe.num_experts,
      expert_capacity=hf_expert_capacity(moe),
      num_sparse_encoder_layers=num_sparse['encoder'],
      num_sparse_decoder_layers=num_sparse['decoder'],
      dense_act_fn=hf_t5.feed_forward_proj_from_activations(config.mlp_activations),
      router_bias=False, router_jitter_noise=moe.jitter_noise, router_dtype='float32',
      router_ignore_padding_tokens=False, router_z_loss_coef=moe.router_z_loss_weight,
      router_aux_loss_coef=moe.load_balancing_loss_weight, initializer_factor=1.0,
      add_router_probs=False)


def _moe_entries(config: T5Config, hf_ff: str, ours: str) -> List[Entry]:
  d, f, e = config.emb_dim, config.moe.expert_mlp_dim, config.moe.num_experts
  p = f'{hf_ff}.mlp'
  return [
      Entry(f'{ours}/moe/router/kernel', (f'{p}.router.classifier.weight',), 'linear', (d, e)),
      Entry(f'{ours}/moe/experts/wi', tuple(f'{p}.experts.expert_{x}.wi.weight' for x in range(e)),
            'experts', (e, d, f)),
      Entry(f'{ours}/moe/experts/wo', tuple(f'{p}.experts.expert_{x}.wo.weight' for x in range(e)),
            'experts', (e, f, d)),
  ]


def entries(config: T5Config) -> List[Entry]:
  """The full HF SwitchTransformers <-> moe_flan correspondence for a Switch-classic config."""
  if config.moe is None:
    raise ValueError('T5Config.moe is None; use moe_flan.convert.hf_t5 for dense models')
  sparse = {'encoder': set(config.encoder_sparse_blocks()),
            'decoder': set(config.decoder_sparse_blocks())}

  def ffn(stack, i, hf_ff, ours):
    if i in sparse[stack]:
      return _moe_entries(config, hf_ff, ours)
    return hf_t5.dense_mlp_entries(config, hf_ff, f'{ours}/mlp', 'mlp', config.mlp_activations)
  return hf_t5.backbone_entries(config, ffn)


def ignorable(config: T5Config) -> Tuple[str, ...]:
  return hf_t5.ignorable(config)


def embedding_copies(config: T5Config) -> Tuple[str, ...]:
  """Copies of shared.weight an export must also write: transformers 4.57 does not re-tie the
  stacks' embed_tokens to `shared` for an untied Switch model and would leave them random."""
  if config.logits_via_embedding:
    return ()
  return ('encoder.embed_tokens.weight', 'decoder.embed_tokens.weight')
