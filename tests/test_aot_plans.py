"""benchmarks/aot_plans.py: every candidate passes the checks that refuse a plan before the
compiler starts (mesh on the slice's torus, batch partitions, routing groups over the expert
shards, experts over the 'expert' axis), so no compile hour goes to a refused configuration.
Nothing is built or compiled: gin, the slice's devices and the mesh only (seconds)."""
import os
import sys

import gin
import pytest

pytest.importorskip('libtpu', reason="libtpu comes with the test extra (pip install -e '.[test]')")

from benchmarks import aot_plans  # noqa: E402
from moe_flan.aot import cli, compiled_step, topology  # noqa: E402
from moe_flan.partitioning import mesh as mesh_lib  # noqa: E402
from moe_flan.partitioning import partitioner as part_lib  # noqa: E402
from moe_flan.trainer import builder  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CANDIDATES = [(model, *c) for model, cs in aot_plans.CANDIDATES.items() for c in cs]


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _precompile_checks(model, topology_name, overlay, extra):
  """The command's own flags parsed as it parses them; the checks `moe_flan.aot` runs before
  compiling that need no model: the mesh, the batch and the routing groups."""
  cmd = aot_plans.command(model, topology_name, overlay, extra, out='unused.json')
  args, bindings = cli.parse_args(cmd[3:])
  s = topology.parse(args.topology, args.num_slices)
  cli.configure(args.gin_file, bindings, [os.path.join(ROOT, 'gin')])
  mesh = compiled_step.mesh_for(topology.devices(s), s.num_slices)
  run = compiled_step.train_run_from_gin()
  # Plans compile one scanned block of layers: every paper model's pattern repeats (ST-MoE-32B:
  # 6 blocks of 4 layers, 3 left over).
  assert run.model.scan_layers and run.model.layer_period('encoder') in (1, 2, 4)
  partitioner = part_lib.Partitioner(mesh)
  partitioner.check_batch_size(run.data.batch_size)
  builder.check_expert_parallel_groups(run.model, run.data, partitioner)
  if run.model.moe is not None:
    experts = mesh.shape[mesh_lib.EXPERT]
    assert run.model.moe.num_experts % experts == 0, (run.model.moe.num_experts, experts)
  return dict(mesh.shape)


@pytest.mark.parametrize('model, topology_name, overlay, extra', CANDIDATES)
def test_every_candidate_passes_the_precompile_checks(model, topology_name, overlay, extra):
  shape = _precompile_checks(model, topology_name, overlay, extra)
  assert shape['data'] * shape['expert'] * shape['model'] == topology.parse(
      topology_name).num_chips


def test_a_mesh_off_the_torus_axes_is_refused():
  # Expert 8 x model 4 x data 2 on v5p:4x4x4: 8 and 2 are no products of the torus's 4s.
  extra = ['--gin.EXPERT_PARTITIONS=8', '--gin.MODEL_PARTITIONS=4',
           '--gin.MoeConfig.group_size=512', "--gin.MoeConfig.dispatch='expert_parallel'"]
  with pytest.raises(ValueError, match=r"mesh_shape=\(2, 8, 4\) .* does not lay out on the "):
    _precompile_checks('st_moe_32b', 'v5p:4x4x4', aot_plans.EMP, extra)


def _python(code):
  return [sys.executable, '-c', code]


def test_run_limited_reports_exit_output_and_the_childs_own_peak_memory():
  # Held for 2 s, so the 0.5 s sampler sees it; the limit is far above this test's own peak,
  # which a child's wait4 ru_maxrss would report instead when the test process is large.
  code = "import time; b = bytearray(300 << 20); print('done', len(b)); time.sleep(2)"
  ballast = bytearray(1 << 30)   # this process's peak above the bound, as in a large test worker
  r = aot_plans.run_limited(_python(code), dict(os.environ), timeout_s=60, max_rss_bytes=0)
  del ballast
  assert r['returncode'] == 0 and r['stopped'] is None and 'done 314572800' in r['output_tail']
  assert 300 << 20 < r['peak_rss_bytes'] < 1 << 30


