"""Production-size configs (as published on the hub): the HF tensor map covers exactly our param
tree, checked with jax.eval_shape (nothing is allocated)."""
import flax
import flax.linen as nn
import pytest

from moe_flan.convert import hf_checkpoint
from moe_flan.model import abstract_params

_T5_BASE = dict(model_type='t5', architectures=['T5ForConditionalGeneration'], d_model=768,
                d_kv=64, d_ff=2048, num_heads=12, num_layers=12, num_decoder_layers=12,
                vocab_size=32128, feed_forward_proj='gated-gelu', tie_word_embeddings=False,
                relative_attention_num_buckets=32, relative_attention_max_distance=128)
HUB_CONFIGS = {
    'google/flan-t5-base': _T5_BASE,
    'google/flan-t5-xl': dict(_T5_BASE, d_model=2048, d_ff=5120, num_heads=32, num_layers=24,
                              num_decoder_layers=24),
    'google/switch-base-8': dict(
        model_type='switch_transformers',
        architectures=['SwitchTransformersForConditionalGeneration'], d_model=768, d_kv=64,
        d_ff=3072, num_heads=12, num_layers=12, num_decoder_layers=12, vocab_size=32128,
        num_experts=8, expert_capacity=64, num_sparse_encoder_layers=6,
        num_sparse_decoder_layers=6, router_jitter_noise=0.01),
}


@pytest.mark.parametrize('name', sorted(HUB_CONFIGS))
def test_tensor_map_covers_the_param_tree(name):
  hf_config = HUB_CONFIGS[name]
  config = hf_checkpoint.config_from_hf(hf_config)
  module = hf_checkpoint.family_module(config)
  abstract = flax.traverse_util.flatten_dict(
      nn.meta.unbox(abstract_params(config)), sep='/')
  entries = {e.path: e for e in module.entries(config)}
  assert entries.keys() == abstract.keys()
  for path, entry in entries.items():
    assert entry.shape == tuple(abstract[path].shape), path
  if config.moe is not None:   # switch-base-8: every 2nd block sparse, as HF builds it
    assert config.encoder_sparse_blocks() == (1, 3, 5, 7, 9, 11)
    assert config.decoder_sparse_blocks() == (1, 3, 5, 7, 9, 11)
    assert config.moe.min_capacity == 64 and config.logits_via_embedding
    hf_names = {n for e in entries.values() for n in e.hf_names}
    assert 'encoder.block.1.layer.1.mlp.experts.expert_7.wi.weight' in hf_names
    assert 'decoder.block.11.layer.2.mlp.router.classifier.weight' in hf_names
    assert 'decoder.block.10.layer.2.mlp.wo.weight' in hf_names
