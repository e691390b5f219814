"""The MoE-layer case measures what it claims: every candidate does the whole forward + backward."""
import re

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import moe_layer

_DOT = re.compile(r'\bdot\(')


def _ffn(wi, wo, x):
  return jax.nn.relu(x @ wi) @ wo


def _args():
  k = jax.random.split(jax.random.PRNGKey(0), 4)
  return (jax.random.normal(k[0], (16, 64)), jax.random.normal(k[1], (64, 16)),
          jax.random.normal(k[2], (32, 16)), jax.random.normal(k[3], (32, 16)))


def test_forward_backward_keeps_all_six_matmuls():
  wi, wo, x, cot = _args()
  grads_only = jax.jit(lambda *a: jax.vjp(_ffn, *a)[1](cot))
  step = moe_layer.forward_backward(_ffn, cot)
  count = lambda f: len(_DOT.findall(f.lower(wi, wo, x).compile().as_text()))
  # Returning only the gradients lets XLA drop the second forward matmul (its output feeds
  # nothing); the dense twin then did 5 of the 6 matmuls the FLOP count assumes.
  assert count(grads_only) == 5
  assert count(step) == 6


def test_forward_backward_values_match_autodiff():
  wi, wo, x, cot = _args()
  y, grads = moe_layer.forward_backward(_ffn, cot)(wi, wo, x)
  np.testing.assert_allclose(y, _ffn(wi, wo, x), rtol=1e-5, atol=1e-5)
  # Independent: the VJP as gradients of the scalar <y, cot>.
  want = jax.grad(lambda *a: jnp.sum(_ffn(*a) * cot), argnums=(0, 1, 2))(wi, wo, x)
  for got, ref in zip(grads, want):
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_forward_backward_writes_gradients_into_the_previous_calls_buffers():
  wi, wo, x, cot = _args()
  step = moe_layer.forward_backward(_ffn, cot)
  stats = step.lower(wi, wo, x).compile().memory_analysis()
  assert stats.alias_size_in_bytes == (wi.size + wo.size + x.size) * 4
  _, first = step(wi, wo, x)
  pointers = [g.unsafe_buffer_pointer() for g in first]
  _, second = step(wi, wo, x)
  assert [g.unsafe_buffer_pointer() for g in second] == pointers
