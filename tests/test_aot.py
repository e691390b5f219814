"""moe_flan.aot: the trainer's step compiled for a TPU slice (v5e:2x2) with libtpu, on this CPU.

A tiny MoE (1+1 sparse blocks, 4 experts, 8 x 16 -> 8 tokens) keeps each compile to about 10
CPU-seconds (TPU code is specialised to the shapes, so compile time grows with the tensors).
Every gin/partitioning overlay is compiled once, in process, and shared by the tests that read
it; the command itself runs once in a subprocess, at 4x the batch.
"""
import glob
import json
import math
import os
import subprocess
import sys

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip('libtpu', reason="libtpu comes with the test extra (pip install -e '.[test]')")

from moe_flan.aot import cli, compiled_step, topology  # noqa: E402
from moe_flan.aot import report as report_lib  # noqa: E402
from moe_flan.partitioning import rules as rules_lib  # noqa: E402
from moe_flan.trainer import train_state as ts  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOPOLOGY = 'v5e:2x2'
MODEL = ['gin/models/flan_moe_tiny.gin', 'gin/runs/instruction_tune.gin']
TINY = ['VOCAB_SIZE = 256', 'BATCH_SIZE = 8', "TASK_FEATURE_LENGTHS = {'inputs': 16, 'targets': 8}",
        'T5Config.num_encoder_layers = 1', 'T5Config.num_decoder_layers = 1',
        "MoeConfig.encoder_sparse_layout = 'all'", "MoeConfig.decoder_sparse_layout = 'all'",
        'MoeConfig.num_experts = 4', 'MoeConfig.group_size = 8']
OVERLAYS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, 'gin/partitioning/*.gin')))
# Axis sizes for the 4 chips: experts over 4, or 2 experts x 2 model shards.
OVERLAY_BINDINGS = {'expert_parallel.gin': ['EXPERT_PARTITIONS = 4'],
                    'expert_parallel_shard_map.gin': ['EXPERT_PARTITIONS = 4'],
                    'expert_model_parallel.gin': ['EXPERT_PARTITIONS = 2', 'MODEL_PARTITIONS = 2']}
_REPORTS = {}


def _plan(overlay, extra=()):
  files = MODEL + [f'gin/partitioning/{overlay}']
  bindings = TINY + OVERLAY_BINDINGS.get(overlay, []) + list(extra)
  return cli.plan(files, bindings, TOPOLOGY, search_paths=[os.path.join(ROOT, 'gin')])


def _report(overlay):
  if overlay not in _REPORTS:
    _REPORTS[overlay] = _plan(overlay)
  return _REPORTS[overlay]


def _param_bytes_from_rules(mesh_shape):
  """Parameter bytes per chip: each param's size / the product of the mesh axes its logical
  names map to under the gin-bound rule table (the config gin holds right now)."""
  run = compiled_step.train_run_from_gin()
  from moe_flan.model import EncoderDecoder
  boxed = ts.abstract_params(EncoderDecoder(run.model), run.data.task_feature_lengths)
  rules = rules_lib.logical_axis_rules()
  total = 0
  for box in jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned)):
    shards = 1
    for mesh_axes in nn.logical_to_mesh_axes(box.names, rules):
      for a in ((mesh_axes,) if isinstance(mesh_axes, str) else mesh_axes or ()):
        shards *= mesh_shape[a]
    total += math.prod(box.value.shape) * np.dtype(box.value.dtype).itemsize // shards
  return total


@pytest.mark.parametrize('overlay', OVERLAYS)
def test_every_overlay_compiles_and_fits(overlay):
  r = _report(overlay)
  assert r['topology'] == TOPOLOGY and r['num_chips'] == 4 and r['devices_per_chip'] == 1
  assert math.prod(r['mesh'].values()) == 4
  m = r['memory_per_chip']
  assert m['fits'] and m['hbm_bytes'] == 16 * 2 ** 30
  assert m['total'] == (m['arguments'] + m['outputs'] - m['aliased'] + m['temporaries']
                        + m['generated_code'])
  # Parameter bytes per chip, from the compiled executable's input shardings, equal the count
  # from the partitioning rules (ShapeDtypeStruct sizes: the compiler's arguments add padding).
  assert m['parameters'] == _param_bytes_from_rules(r['mesh'])
  assert m['arguments'] >= m['parameters'] + m['optimizer_state'] + m['batch']
  f = r['flops']
  assert f['model_flops_per_step'] > 0 and f['xla_flops_per_step'] >= 0.5 * f['model_flops_per_step']
  assert 0 < f['mfu_upper_bound'] <= 1
  assert len(r['moe_layers']) == 2


