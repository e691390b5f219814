"""Building blocks of the T5.1.1 encoder-decoder (dense parts; the MoE layer is in moe_flan.moe)."""
from moe_flan.layers.attention import MultiHeadAttention
from moe_flan.layers.dense import DenseGeneral
from moe_flan.layers.embedding import Embed
from moe_flan.layers.masks import (causal_mask, combine_masks, make_attention_mask,
                                   mask_to_bias, segment_mask)
from moe_flan.layers.mlp import ACTIVATIONS, MlpBlock, get_activation
from moe_flan.layers.normalization import RMSNorm
from moe_flan.layers.relative_position import RelativePositionBias, relative_position_bucket

__all__ = [
    'ACTIVATIONS', 'DenseGeneral', 'Embed', 'MlpBlock', 'MultiHeadAttention', 'RMSNorm',
    'RelativePositionBias', 'causal_mask', 'combine_masks', 'get_activation',
    'make_attention_mask', 'mask_to_bias', 'relative_position_bucket', 'segment_mask',
]
