"""The T5.1.1 encoder-decoder and its loss."""
from moe_flan.model.encoder_decoder import EncoderDecoder
from moe_flan.model.losses import compute_loss, cross_entropy_with_z_loss

__all__ = ['EncoderDecoder', 'compute_loss', 'cross_entropy_with_z_loss']