def test_expert_parallel_moves_tokens_over_expert_only_data_parallel_never():
  ep, dp = _report('expert_parallel_shard_map.gin'), _report('data_parallel.gin')
  a2a = [c for c in ep['collectives'] if c['kind'] == 'all-to-all']
  assert a2a and {c['mesh_axes'] for c in a2a} == {'expert'}
  for layer in ep['moe_layers']:
    # Forward dispatch + combine and their transposes in the backward pass.
    assert layer['all_to_all_count'] == 4 and layer['ratio'] is not None
  assert not [c for c in dp['collectives'] if c['kind'] == 'all-to-all']
  assert all(layer['ratio'] is None for layer in dp['moe_layers'])
  # Experts (and their Adafactor statistics) split over 'expert', never copied across it.
  assert ep['goals']['expert_tensors_replicated_across_expert'] == []
  assert ep['goals']['no_expert_replication_goal_met'] is True
  assert ep['memory_per_chip']['parameters'] < dp['memory_per_chip']['parameters']


def test_encoder_and_decoder_moe_layers_do_the_same_collectives_per_token():
  """Both stacks' groups split over all 4 'expert' shards: the same all-to-all bytes per token
  (the decoder has half the encoder's tokens) and no extra all-gathers or permutes in either.
  A stack with fewer groups than shards ran XLA's sharding of the 'scatter' path instead, with
  twice the all-to-all bytes per token plus all-gathers and permutes; it is now refused (below)."""
  enc, dec = _report('expert_parallel_shard_map.gin')['moe_layers']
  assert enc['layer'].startswith('encoder/') and dec['layer'].startswith('decoder/')
  assert enc['ratio'] == pytest.approx(dec['ratio'])
  assert enc['all_to_all_count'] == dec['all_to_all_count'] == 4
  assert enc['all_to_all_bytes_per_chip'] / 16 == dec['all_to_all_bytes_per_chip'] / 8
  assert set(enc['other_collective_bytes_per_chip']) == set(dec['other_collective_bytes_per_chip'])
  assert set(dec['other_collective_bytes_per_chip']) <= {'all-reduce'}


@pytest.mark.parametrize('remat_policy, exchanges', [('full', 6), ('save_moe_exchanges', 4)])
def test_scanned_layers_compile_once_and_report_every_layer(remat_policy, exchanges):
  """T5Config.scan_layers on 2 + 2 sparse blocks, each rematerialised: each stack's MoE layer is
  one op run once per block (the while loop's trip count, read from its condition), so every
  layer shows the unrolled step's 4 all-to-alls, plus under remat 'full' the 2 of its forward
  pass recomputed in the backward pass (1.5x the bytes), which 'save_moe_exchanges' keeps."""
  r = _plan('expert_parallel_shard_map.gin', [
      'EXPERT_PARTITIONS = 4', 'T5Config.scan_layers = True', 'T5Config.num_encoder_layers = 2',
      'T5Config.num_decoder_layers = 2', f"T5Config.remat_policy = '{remat_policy}'"])
  assert r['scan_layers'] is True
  unrolled = {l['layer'][:7]: l for l in _report('expert_parallel_shard_map.gin')['moe_layers']}
  layers = r['moe_layers']
  assert [l['layer'] for l in layers] == ['encoder/layers_0', 'encoder/layers_1',
                                          'decoder/layers_0', 'decoder/layers_1']
  for layer in layers:
    same = unrolled[layer['layer'][:7]]
    assert layer['all_to_all_count'] == exchanges
    assert layer['all_to_all_bytes_per_chip'] == (
        exchanges / 4 * same['all_to_all_bytes_per_chip'])
    assert layer['ratio'] == pytest.approx(exchanges / 4 * same['ratio'])
  a2a = sum(c['bytes_per_chip'] for c in r['collectives'] if c['kind'] == 'all-to-all')
  assert a2a == sum(l['all_to_all_bytes_per_chip'] for l in layers)   # every byte attributed
  # XLA's cost analysis counts the loop body once; the roofline's compute uses the model FLOPs.
  f = r['flops']
  assert f['xla_costs_count_loop_bodies_once'] is True
  assert f['xla_loop_flops_added_per_chip'] > 0      # the other blocks' matmuls
  peak = topology.CHIPS['v5e'].peak_bf16_flops
  assert f['roofline']['compute_s'] >= f['model_flops_per_step'] / 4 / peak * (1 - 1e-9)


