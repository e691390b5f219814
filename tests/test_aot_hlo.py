"""moe_flan.aot.hlo: collectives read from compiled HLO text (hand-written modules, no compile)."""
import pytest

from moe_flan.aot import hlo

MESH = {'data': 2, 'expert': 2, 'model': 1}   # device i sits at (i // 2, i % 2, 0)

MODULE = """HloModule jit_step, is_scheduled=true

%body (p: (s32[], bf16[8,16])) -> (s32[], bf16[8,16]) {
  %p = (s32[], bf16[8,16]{1,0}) parameter(0)
  %x = bf16[8,16]{1,0} get-tuple-element(%p), index=1
  %ar = bf16[8,16]{1,0:T(8,128)(2,1)} all-reduce(%x), channel_id=1, replica_groups=[2,2]<=[4], to_apply=%add, metadata={op_name="jit(step)/encoder/layers_1/mlp/dot_general"}
  ROOT %t = (s32[], bf16[8,16]{1,0}) tuple(%i, %ar)
}

ENTRY %main (a: f32[4,32]) -> f32[4,32] {
  %a = f32[4,32]{1,0} parameter(0)
  %w = (s32[], bf16[8,16]{1,0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  %a2a = f32[4,32]{1,0:T(8,128)} all-to-all(%a), channel_id=2, replica_groups=mesh['axis_0'=2,'axis_1'=2] {'axis_1'}, dimensions={0}, metadata={op_name="jit(step)/transpose(jvp(EncoderDecoder))/EncoderDecoder.encode/encoder/layers_1/moe/transpose"}
  %ags = (f32[2,32]{1,0}, f32[4,32]{1,0}) all-gather-start(%a), channel_id=3, replica_groups={{0,2},{1,3}}, dimensions={0}
  %agd = f32[4,32]{1,0} all-gather-done(%ags)
  %cps = (f32[4,32]{1,0}, f32[4,32]{1,0}, u32[]{:S(2)}, u32[]{:S(2)}) collective-permute-start(%a), channel_id=4, source_target_pairs={{0,1},{1,0},{2,3},{3,2}}
  %cpd = f32[4,32]{1,0} collective-permute-done(%cps)
  %rs = f32[1,32]{1,0} reduce-scatter(%a), channel_id=5, replica_groups=mesh['axis_0'=2,'axis_1'=2], device_ids=([2,2]T(1,0)) {'axis_1'}, dimensions={0}, to_apply=%add
  ROOT %out = f32[4,32]{1,0} add(%agd, %cpd)
}
"""


def _by_name(found):
  return {c.name: c for c in found}


def test_kinds_bytes_and_executions():
  found = _by_name(hlo.collectives(MODULE, 4))
  assert set(found) == {'ar', 'a2a', 'ags', 'cps', 'rs'}   # -done halves are not counted twice
  assert found['ar'].kind == 'all-reduce' and found['ar'].executions == 3   # while trip count
  assert found['ar'].buffer_bytes == 8 * 16 * 2
  assert found['a2a'].buffer_bytes == 4 * 32 * 4 and found['a2a'].executions == 1
  assert found['ags'].buffer_bytes == 4 * 32 * 4       # the gathered output, not the input
  assert found['cps'].buffer_bytes == 4 * 32 * 4       # the moved buffer, not the context scalars
  assert found['rs'].buffer_bytes == 1 * 32 * 4 * 2    # the input: output x group size
  # Link bytes: ring all-reduce sends 2 (n-1)/n of the buffer, all-to-all (n-1)/n.
  assert found['ar'].link_bytes == pytest.approx(2 * 0.5 * 8 * 16 * 2)
  assert found['a2a'].link_bytes == pytest.approx(0.5 * 4 * 32 * 4)


