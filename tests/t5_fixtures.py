"""Shared helpers for the model tests: tiny configs and cheap random parameters.

Parameters come from `jax.eval_shape(model.init)` filled with numpy draws, which avoids
compiling the random initialisers (the slowest part of a tiny model's life on a CPU).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.special

from moe_flan.config import MoeConfig, T5Config


# Gin bindings that shrink any gin model file to test size (every block sparse when it has MoE).
TINY_GIN_MODEL = [
    'T5Config.emb_dim = 16', 'T5Config.num_heads = 2', 'T5Config.head_dim = 8',
    'T5Config.mlp_dim = 16', 'T5Config.num_encoder_layers = 1', 'T5Config.num_decoder_layers = 1',
    'MoeConfig.num_experts = 4', 'MoeConfig.expert_mlp_dim = 16', 'MoeConfig.group_size = 64',
    "MoeConfig.encoder_sparse_layout = 'all'", "MoeConfig.decoder_sparse_layout = 'all'",
]



def write_step0_model_dir(model_dir: str) -> None:
  """A MODEL_DIR of the tiny sparse model (TINY_GIN_MODEL, quickstart run file) whose only
  checkpoint is the initial state: step 0, so nothing is compiled and no evaluation runs."""
  import gin  # pylint: disable=g-import-not-at-top
  from moe_flan.trainer import cli, loop  # pylint: disable=g-import-not-at-top
  cli.configure_gin(cli.Flags(('runs/quickstart.gin',), tuple(TINY_GIN_MODEL + [
      f"MODEL_DIR = '{model_dir}'", 'TRAIN_STEPS = 0', 'RunConfig.write_plots = False',
      'RunConfig.final_eval_mixtures = ()', "MIXTURE_OR_TASK_NAME = 'emb_nli'",
      'DataConfig.truncation_check_examples = 0']), ()))
  try:
    loop.train()
  finally:
    gin.clear_config()

def tiny_config(moe: bool = False, **overrides) -> T5Config:
  fields = dict(vocab_size=32, emb_dim=16, num_heads=2, head_dim=8, num_encoder_layers=2,
                num_decoder_layers=2, mlp_dim=24)
  if moe:
    # Ample capacity: no token is ever dropped, so routing is per-token and position-free.
    fields['moe'] = MoeConfig(num_experts=4, num_selected_experts=2, expert_mlp_dim=12,
                              group_size=4096, train_capacity_factor=8.0,
                              eval_capacity_factor=8.0, min_capacity=64,
                              encoder_sparse_every=2, decoder_sparse_every=2)
  fields.update(overrides)
  return T5Config(**fields)


def _std(path: str, shape) -> float:
  """A fan-in scaled std per parameter kind, so activations stay O(1) and logits differ."""
  leaf = path.split('/')[-1]
  parent = path.split('/')[-2] if '/' in path else ''
  if leaf in ('embedding', 'rel_embedding'):
    return 1.0
  if parent == 'out':                         # [H, K, D]
    return (shape[0] * shape[1]) ** -0.5
  if parent == 'experts':                     # [E, D, F] / [E, F, D]
    return shape[1] ** -0.5
  return shape[0] ** -0.5


def random_params(model: nn.Module, *args, seed: int = 0, **kwargs):
  """Unboxed float32 params for `model.init(rng, *args, **kwargs)`, drawn with numpy."""
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), *args, **kwargs)['params']
  shapes = nn.unbox(shapes)
  rng = np.random.RandomState(seed)

  def draw(path, s):
    name = jax.tree_util.keystr(path, simple=True, separator='/')
    if name.endswith('scale'):
      value = 1.0 + 0.1 * rng.normal(size=s.shape)
    else:
      value = rng.normal(size=s.shape) * _std(name, s.shape)
    return jnp.asarray(value, jnp.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def random_tokens(rng: np.random.RandomState, shape, vocab: int, low: int = 2) -> np.ndarray:
  """Token ids in [low, vocab) (0 = padding, 1 = EOS are left out by default)."""
  return rng.randint(low, vocab, size=shape).astype(np.int32)


def log_softmax64(x) -> np.ndarray:
  """float64 log-probabilities over the last axis: the reference the decoding tests compare to."""
  return scipy.special.log_softmax(np.asarray(x, np.float64), axis=-1)