def test_loop_flops_make_a_scan_cost_what_its_unrolled_loop_costs():
  """XLA's cost analysis counts a scan's body once; hlo.loop_flops counts every iteration's
  matmuls: for the gradient of 6 chained matmuls and 6 chained batched matmuls (which XLA
  writes as convolutions over padded windows) 3 of each (forward, two backward) x 6 layers
  x 2 m k n per device, which is also what XLA counts, elementwise FLOPs aside, unrolled."""
  from jax.experimental import topologies
  from moe_flan.aot import hlo
  devices = topologies.get_topology_desc(topology_name=TOPOLOGY, platform='tpu').devices
  mesh = jax.sharding.Mesh(np.array(devices), ('data',))
  spec = lambda *s: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*s))
  w = jax.ShapeDtypeStruct((6, 256, 256), np.float32, sharding=spec())
  v = jax.ShapeDtypeStruct((6, 8, 64, 64), np.float32, sharding=spec(None, 'data'))
  x = jax.ShapeDtypeStruct((8, 32, 256), np.float32, sharding=spec('data'))

  def layer(x, w, v):
    x = x @ w
    return jnp.einsum('bij,bjk->bik', x.reshape(8, 128, 64), v).reshape(8, 32, 256)

  def scanned(w, v, x):
    return (jax.lax.scan(lambda c, wv: (layer(c, *wv), None), x, (w, v))[0] ** 2).sum()

  def unrolled(w, v, x):
    for i in range(6):
      x = layer(x, w[i], v[i])
    return (x ** 2).sum()

  # Gradients for every input of a loss of the last output: no matmul is dead code.
  compiled = {f.__name__: jax.jit(jax.grad(f, argnums=(0, 1, 2))).lower(w, v, x).compile()
              for f in (scanned, unrolled)}
  looped, once = hlo.loop_flops(compiled['scanned'].as_text())
  per_device = 2 * 64 * 256 * 256 + 2 * 2 * 128 * 64 * 64    # 2 of 8 rows, 2 of 8 batches
  assert looped == 3 * 6 * per_device and once == 3 * per_device
  assert hlo.loop_flops(compiled['unrolled'].as_text()) == (looped, looped)
  xla = {n: c.cost_analysis()['flops'] for n, c in compiled.items()}
  assert looped <= xla['unrolled'] <= 1.1 * looped
  assert once <= xla['scanned'] <= 1.1 * once                  # one iteration's


def test_all_to_all_minimum_counts_the_slots_the_capacity_convention_fills():
  """gshard_base at batch 64 x 512 input tokens, groups of 2048, top-2, capacity factor 1.25:
  16 groups x 64 experts x round(1.25 x 2048 / 64) = 40 slots under 'flaxformer' (no factor k),
  twice that, ceil(1.25 x 2 x 2048 / 64) = 80, under 'ours'; tokens x k without a capacity."""
  from moe_flan import config as config_lib
  from moe_flan.aot import report
  moe = dict(num_experts=64, num_selected_experts=2, train_capacity_factor=1.25,
             group_size=2048, dispatch='expert_parallel')
  slots = lambda **kw: report._dispatched_slots(  # pylint: disable=protected-access
      config_lib.T5Config(moe=config_lib.MoeConfig(**{**moe, **kw})), 64, 512, 2)
  assert slots(capacity_convention='flaxformer') == 16 * 64 * 40 == 1.25 * 64 * 512
  assert slots(capacity_convention='ours') == 16 * 64 * 80 == 2 * 1.25 * 64 * 512
  assert slots(dispatch='dropless') == 2 * 64 * 512


def test_a_step_the_compiler_refuses_for_hbm_is_does_not_fit_with_its_bytes(tmp_path, capsys):
  # A 1M-word vocabulary at batch 256 x 64 targets: the logits and their gradient alone are
  # 256 * 64 * 2**20 * 4 bytes * 2 / 4 chips = 32 GiB per chip, above a v5e chip's 16 GiB.
  big = ['VOCAB_SIZE = 1048576', 'BATCH_SIZE = 256',
         "TASK_FEATURE_LENGTHS = {'inputs': 16, 'targets': 64}"]
  flags = [*[f'--gin_file={f}' for f in MODEL], '--gin_file=gin/partitioning/data_parallel.gin',
           *[f'--gin_bindings={b}' for b in TINY + big], f'--topology={TOPOLOGY}',
           f'--out={tmp_path / "plan.json"}', f'--gin_search_paths={os.path.join(ROOT, "gin")}']
  assert cli.main(flags) == 1
  m = json.loads((tmp_path / 'plan.json').read_text())['memory_per_chip']
  assert m['fits'] is False and m['refused_by_compiler'] and m['what'] == 'HLO temporaries'
  assert m['available_bytes'] < m['required_bytes'] and m['available_bytes'] <= m['hbm_bytes']
  assert m['shortfall_bytes'] == m['required_bytes'] - m['available_bytes']
  assert m['hbm_bytes'] == 16 * 2 ** 30 and m['required_bytes'] > 16 * 2 ** 30
  out = capsys.readouterr().out
  assert 'DOES NOT FIT -- the compiler refused the step: HLO temporaries need' in out


