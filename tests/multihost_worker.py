"""One process of the multi-host test (tests/test_partitioning_multihost.py); also runnable alone.

    python tests/multihost_worker.py --num_processes=2 --process_id=0 \
        --coordinator_address=127.0.0.1:PORT --local_devices=2 --out=/tmp/p0.json \
        [--model_dir=/tmp/multihost_model]

Trains a tiny sparse EncoderDecoder for a few steps with the trainer's `make_train_step` on a
(data 1, expert 4, model 1) mesh over all processes' CPU devices (gloo collectives). Each process
generates the same global batches but feeds only its own rows (`Partitioner.data_shard_info` +
`shard_batch`, i.e. jax.make_array_from_process_local_data). Process 0 writes the per-step
losses and per-parameter sums of squares (computed on the mesh, replicated) as JSON.

With --model_dir, every process also logs each step's loss through the trainer's MetricsWriter
(only process 0 may write) and, after the last step, saves the sharded TrainState with the
trainer's Checkpointer (all processes call save: each writes its own expert shards); process 0
then writes the final params, gathered, to `<out>.params.npz` for a bit-exact restore check.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

B, LI, LT, V = 8, 8, 4, 64
NUM_STEPS = 3


def _parse(argv):
  parser = argparse.ArgumentParser()
  parser.add_argument('--coordinator_address', default=None)
  parser.add_argument('--num_processes', type=int, default=1)
  parser.add_argument('--process_id', type=int, default=0)
  parser.add_argument('--local_devices', type=int, default=4)
  parser.add_argument('--dispatch', default='expert_parallel')
  parser.add_argument('--out', required=True)
  parser.add_argument('--model_dir', default=None)
  return parser.parse_args(argv)


def _global_batches(np):
  rng = np.random.default_rng(0)
  for _ in range(NUM_STEPS):
    targets = rng.integers(1, V, (B, LT)).astype(np.int32)
    yield {'encoder_input_tokens': rng.integers(1, V, (B, LI)).astype(np.int32),
           'decoder_input_tokens': np.concatenate([np.zeros((B, 1), np.int32), targets[:, :-1]],
                                                  1),
           'decoder_target_tokens': targets,
           'decoder_loss_weights': np.ones((B, LT), np.float32)}


def _setup(devices, dispatch: str):
  """The tiny sparse model, a (1, 4, 1) mesh's partitioner and state shardings, the state's
  init function and make_step(return_grads) -> its unjitted SGD step."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from moe_flan import partitioning  # pylint: disable=g-import-not-at-top
  from moe_flan.config import MoeConfig, T5Config  # pylint: disable=g-import-not-at-top
  from moe_flan.model import EncoderDecoder  # pylint: disable=g-import-not-at-top
  from moe_flan.trainer import train_state as ts  # pylint: disable=g-import-not-at-top
  from moe_flan.trainer import train_step as step_lib  # pylint: disable=g-import-not-at-top

  moe = MoeConfig(num_experts=4, num_selected_experts=2, dispatch=dispatch, group_size=4,
                  expert_mlp_dim=16, min_capacity=1, train_capacity_factor=1.0,
                  encoder_sparse_layout='all', decoder_sparse_layout='all')
  config = T5Config(vocab_size=V, emb_dim=16, num_heads=2, head_dim=8, num_encoder_layers=1,
                    num_decoder_layers=1, mlp_dim=32, moe=moe)
  model = EncoderDecoder(config)
  tx = optax.sgd(0.5)
  # The expert axis spans both processes: the token all-to-all crosses the process boundary.
  partitioner = partitioning.Partitioner(partitioning.make_mesh((1, 4, 1), devices),
                                         partitioning.logical_axis_rules())
  init = ts.init_params_fn(model, {'inputs': LI, 'targets': LT})
  with partitioner.activate():
    boxed = jax.eval_shape(init, jax.random.PRNGKey(0))
    param_shardings = partitioner.shardings(boxed)
  repl = partitioner.replicated
  # SGD's state is empty: only params need shardings.
  shardings = ts.TrainState(step=repl, params=param_shardings, opt_state=repl, rng=repl)

  def fresh(rng):
    values = jax.tree.map(lambda b: b.value, init(rng), is_leaf=lambda b: hasattr(b, 'names'))
    return ts.new_state(values, tx, rng)

  frozen = jax.tree.map(lambda _: False, nn.meta.unbox(boxed))
  make_step = lambda return_grads: step_lib.make_train_step(model, config, tx, lambda s: 0.5,
                                                            frozen, return_grads=return_grads)
  return partitioner, shardings, fresh, make_step