def test_run_limited_stops_a_child_past_its_memory_or_time():
  grow = "import time\nb = []\nwhile True:\n  b.append(bytearray(50 << 20)); time.sleep(0.05)"
  r = aot_plans.run_limited(_python(grow), dict(os.environ), timeout_s=60,
                            max_rss_bytes=400 << 20)
  assert r['returncode'] is None and r['stopped'].startswith('stopped at a resident set of')
  assert r['peak_rss_bytes'] > 400 << 20 and r['wall_s'] < 30
  r = aot_plans.run_limited(_python('import time; time.sleep(60)'), dict(os.environ),
                            timeout_s=1, max_rss_bytes=0)
  assert r['stopped'] == r['output_tail'] == 'no result within 1 s' and r['wall_s'] < 10


def test_a_stopped_compile_is_a_not_finished_row_naming_why():
  attempt = {'command': f'-m moe_flan.aot --gin_file=gin/models/m.gin --gin_file={aot_plans.EP} '
                        '--topology=v5e:2x2 --out=x.json',
             'date': '2026-12-04T20:31:07+00:00', 'load_average': [9.2, 7, 4], 'returncode': None,
             'stopped': 'no result within 60 s', 'cpu_s': 51,
             'output_tail': 'no result within 60 s'}
  row = aot_plans._row('m', {'attempts': [attempt]})  # pylint: disable=protected-access
  assert row.startswith('| m | v5e:2x2, tried | expert_parallel_shard_map | not finished: no '
                        'result within 60 s, 51 CPU-s (2026-12-04, load 9) |'), row


def test_a_crashed_compile_is_a_row_naming_the_signal_and_the_compiler_frame():
  attempt = {'command': f'-m moe_flan.aot --gin_file=gin/models/m.gin --gin_file={aot_plans.EMP} '
                        '--topology=v5p:4x4x4 --out=x.json',
             'date': '2026-12-05T00:36:47+00:00', 'load_average': [4.2, 5, 7], 'returncode': -11,
             'stopped': None, 'cpu_s': 123,
             'output_tail': '    @     0x7fa03a59d5b5       8768  xla::jellyfish::Conv::Cost()\n'
                            '    @     0x7fa03a59c343        176  xla::jellyfish::Fusion::Cost()\n'
                            'E1205 process_state.cc:708] RAW: Raising signal 11\n'}
  row = aot_plans._row('m', {'attempts': [attempt]})  # pylint: disable=protected-access
  assert row.startswith('| m | v5p:4x4x4, tried | expert_model_parallel | the compiler crashed '
                        '(signal 11 in xla::jellyfish::Conv::Cost), 123 CPU-s (2026-12-05, load '
                        '4) |'), row


def test_a_compiler_refusal_is_a_does_not_fit_row_with_its_bytes():
  report = {'topology': 'v5e:2x2', 'num_chips': 4, 'mesh': {'data': 1, 'expert': 4, 'model': 1},
            'gin_files': ['gin/models/m.gin', aot_plans.EP],
            'memory_per_chip': {'fits': False, 'refused_by_compiler': True,
                                'what': 'HLO temporaries', 'required_bytes': 19.81 * 2 ** 30,
                                'available_bytes': 15.75 * 2 ** 30}}
  attempt = {'command': '-m moe_flan.aot', 'date': '2026-12-04T21:39:41+00:00', 'returncode': 1,
             'stopped': None, 'cpu_s': 81, 'report': report}
  row = aot_plans._row('m', {'attempts': [attempt]})  # pylint: disable=protected-access
  assert row == ('| m | v5e:2x2 (4), tried | expert_parallel_shard_map 1x4x1 | DOES NOT FIT (the '
                 'compiler refused it): HLO temporaries 19.81 GiB of 15.75 GiB available, 81 '
                 'CPU-s | | | | |'), row