def test_the_compilers_hbm_refusal_is_parsed_and_other_errors_are_not():
  msg = ('RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO '
         'temporaries (19.81G) exceeds available HBM (15.75G).')
  r = report_lib.hbm_refusal('Traceback ...\njax.errors.JaxRuntimeError: ' + msg)
  assert r == {'what': 'HLO temporaries', 'required_bytes': round(19.81 * 2 ** 30),
               'available_bytes': round(15.75 * 2 ** 30), 'compiler_message':
               'jax.errors.JaxRuntimeError: ' + msg}
  assert report_lib.hbm_refusal('RESOURCE_EXHAUSTED: Out of memory allocating 12 bytes') is None


def test_command_writes_json_and_batch_changes_the_compiled_step(tmp_path):
  """The command end to end at 4x the batch, against the in-process plan at batch 8.

  The evidence that the report reads the compiled executable is XLA's own FLOP count
  (cost_analysis) and the generated code, which follow the batch. Temporaries are not compared:
  at sizes that compile in seconds they are the compiler's fixed scratch (about 8 MiB, the same
  at batch 8 and 32); activations only outgrow it at batch 512, a 100 CPU-second compile.
  """
  out = tmp_path / 'plan.json'
  cmd = [sys.executable, '-m', 'moe_flan.aot', *[f'--gin_file={f}' for f in MODEL],
         '--gin_file=gin/partitioning/data_parallel.gin', *[f'--gin_bindings={b}' for b in TINY],
         '--gin.BATCH_SIZE=32', f'--topology={TOPOLOGY}', f'--out={out}']
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT] + sys.path))
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'HBM per chip: FITS' in proc.stdout and 'TPU' not in proc.stderr.replace('TPU v', '')
  big = json.loads(out.read_text())
  # libtpu started with (and accepted) the raised compiler stack, 64 MiB by default.
  assert big['libtpu_init_args'].split()[-1] == '--fibers_default_thread_stack_size=67108864'
  small = _report('data_parallel.gin')
  assert big['batch_size'] == 32 and small['batch_size'] == 8
  bm, sm = big['memory_per_chip'], small['memory_per_chip']
  assert bm['parameters'] == sm['parameters'] and bm['optimizer_state'] == sm['optimizer_state']
  assert bm['batch'] == 4 * sm['batch']        # from the compiled input shardings
  assert bm['generated_code'] > sm['generated_code']   # TPU code is specialised to the shapes
  bf, sf = big['flops'], small['flops']
  assert bf['model_flops_per_step'] == pytest.approx(4 * sf['model_flops_per_step'])
  # XLA counts every matmul of the 24 extra examples that the model count does, plus the
  # dispatch einsums and elementwise work; the optimizer's FLOPs do not grow with the batch.
  model_delta = bf['model_flops_per_step'] - sf['model_flops_per_step']
  xla_delta = bf['xla_flops_per_step'] - sf['xla_flops_per_step']
  assert model_delta <= xla_delta <= 2 * model_delta
  assert bf['xla_flops_per_step'] < 4 * sf['xla_flops_per_step']


@pytest.fixture(autouse=True)
def _clear_gin():
  """A plan parses gin files into gin's global config (as the entry points do); later tests in
  the same process must not inherit their bindings (e.g. instruction_tune.gin's expert dropout
  on every MoeConfig())."""
  yield
  gin.clear_config()