def test_groups_map_to_mesh_axes():
  found = _by_name(hlo.collectives(MODULE, 4))
  axes = {n: hlo.mesh_axes_of(c.groups, MESH) for n, c in found.items()}
  # [2,2]<=[4]: rows {0,1},{2,3} = devices differing in 'expert'.
  assert axes['ar'] == 'expert'
  assert axes['a2a'] == 'expert'            # mesh form, iota order: same rows
  assert axes['ags'] == 'data'              # {0,2},{1,3}
  assert axes['cps'] == 'expert'            # permute pairs within expert rows
  assert axes['rs'] == 'data'               # transposed device order: {0,2},{1,3}


def test_moe_layer_from_op_name():
  found = _by_name(hlo.collectives(MODULE, 4))
  assert found['a2a'].moe_layer == 'encoder/layers_1'   # backward pass op of that MoE layer
  assert found['ar'].moe_layer is None                  # an MLP op


# A scanned layer stack as a TPU executable prints it: no known_trip_count on the while, whose
# condition compares the counter with the number of blocks (4).
SCANNED = """HloModule jit_step, is_scheduled=true

%scan_cond (p: (s32[], f32[4,32])) -> pred[] {
  %c4 = s32[]{:T(128)} constant(4)
  %p = (s32[]{:T(128)}, f32[4,32]{1,0}) parameter(0)
  %i = s32[]{:T(128)} get-tuple-element(%p), index=0
  ROOT %lt = pred[]{:T(512)} compare(%i, %c4), direction=LT, metadata={op_name="jit(step)/encoder/while/cond/lt"}
}

%scan_body (p: (s32[], f32[4,32])) -> (s32[], f32[4,32]) {
  %p = (s32[], f32[4,32]{1,0}) parameter(0)
  %x = f32[4,32]{1,0} get-tuple-element(%p), index=1
  %a2a = f32[4,32]{1,0:T(8,128)} all-to-all(%x), channel_id=2, replica_groups={{0,1},{2,3}}, dimensions={0}, metadata={op_name="jit(step)/jvp(EncoderDecoder)/EncoderDecoder.encode/encoder/while/body/closed_call/layers/layers_1/moe/shard_map/all_to_all"}
  %a2a_remat = f32[4,32]{1,0:T(8,128)} all-to-all(%a2a), channel_id=4, replica_groups={{0,1},{2,3}}, dimensions={0}, metadata={op_name="jit(step)/transpose(jvp(EncoderDecoder))/EncoderDecoder.decode/decoder/while/body/closed_call/checkpoint/rematted_computation/layers/layers_0/moe/shard_map/all_to_all"}
  ROOT %t = (s32[], f32[4,32]{1,0}) tuple(%i, %a2a_remat)
}

%other_cond (p: (s32[], f32[4,32])) -> pred[] {
  %p = (s32[], f32[4,32]{1,0}) parameter(0)
  ROOT %done = pred[] get-tuple-element(%p), index=2
}

%other_body (p: (s32[], f32[4,32])) -> (s32[], f32[4,32]) {
  %p = (s32[], f32[4,32]{1,0}) parameter(0)
  %x = f32[4,32]{1,0} get-tuple-element(%p), index=1
  %ar = f32[4,32]{1,0} all-reduce(%x), channel_id=3, replica_groups={{0,1},{2,3}}, to_apply=%add
  ROOT %t = (s32[], f32[4,32]{1,0}) tuple(%i, %ar)
}

ENTRY %main (a: f32[4,32]) -> f32[4,32] {
  %a = f32[4,32]{1,0} parameter(0)
  %w = (s32[]{:T(128)}, f32[4,32]{1,0}) while(%init), condition=%scan_cond, body=%scan_body, metadata={op_name="jit(step)/encoder/while"}
  %v = (s32[]{:T(128)}, f32[4,32]{1,0}) while(%init), condition=%other_cond, body=%other_body
  ROOT %out = f32[4,32]{1,0} get-tuple-element(%w), index=1
}
"""


