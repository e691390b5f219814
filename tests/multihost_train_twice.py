"""One process of a multi-process run that trains twice, as two runs of `moe_flan.train` would,
without paying a second process start (imports, jax.distributed, compiles come from the cache):

    COMMAND=tests/multihost_train_twice.py SCRATCH_MODEL_DIR=/tmp/s SCRATCH_STEPS=4 \\
        launch/local_multiprocess.sh 2 --gin_file=... --gin.MODEL_DIR=... --gin.TRAIN_STEPS=...

First a run into $SCRATCH_MODEL_DIR to step $SCRATCH_STEPS (from step 0, or from its latest
checkpoint as any run resumes; the same gin files and flags otherwise), then the run the
arguments describe. Used by tests/test_trainer_multihost_parity.py and
tests/test_trainer_multihost_preemption.py.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gin  # pylint: disable=g-import-not-at-top,wrong-import-position

from moe_flan import train  # pylint: disable=g-import-not-at-top,wrong-import-position
from moe_flan.trainer import cli  # pylint: disable=g-import-not-at-top,wrong-import-position


def _scratch_argv(argv):
  """`argv` with MODEL_DIR and TRAIN_STEPS replaced by the scratch run's."""
  kept = [a for a in argv if not a.startswith(('--gin.MODEL_DIR=', '--gin.TRAIN_STEPS='))]
  return kept + [f"--gin.MODEL_DIR='{os.environ['SCRATCH_MODEL_DIR']}'",
                 f"--gin.TRAIN_STEPS={os.environ['SCRATCH_STEPS']}"]


def main() -> int:
  argv = sys.argv[1:]
  try:
    status = train.main(_scratch_argv(argv))
  finally:
    gin.clear_config()
  return status or train.main(argv)


if __name__ == '__main__':
  cli.console_entry(main, 'moe_flan.train')