@pytest.fixture
def no_compile(monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError('compiled although the input is bad')
  monkeypatch.setattr(jax.stages.Lowered, 'compile', refuse)


@pytest.mark.parametrize('topology_name, overlay, extra, message', [
    ('v9:2x2', 'data_parallel.gin', [], "unknown TPU kind 'v9'"),
    ('v5e2x2', 'data_parallel.gin', [], "--topology='v5e2x2'"),
    ('v5e:3x3', 'data_parallel.gin', [], 'libtpu rejects it'),
    (TOPOLOGY, 'data_parallel.gin', ['make_mesh.mesh_shape = (8, 1, 1)'],
     'needs 8 devices'),
    (TOPOLOGY, 'expert_parallel.gin', ['EXPERT_PARTITIONS = 3'],
     'the fixed axes use 3 devices, which does not divide the 4'),
    (TOPOLOGY, 'expert_parallel.gin', ['EXPERT_PARTITIONS = 4', 'MoeConfig.num_experts = 6'],
     "('expert') has size 6"),
    (TOPOLOGY, 'data_parallel.gin', ['BATCH_SIZE = 6'], 'batch size 6 is not divisible'),
    # The decoder's 8 x 8 tokens form 2 groups of 32 for 4 'expert' shards (the encoder's 4).
    (TOPOLOGY, 'expert_parallel_shard_map.gin',
     ['EXPERT_PARTITIONS = 4', 'MoeConfig.group_size = 32'],
     'the decoder (targets length 8, batch 8) forms 2 routing group(s)'),
])
def test_bad_input_fails_before_compiling(no_compile, topology_name, overlay, extra, message):
  files = MODEL + [f'gin/partitioning/{overlay}']
  with pytest.raises(ValueError, match=None) as e:
    cli.plan(files, TINY + list(extra), topology_name)
  assert message in str(e.value), str(e.value)


def test_num_slices_put_the_data_axis_over_slices():
  s = topology.parse(TOPOLOGY, num_slices=2)
  mesh = compiled_step.mesh_for(topology.devices(s), 2, mesh_shape=(-1, 2, 1))
  assert dict(mesh.shape) == {'data': 4, 'expert': 2, 'model': 1}
  slices = np.vectorize(lambda d: d.slice_index)(mesh.devices)
  assert (slices[:2] == 0).all() and (slices[2:] == 1).all()   # 'data' crosses the DCN
  with pytest.raises(ValueError, match='--num_slices=2 must divide the data axis'):
    compiled_step.mesh_for(topology.devices(s), 2, mesh_shape=(1, 8, 1))


def test_two_slices_exchange_only_the_gradients_over_dcn():
  """2 x v5e:2x2, mesh data 2 (one per slice) x expert 4: the only cross-slice transfers are the
  gradients' all-reduce; the tokens' all-to-alls stay inside each slice. Each chip sends its
  experts' float32 gradients whole (they are not replicated in the slice); XLA reduce-scatters
  some replicated gradients inside the slice first and sends a quarter of those, so the total
  lies between the expert gradients' bytes and the parameters' bytes per chip."""
  r = cli.plan(MODEL + ['gin/partitioning/expert_parallel_shard_map.gin'],
               TINY + ['EXPERT_PARTITIONS = 4'], TOPOLOGY, num_slices=2,
               search_paths=[os.path.join(ROOT, 'gin')])
  assert r['num_slices'] == 2 and r['num_chips'] == 8 and r['mesh'] == {'data': 2, 'expert': 4,
                                                                         'model': 1}
  dcn = [c for c in r['collectives'] if 'DCN' in c['mesh_axes']]
  assert [(c['kind'], c['mesh_axes']) for c in dcn] == [('all-reduce', 'slices (DCN)')]
  expert_grads = 2 * 3 * (4 // 4) * 128 * 256 * 4        # 2 layers x wi_0, wi_1, wo, 1 expert
  assert expert_grads < dcn[0]['bytes_per_chip'] <= r['memory_per_chip']['parameters']
  assert dcn[0]['link_bytes_per_chip'] == 0
  a2a = [c for c in r['collectives'] if c['kind'] == 'all-to-all']
  assert a2a and {c['mesh_axes'] for c in a2a} == {'expert'}
  assert r['memory_per_chip']['fits']


def test_the_compilers_stack_is_raised_unless_the_user_set_it():
  flag = '--fibers_default_thread_stack_size'
  assert topology.libtpu_init_args('', 64) == f'{flag}=67108864'
  assert topology.libtpu_init_args('--xla_x=1', 8) == f'--xla_x=1 {flag}=8388608'
  assert topology.libtpu_init_args(f'--xla_x=1 {flag}=1024', 64) == f'--xla_x=1 {flag}=1024'
  assert topology.libtpu_init_args('--xla_x=1', 0) == '--xla_x=1'
  with pytest.raises(ValueError, match=r'--compiler_stack_mib=-1: must be >= 0'):
    topology.libtpu_init_args('', -1)


def test_without_libtpu_says_how_to_install(monkeypatch):
  import importlib.util
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name, *a: None if name == 'libtpu' else real(name, *a))
  with pytest.raises(ValueError, match=r"pip install 'moe_flan\[tpu\]'"):
    topology.devices(topology.parse(TOPOLOGY))
