"""Starts TensorFlow for the input pipeline only: no accelerators, no start-up noise about them.

moe_flan uses TensorFlow for tf.data on the host; JAX owns the accelerators. TensorFlow is
imported here with its GPUs hidden (so it never reserves accelerator memory JAX needs), and the
lines its C++ runtime prints while importing and enumerating devices - "failed call to cuInit"
on every machine without a GPU driver, "Could not find cuda drivers", oneDNN notices about TF's
own CPU kernels (the model does not run on them) - are dropped. Anything else TensorFlow prints
in that window passes through to stderr unchanged.
"""
from __future__ import annotations

import os
import sys
import tempfile

# Substrings of the start-up lines about devices TensorFlow does not use here.
DEVICE_NOISE = (
    'All log messages before absl::InitializeLog() is called are written to STDERR',
    'oneDNN custom operations are on',
    'Could not find cuda drivers on your machine',
    'failed call to cuInit',
    'Unable to register cuDNN factory', 'Unable to register cuFFT factory',
    'Unable to register cuBLAS factory', 'computation placer already registered',
    'TF-TRT Warning: Could not find TensorRT',
    'This TensorFlow binary is optimized to use available CPU instructions',
    'To enable the following instructions',
)


def _hide_accelerators(tf) -> None:
  for kind in ('GPU', 'TPU'):
    try:
      tf.config.set_visible_devices([], kind)
    except (RuntimeError, ValueError):
      pass   # devices already initialised (they can only be hidden before first use)


def start_tensorflow() -> None:
  """Imports TensorFlow with accelerators hidden and its device start-up lines filtered.

  Idempotent; a no-op for the filtering once TensorFlow is imported (its start-up is over).
  """
  if 'tensorflow' in sys.modules:
    _hide_accelerators(sys.modules['tensorflow'])
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)   # TF's C++ logging writes to file descriptor 2 directly
    try:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      _hide_accelerators(tf)     # enumerates TF's devices: the cuInit attempt happens here
    finally:   # also when the import fails: its messages must reach the user
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      _replay(captured.read().decode('utf-8', errors='replace'))


def _replay(text: str) -> None:
  """Writes the captured lines to stderr, except the device start-up noise."""
  kept = [line for line in text.splitlines(keepends=True)
          if not any(noise in line for noise in DEVICE_NOISE)]
  if kept:
    sys.stderr.write(''.join(kept))
    sys.stderr.flush()
