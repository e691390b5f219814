"""The T5.1.1 encoder-decoder, its loss, the distillation loss (distillation.py), and sparse
upcycling of dense params (upcycling.py)."""
from moe_flan.model.encoder_decoder import EncoderDecoder, abstract_params
from moe_flan.model.losses import compute_loss, cross_entropy_with_z_loss

__all__ = ['EncoderDecoder', 'abstract_params', 'compute_loss', 'cross_entropy_with_z_loss']