def test_scanned_loop_trip_count_from_its_condition_and_its_moe_layer():
  found = _by_name(hlo.collectives(SCANNED, 4))
  assert found['a2a'].executions == 4                   # counter < 4: one run per block
  assert found['a2a'].moe_layer == 'encoder/layers/layers_1'   # sublayer 1 of every block
  # Recomputed in the backward pass (T5Config.remat_policy): still that layer's.
  assert found['a2a_remat'].moe_layer == 'decoder/layers/layers_0'
  assert found['ar'].executions == 1                    # a condition of another form: once


@pytest.mark.parametrize('text, groups', [
    ("replica_groups={}", [{0, 1, 2, 3}]),
    ("replica_groups={{0,3},{1,2}}", [{0, 3}, {1, 2}]),
    ("replica_groups=[2,2]<=[2,2]T(1,0)", [{0, 2}, {1, 3}]),
    ("replica_groups=mesh['a'=2,'b'=2] {'a','b'}", [{0, 1, 2, 3}]),
    # Sub-axes of an axis of 4 = [2 (major), 2 (minor)]: 'a':(1)2 is the major, 'a':(2)2 the minor.
    ("replica_groups=mesh['a'=4] {'a':(1)2}", [{0, 2}, {1, 3}]),
    ("replica_groups=mesh['a'=4] {'a':(2)2}", [{0, 1}, {2, 3}]),
])
def test_replica_group_forms(text, groups):
  parsed, _ = hlo.parse_groups(text + ', dimensions={0}', 4)
  assert sorted(map(sorted, parsed)) == sorted(map(sorted, groups))


def test_axes_labels():
  assert hlo.mesh_axes_of([frozenset({0}), frozenset({1})], MESH) == 'none'
  assert hlo.mesh_axes_of([frozenset(range(4))], MESH) == 'data+expert'
  # {0, 3} differs in both 'data' and 'expert': a part of the data x expert groups.
  assert hlo.mesh_axes_of([frozenset({0, 3})], MESH) == 'data+expert (groups of 2)'
  four = {'data': 1, 'expert': 4, 'model': 1}
  assert hlo.mesh_axes_of([frozenset({0, 2}), frozenset({1, 3})], four) == 'expert (groups of 2)'
  assert hlo.mesh_axes_of(None, MESH) == 'unknown'


# One slice's program of a 2-slice step (as libtpu prints it, shortened): the cross-slice
# gradient all-reduce is a send/recv pair with libtpu's megascale runtime; the in-slice
# all-to-all has lost its op_name metadata.
MULTI_SLICE = """HloModule jit_step, is_scheduled=true, num_partitions=4

ENTRY %main (g: f32[64,8,128]) -> f32[64,8,128] {
  %g = f32[64,8,128]{2,1,0} parameter(0)
  %after-all.7 = token[] after-all(), frontend_attributes={MegascaleRendezvousKeyName="all-reduce.113_0"}
  %send.7 = (f32[64,8,128]{2,1,0:T(8,128)}, u32[], token[]) send(%g, %after-all.7), channel_id=3, is_host_transfer=true, frontend_attributes={_xla_host_transfer_handler_name="xla_megascale_runtime",_xla_host_transfer_rendezvous="all-reduce.113_0",_xla_megascale_reduce_operation="SUM",_xla_megascale_target="{1,2}x{0:3}",_xla_megascale_transfer_type="ALL_REDUCE"}
  %recv.7 = (f32[64,8,128]{2,1,0:T(8,128)}, u32[], token[]) recv(%after-all.7), channel_id=2, is_host_transfer=true, frontend_attributes={_xla_host_transfer_handler_name="xla_megascale_runtime",_xla_megascale_transfer_type="ALL_REDUCE"}
  %send-done.7 = token[] send-done(%send.7), channel_id=3, is_host_transfer=true
  %a2a = bf16[4,2,5,128]{3,1,2,0} all-to-all(%x), channel_id=1, replica_groups={{0,1,2,3}}, dimensions={0}
  ROOT %r = f32[64,8,128]{2,1,0} get-tuple-element(%recv.7), index=0
}
"""


