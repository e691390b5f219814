"""What the GPU suite runs, checked without a GPU: its dispatch choices lower for CUDA to real
matmuls (no ragged dot for XLA to expand), and its quick mode runs on CPU, recording the
Hopper-only candidates as failed with the reason."""
import jax
import jax.numpy as jnp
import pytest

from benchmarks import dispatch_choice
from benchmarks import run as run_lib
from moe_flan.config import MoeConfig
from moe_flan.moe import MoeLayer


def _cuda_lowering(dispatch: str) -> str:
  cfg = dispatch_choice.with_dispatch(
      MoeConfig(num_experts=4, group_size=64, expert_mlp_dim=128, expert_activations=('relu',)),
      dispatch)
  layer = MoeLayer(cfg, 64, 'tokens_choose', 1, dtype=jnp.bfloat16)
  x = jnp.ones((1, 64, 64), jnp.bfloat16)
  params = layer.init({'params': jax.random.key(0)}, x)['params']

  def loss(p, x):
    y, _ = layer.apply({'params': p}, x, None, True, mutable=['moe_metrics'])
    return jnp.sum(y.astype(jnp.float32))
  traced = jax.jit(jax.grad(loss)).trace(params, x)
  return traced.lower(lowering_platforms=('cuda',)).as_text()


def test_gpu_default_dispatch_has_no_ragged_dot_for_xla_to_expand():
  text = _cuda_lowering(dispatch_choice.GPU_DISPATCH)
  assert 'ragged_dot' not in text and 'moe_flan_grouped' not in text
  assert 'stablehlo.dot_general' in text


def test_dropless_with_the_default_grouped_matmul_is_ragged_dot_on_gpu():
  """The path the GPU default avoids: XLA's RaggedDotRewriter expands this on NVIDIA chips."""
  text = _cuda_lowering('dropless')
  assert 'ragged_dot' in text and 'moe_flan_grouped' not in text


def test_with_dispatch_names_the_grouped_matmul():
  moe = dispatch_choice.with_dispatch(MoeConfig(), 'dropless mosaic_gpu')
  assert (moe.dispatch, moe.grouped_matmul) == ('dropless', 'mosaic_gpu')
  assert dispatch_choice.with_dispatch(moe, 'scatter').grouped_matmul == 'auto'
  with pytest.raises(ValueError, match='MoeConfig.grouped_matmul'):
    dispatch_choice.with_dispatch(MoeConfig(), 'dropless cublas')


def test_quick_gpu_suite_runs_on_cpu(tmp_path):
  result = run_lib.main(['--suite', 'gpu', '--quick', '--cases', 'moe_layer', '--results_dir',
                         str(tmp_path)])
  rows = {r['variant']: r for r in result['records']}
  assert rows['dropless']['status'] == 'ok' and rows['scatter']['status'] == 'ok'
  for variant in ('segmented mosaic_gpu', 'dropless mosaic_gpu'):
    assert rows[variant]['status'] == 'failed' and 'not a GPU' in rows[variant]['reason']
  assert result['peak']['dtype'] == 'bfloat16'
  assert [t['met'] for t in result['targets']] == [None]   # no train step: not measured


def test_the_gpu_train_steps_lower_for_cuda_at_full_size():
  """The suite's bf16 Switch-base-like (128 experts) and dense steps, with abstract 2.5B-param
  states: traced and lowered for CUDA as the suite builds them, with no ragged dot."""
  from benchmarks import train_step
  by_name = {w.name: w for w in train_step.workloads('gpu', quick=False)}
  assert set(by_name) == {'switch-base-like', 'switch-base-like dropless', 'base-like dense'}
  assert by_name['switch-base-like dropless'].dispatch == 'dropless mosaic_gpu'
  for name in ('switch-base-like', 'base-like dense'):
    w = by_name[name]
    cfg = train_step.workload_config(w, 'gpu')
    assert cfg.moe is None or cfg.moe.dispatch == dispatch_choice.GPU_DISPATCH
    init_state, make_step = train_step.step_parts(cfg, {'inputs': w.inputs_len,
                                                        'targets': w.targets_len})
    state = jax.eval_shape(init_state, jax.random.PRNGKey(0))
    batch = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                         train_step.random_batch(w))
    text = jax.jit(make_step(False)).trace(state, batch).lower(
        lowering_platforms=('cuda',)).as_text()
    assert 'ragged_dot' not in text and 'moe_flan_grouped' not in text, name
    assert 'bf16' in text, name
