"""Test set-up: 8 simulated host CPU devices, so sharded code is tested against 1 device."""
import os

# Must happen before jax initialises its backends (i.e. before any test imports jax).
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