def run(devices=None, dispatch: str = 'expert_parallel', model_dir=None):
  """Trains NUM_STEPS steps on a (1, 4, 1) mesh over `devices` (default: all processes').

  Returns (final TrainState, summary dict). With `model_dir`, logs losses via MetricsWriter and
  saves the final state with the trainer's Checkpointer (synchronously) under `model_dir`.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from moe_flan.trainer import checkpoints  # pylint: disable=g-import-not-at-top
  from moe_flan.trainer import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from moe_flan.trainer import step_buffers  # pylint: disable=g-import-not-at-top

  partitioner, shardings, fresh, make_step = _setup(devices, dispatch)
  repl = partitioner.replicated
  shard_id, num_shards = partitioner.data_shard_info()
  rows = B // num_shards
  # Every process makes a writer, as the trainer does; only process 0's may touch the disk.
  writer = metrics_lib.MetricsWriter(model_dir, tensorboard=False) if model_dir else None
  losses = []
  with partitioner.activate():
    state = jax.jit(fresh, out_shardings=shardings)(jax.random.PRNGKey(0))
    # The trainer's default step: one jitted call, the state donated.
    jitted = step_buffers.jit_train_step(make_step, False,
                                         (shardings, partitioner.data_sharding),
                                         (shardings, repl), shardings.params)
    for batch in _global_batches(np):
      local = {k: v[shard_id * rows:(shard_id + 1) * rows] for k, v in batch.items()}
      state, metrics = jitted(state, partitioner.shard_batch(local))
      losses.append(float(np.asarray(metrics['loss'])))
      if writer is not None:
        writer.write(len(losses), {'loss': metrics['loss'],
                                   'writer_process': np.float32(jax.process_index())})
    sums = jax.jit(lambda p: jax.tree.map(lambda x: jnp.sum(x * x), p),
                   out_shardings=repl)(state.params)
  if model_dir:
    writer.close()
    ckpt = checkpoints.Checkpointer(model_dir, checkpoints.CheckpointConfig(async_save=False))
    saved = ckpt.save(state, data_position=NUM_STEPS, force=True)
    ckpt.close()
    assert saved, f'process {jax.process_index()}: Checkpointer.save did not save'
  flat = jax.tree_util.tree_flatten_with_path(sums)[0]
  print(f'process {jax.process_index()}: shard {shard_id}/{num_shards} losses {losses}',
        flush=True)
  return state, {'losses': losses, 'num_shards': num_shards,
                 'process_count': jax.process_count(),
                 'param_sq_sums': {jax.tree_util.keystr(p): float(np.asarray(v))
                                   for p, v in flat}}


def train(devices=None, dispatch: str = 'expert_parallel') -> dict:
  """The summary of `run` (losses, shard info, per-param sums of squares)."""
  return run(devices, dispatch)[1]


def restore(model_dir: str, like_state):
  """(TrainState, meta) of the latest checkpoint under `model_dir`, on `like_state`'s shardings."""
  from moe_flan.trainer import checkpoints  # pylint: disable=g-import-not-at-top
  ckpt = checkpoints.Checkpointer(model_dir, checkpoints.CheckpointConfig(async_save=False))
  try:
    return ckpt.restore(like_state)
  finally:
    ckpt.close()


def gathered_params(state) -> dict:
  """'a/b/c' -> host numpy array of every param, gathered from all processes."""
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  mesh = jax.tree.leaves(state.params)[0].sharding.mesh
  repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  full = jax.jit(lambda p: p, out_shardings=repl)(state.params)
  return {k: np.asarray(v) for k, v in
          flax.traverse_util.flatten_dict(full, sep='/').items()}


def main(argv):
  args = _parse(argv)
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_num_cpu_devices', args.local_devices)
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  from moe_flan.partitioning import distributed  # pylint: disable=g-import-not-at-top
  distributed.initialize(args.coordinator_address, args.num_processes, args.process_id,
                         timeout_s=120)
  state, result = run(dispatch=args.dispatch, model_dir=args.model_dir)
  params = gathered_params(state) if args.model_dir else None   # collective: every process
  if jax.process_index() == 0:
    with open(args.out, 'w') as f:
      json.dump(result, f)
    if params is not None:
      import numpy as np  # pylint: disable=g-import-not-at-top
      np.savez(args.out + '.params.npz', **params)


if __name__ == '__main__':
  main(sys.argv[1:])
