"""Hugging Face T5 v1.1 / FLAN-T5 / mT5 (`T5ForConditionalGeneration`,
`MT5ForConditionalGeneration`) <-> the dense moe_flan model.

Config: HF config.json fields <-> `T5Config`:
  d_model -> emb_dim, d_kv -> head_dim, d_ff -> mlp_dim, num_heads, num_layers ->
  num_encoder_layers, num_decoder_layers (default num_layers), vocab_size,
  relative_attention_{num_buckets,max_distance}, layer_norm_epsilon, dropout_rate,
  feed_forward_proj ('gated-gelu' -> ('gelu', 'linear'), 'relu' -> ('relu',), exact 'gelu' ->
  ('gelu_exact',), ...),
  tie_word_embeddings -> logits_via_embedding (HF then scales decoder outputs by d_model**-0.5,
  which is our `embedding.attend(y) / sqrt(D)`).

Tensors (HF name -> our path; see tensor_map.py for the layouts):
  shared.weight                                          token_embedder/embedding
  {enc,dec}oder.block.0.layer.0.SelfAttention.relative_attention_bias.weight
                                                         {stack}/relpos_bias/rel_embedding
  encoder.block.i.layer.0.SelfAttention.{q,k,v,o}        encoder/layers_i/attention/{query,...}
  encoder.block.i.layer.0.layer_norm                     .../pre_attention_layer_norm/scale
  encoder.block.i.layer.1.layer_norm                     .../pre_mlp_layer_norm/scale
  encoder.block.i.layer.1.DenseReluDense.{wi_0,wi_1,wo}  encoder/layers_i/mlp/{wi_0,wi_1,wo}/kernel
  decoder.block.i.layer.0.SelfAttention / layer_norm     decoder/layers_i/self_attention /
                                                         pre_self_attention_layer_norm
  decoder.block.i.layer.1.EncDecAttention / layer_norm   .../encoder_decoder_attention /
                                                         pre_cross_attention_layer_norm
  decoder.block.i.layer.2.*                              .../pre_mlp_layer_norm, mlp
  {enc,dec}oder.final_layer_norm.weight                  encoder/encoder_norm, decoder/decoder_norm
  lm_head.weight                                         decoder/logits_dense/kernel (untied only)
The backbone part (everything but the feed-forward blocks) is shared with hf_switch.py.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Sequence, Tuple

from moe_flan.config import T5Config
from moe_flan.convert.tensor_map import Entry

T5_ARCHITECTURES = ('T5ForConditionalGeneration', 'MT5ForConditionalGeneration')
T5_MODEL_TYPES = ('t5', 'mt5')  # mT5 is T5 v1.1 (same tensors and config fields), larger vocab

# HF activation names (transformers' ACT2FN keys) -> ours (moe_flan.layers.mlp.ACTIVATIONS).
# In ACT2FN 'gelu' and 'gelu_python' are the exact erf GELU (our 'gelu_exact'); 'gelu_new' and
# 'gelu_pytorch_tanh' the tanh approximation (our 'gelu', flaxformer's and T5 v1.1's GELU).
_HF_TO_OURS_ACT = {'gelu': 'gelu_exact', 'gelu_python': 'gelu_exact', 'gelu_new': 'gelu',
                   'gelu_pytorch_tanh': 'gelu', 'relu': 'relu', 'silu': 'silu', 'swish': 'silu'}
_OURS_TO_HF_ACT = {'gelu': 'gelu_new', 'gelu_exact': 'gelu', 'relu': 'relu', 'silu': 'silu'}

# Tensors HF checkpoints may carry that hold no information of their own.
IGNORABLE = ('encoder.embed_tokens.weight', 'decoder.embed_tokens.weight',
             'decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight')

FfnEntries = Callable[[str, int, str, str], List[Entry]]


def activation_from_hf(act: str, field: str) -> str:
  """One HF activation name (an ACT2FN key) -> ours; ValueError naming the config `field`."""
  if act not in _HF_TO_OURS_ACT:
    raise ValueError(f'HF config: {field}: activation {act!r} is not supported (supported: '
                     f'{sorted(_HF_TO_OURS_ACT)})')
  return _HF_TO_OURS_ACT[act]


def activations_from_feed_forward_proj(proj: str) -> Tuple[str, ...]:
  """HF T5 `feed_forward_proj` ('gated-gelu', 'relu', ...) -> our activations tuple."""
  parts = proj.split('-')
  gated = len(parts) == 2 and parts[0] == 'gated'
  if len(parts) > 2 or (len(parts) == 2 and not gated):
    raise ValueError(f'HF config: feed_forward_proj={proj!r}: expected "ACT" or "gated-ACT"')
  act = 'gelu_new' if proj == 'gated-gelu' else parts[-1]  # HF's own backwards-compat rule
  ours = activation_from_hf(act, f'feed_forward_proj={proj!r}')
  return (ours, 'linear') if gated else (ours,)


def feed_forward_proj_from_activations(acts: Sequence[str]) -> str:
  """Inverse of `activations_from_feed_forward_proj`; ValueError if HF T5 cannot express it."""
  acts = tuple(acts)
  if len(acts) == 1 and acts[0] in _OURS_TO_HF_ACT:
    return _OURS_TO_HF_ACT[acts[0]]
  if len(acts) == 2 and acts[1] == 'linear' and acts[0] in _OURS_TO_HF_ACT:
    if acts[0] == 'gelu':
      return 'gated-gelu'          # which HF reads as gelu_new, the tanh approximation
    if acts[0] == 'gelu_exact':
      return 'gated-gelu_python'   # 'gated-gelu' would mean gelu_new; gelu_python is exact
    return f'gated-{_OURS_TO_HF_ACT[acts[0]]}'
  raise ValueError(f'T5Config.mlp_activations={acts!r}: HF T5 supports (ACT,) or (ACT, "linear") '
                   f'with ACT in {sorted(_OURS_TO_HF_ACT)}')


def check_architecture(hf_config: Mapping, architectures: Sequence[str],
                       model_types: Sequence[str]) -> None:
  """ValueError unless config.json describes one of `architectures` / `model_types`."""
  archs = list(hf_config.get('architectures') or [])
  model_type = hf_config.get('model_type')
  if archs and not set(archs) & set(architectures):
    raise ValueError(f'HF config: architectures={archs!r} is not supported here; expected one of '
                     f'{list(architectures)}')
  if model_type not in model_types:
    raise ValueError(f'HF config: model_type={model_type!r} is not supported here; expected one '
                     f'of {list(model_types)}')
  if not hf_config.get('is_encoder_decoder', True):
    raise ValueError('HF config: is_encoder_decoder=false; only encoder-decoder models convert')


def backbone_kwargs(hf: Mapping) -> Dict:
  """T5Config kwargs shared by T5 and SwitchTransformers configs."""
  missing = [k for k in ('d_model', 'd_kv', 'num_heads', 'num_layers', 'vocab_size', 'd_ff')
             if k not in hf]
  if missing:
    raise ValueError(f'HF config: missing fields {missing}')
  num_layers = int(hf['num_layers'])
  return dict(
      vocab_size=int(hf['vocab_size']), emb_dim=int(hf['d_model']), num_heads=int(hf['num_heads']),
      head_dim=int(hf['d_kv']), num_encoder_layers=num_layers,
      num_decoder_layers=int(hf.get('num_decoder_layers') or num_layers),
      mlp_dim=int(hf['d_ff']),
      dropout_rate=float(hf.get('dropout_rate', 0.1)),
      relative_attention_num_buckets=int(hf.get('relative_attention_num_buckets', 32)),
      relative_attention_max_distance=int(hf.get('relative_attention_max_distance', 128)),
      layer_norm_epsilon=float(hf.get('layer_norm_epsilon', 1e-6)))


def backbone_to_hf(config: T5Config) -> Dict:
  """HF config fields shared by T5 and SwitchTransformers."""
  return dict(
      vocab_size=config.vocab_size, d_model=config.emb_dim, d_kv=config.head_dim,
      d_ff=config.mlp_dim, num_heads=config.num_heads, num_layers=config.num_encoder_layers,
      num_decoder_layers=config.num_decoder_layers, dropout_rate=config.dropout_rate,
      relative_attention_num_buckets=config.relative_attention_num_buckets,
      relative_attention_max_distance=config.relative_attention_max_distance,
      layer_norm_epsilon=config.layer_norm_epsilon,
      tie_word_embeddings=bool(config.logits_via_embedding), is_encoder_decoder=True,
      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, use_cache=True)


def config_from_hf(hf: Mapping) -> T5Config:
  """Dense `T5Config` from a HF T5 config.json dict (ValueError naming what is unsupported)."""
  check_architecture(hf, T5_ARCHITECTURES, T5_MODEL_TYPES)
  return T5Config(
      **backbone_kwargs(hf),
      mlp_activations=activations_from_feed_forward_proj(hf.get('feed_forward_proj', 'relu')),
      logits_via_embedding=bool(hf.get('tie_word_embeddings', True)), moe=None)


def config_to_hf(config: T5Config) -> Dict:
  """HF T5 config.json dict for a dense `T5Config`."""
  if config.moe is not None:
    raise ValueError('T5Config.moe is set: a sparse model exports as SwitchTransformers '
                     '(moe_flan.convert.hf_switch), not as T5')
  proj = feed_forward_proj_from_activations(config.mlp_activations)
  return dict(backbone_to_hf(config), architectures=list(T5_ARCHITECTURES), model_type='t5',
              feed_forward_proj=proj, is_gated_act=proj.startswith('gated'),
              dense_act_fn='gelu_new' if proj == 'gated-gelu' else proj.split('-')[-1],
              initializer_factor=1.0)


def dense_mlp_entries(config: T5Config, hf_prefix: str, ours: str, hf_module: str,
                      activations: Sequence[str]) -> List[Entry]:
  """Entries of a dense MLP: HF `{hf_prefix}.{hf_module}.{wi|wi_k,wo}` <-> `{ours}/{wi..,wo}`."""
  d, f = config.emb_dim, config.mlp_dim
  names = ('wi',) if len(activations) == 1 else tuple(f'wi_{i}' for i in range(len(activations)))
  out = [Entry(f'{ours}/{n}/kernel', (f'{hf_prefix}.{hf_module}.{n}.weight',), 'linear', (d, f))
         for n in names]
  out.append(Entry(f'{ours}/wo/kernel', (f'{hf_prefix}.{hf_module}.wo.weight',), 'linear', (f, d)))
  return out


def _attention_entries(config: T5Config, hf_attn: str, ours: str) -> List[Entry]:
  d, h, k = config.emb_dim, config.num_heads, config.head_dim
  out = [Entry(f'{ours}/{name}/kernel', (f'{hf_attn}.{hf}.weight',), 'qkv', (d, h, k))
         for hf, name in (('q', 'query'), ('k', 'key'), ('v', 'value'))]
  out.append(Entry(f'{ours}/out/kernel', (f'{hf_attn}.o.weight',), 'out', (h, k, d)))
  return out


def _block_entries(config: T5Config, stack: str, i: int, ffn: FfnEntries) -> List[Entry]:
  d = config.emb_dim
  hf, ours = f'{stack}.block.{i}.layer', f'{stack}/layers_{i}'
  if stack == 'encoder':
    sublayers = [('0.SelfAttention', '0', 'attention', 'pre_attention_layer_norm')]
  else:
    sublayers = [('0.SelfAttention', '0', 'self_attention', 'pre_self_attention_layer_norm'),
                 ('1.EncDecAttention', '1', 'encoder_decoder_attention',
                  'pre_cross_attention_layer_norm')]
  out = []
  for hf_attn, hf_norm, attn, norm in sublayers:
    out += _attention_entries(config, f'{hf}.{hf_attn}', f'{ours}/{attn}')
    out.append(Entry(f'{ours}/{norm}/scale', (f'{hf}.{hf_norm}.layer_norm.weight',), 'copy', (d,)))
  ff = f'{hf}.{len(sublayers)}'
  out.append(Entry(f'{ours}/pre_mlp_layer_norm/scale', (f'{ff}.layer_norm.weight',), 'copy', (d,)))
  return out + ffn(stack, i, ff, ours)


def backbone_entries(config: T5Config, ffn: FfnEntries) -> List[Entry]:
  """All entries of the encoder-decoder; `ffn(stack, i, hf_ff_prefix, our_block)` adds the
  feed-forward tensors of block i (dense MLP or MoE), which is where T5 and Switch differ."""
  d, h, v = config.emb_dim, config.num_heads, config.vocab_size
  r = config.relative_attention_num_buckets
  out = [Entry('token_embedder/embedding', ('shared.weight',), 'copy', (v, d))]
  for stack, n, norm in (('encoder', config.num_encoder_layers, 'encoder_norm'),
                         ('decoder', config.num_decoder_layers, 'decoder_norm')):
    out.append(Entry(f'{stack}/relpos_bias/rel_embedding',
                     (f'{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight',),
                     'relpos', (h, r)))
    for i in range(n):
      out += _block_entries(config, stack, i, ffn)
    out.append(Entry(f'{stack}/{norm}/scale', (f'{stack}.final_layer_norm.weight',), 'copy', (d,)))
  if not config.logits_via_embedding:
    out.append(Entry('decoder/logits_dense/kernel', ('lm_head.weight',), 'linear', (d, v)))
  return out


def entries(config: T5Config) -> List[Entry]:
  """The full HF T5 <-> moe_flan correspondence for a dense config."""
  if config.moe is not None:
    raise ValueError('T5Config.moe is set; use moe_flan.convert.hf_switch for sparse models')

  def ffn(stack, i, hf_ff, ours):
    del stack, i
    return dense_mlp_entries(config, hf_ff, f'{ours}/mlp', 'DenseReluDense',
                             config.mlp_activations)
  return backbone_entries(config, ffn)


def embedding_copies(config: T5Config) -> Tuple[str, ...]:
  """Copies of shared.weight an export must also write (none: HF T5 re-ties its stacks)."""
  del config
  return ()


def ignorable(config: T5Config) -> Tuple[str, ...]:
  """HF tensors that may be present and carry nothing of their own for this config."""
  return IGNORABLE + (('lm_head.weight',) if config.logits_via_embedding else ())