def test_multi_slice_dcn_transfers_are_collectives_across_slices():
  found = _by_name(hlo.collectives(MULTI_SLICE, 4))
  assert set(found) == {'send.7', 'a2a'}           # the recv half is not counted again
  dcn = found['send.7']
  assert dcn.dcn and dcn.kind == 'all-reduce' and dcn.buffer_bytes == 64 * 8 * 128 * 4
  assert dcn.link_bytes == 0                       # none of it crosses the slice's ICI links
  assert not found['a2a'].dcn and found['a2a'].moe_layer is None
  from moe_flan.aot import report
  # The slice's devices 0-3 are one row of the 2-slice mesh: the 'expert' axis ('data' spans
  # the slices).
  table = report.collective_table(list(found.values()), {'data': 2, 'expert': 4, 'model': 1})
  assert {(r['kind'], r['mesh_axes']) for r in table} == {('all-reduce', 'slices (DCN)'),
                                                         ('all-to-all', 'expert')}


LOOPED = """HloModule jit_step, is_scheduled=true

%fused_dot (param_0: bf16[8,32], param_1: bf16[32,16]) -> f32[8,16] {
  %param_0 = bf16[8,32]{1,0} parameter(0)
  %param_1 = bf16[32,16]{1,0} parameter(1)
  ROOT %d = f32[8,16]{1,0} dot(%param_0, %param_1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%body (p: (s32[], bf16[8,32], bf16[32,16])) -> (s32[], bf16[8,32], bf16[32,16]) {
  %p = (s32[], bf16[8,32]{1,0}, bf16[32,16]{1,0}) parameter(0)
  %x = bf16[8,32]{1,0} get-tuple-element(%p), index=1
  %w = bf16[32,16]{1,0} get-tuple-element(%p), index=2
  %f = f32[8,16]{1,0} fusion(%x, %w), kind=kOutput, calls=%fused_dot
  ROOT %t = (s32[], bf16[8,32]{1,0}, bf16[32,16]{1,0}) tuple(%i, %x, %w)
}

%cond (c: (s32[], bf16[8,32], bf16[32,16])) -> pred[] {
  %c = (s32[], bf16[8,32]{1,0}, bf16[32,16]{1,0}) parameter(0)
  %n = s32[]{:T(128)} get-tuple-element(%c), index=0
  %constant.5 = s32[]{:T(128)} constant(5)
  ROOT %lt = pred[]{:T(512)} compare(%n, %constant.5), direction=LT
}

ENTRY %main (a: f32[2,6,6,4], k: f32[3,3,2,8]) -> f32[2,6,6,8] {
  %a = f32[2,6,6,4]{3,2,1,0} parameter(0)
  %k = f32[3,3,2,8]{3,2,1,0} parameter(1)
  %loop = (s32[], bf16[8,32]{1,0}, bf16[32,16]{1,0}) while(%init), condition=%cond, body=%body
  ROOT %conv = f32[2,6,6,8]{3,2,1,0} convolution(%a, %k), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f, feature_group_count=2
}
"""


def test_loop_flops_count_each_matmul_per_iteration():
  looped, once = hlo.loop_flops(LOOPED)
  dot = 2 * 8 * 16 * 32                 # output elements x contracted size
  # Per output feature and batch row: input features per group x the (output, tap) pairs of
  # each 6-wide spatial dimension under a 3-tap window padded by 1 that read no padding
  # (6 x 3 less the 2 edge taps).
  conv = 2 * (4 // 2) * 8 * 2 * (6 * 3 - 2) ** 2
  assert looped == 5 * dot + conv       # the body runs `counter < 5` times
  assert once == dot + conv             # as XLA's cost analysis counts it
