"""C++ kernels for XLA:CPU (built on first use, see build.py)."""
