"""moe_flan: sparse Mixture-of-Experts T5 (FLAN-MoE) in JAX/Flax."""
