"""moe_flan: sparse Mixture-of-Experts T5 (FLAN-MoE) in JAX/Flax.

    config, params, vocabulary = moe_flan.load(path)   # a trained MODEL_DIR or a converted dir
"""


def load(path: str, partitioner=None):
  """`moe_flan.loading.load`: the model at `path` as (config, params, vocabulary)."""
  # Imported on call: importing the package (which every `moe_flan.*` import does) stays free
  # of JAX, orbax and TensorFlow start-up.
  from moe_flan import loading  # pylint: disable=g-import-not-at-top
  return loading.load(path, partitioner)
