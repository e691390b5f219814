"""moe_flan: FLAN-MoE (sparse Mixture-of-Experts T5) training in JAX/Flax."""
import setuptools

# Compatible ranges: what this library needs beside other packages. The exact versions it is
# tested with are pinned in constraints.txt, which the README's commands and .ci/run install
# with: pip install -c constraints.txt -e '.[test]'
INSTALL_REQUIRES = [
    'jax>=0.10.2,<0.11',
    'jaxlib>=0.10.2,<0.11',
    'flax>=0.12.8,<0.13',
    'optax>=0.2.8,<0.3',
    'orbax-checkpoint>=0.12.8,<0.13',
    'gin-config>=0.5.0,<0.6',
    'seqio>=0.0.20,<0.1',
    'tensorflow>=2.21.0,<2.22',
    'tensorflow-text>=2.21.1,<2.22',     # built against one TensorFlow minor version
    'tensorflow-datasets>=4.9.10,<5',
    'sentencepiece>=0.2.0,<0.3',
    'clu>=0.0.12,<0.1',
    'numpy>=2.0,<3',
    'matplotlib>=3.8,<4',
    'tensorboard>=2.21.0,<3',
    'safetensors>=0.4,<1',
    'pyarrow>=14,<27',        # FLAN Collection Parquet exports (tasks/flan_collection)
]

TEST_REQUIRES = [
    'pytest>=9.2.0,<10',
    'pytest-xdist>=3.8.0,<4',
    # Only the HF converter tests import these. constraints.txt pins torch to 2.13.0, which
    # resolves to the CPU wheel where one is offered (e.g. from --find-links); this range keeps
    # that 2.13.0 acceptable, so pip installs no other (CUDA) build beside it.
    'torch>=2.13.0,<2.14',
    'transformers>=4.57.6,<5',   # 5.x drops classic Switch capacity routing and ties T5 heads
    # tests/test_notebooks.py executes notebooks/ headlessly in a Python kernel.
    'nbclient>=0.10,<0.12',
    'nbformat>=5.9,<6',
    'ipykernel>=6.29,<8',
]

# libtpu: moe_flan.aot compiles train steps for TPU topologies on any Linux host (no TPU
# needed); the tests compile for a small one. It must be the version the installed jax pins in
# jax[tpu] (constraints.txt: libtpu 0.0.42.1 for jax 0.10.2).
TPU_REQUIRES = ['libtpu>=0.0.42; platform_system == "Linux"']

setuptools.setup(
    name='moe_flan',
    version='0.1.0',
    description='FLAN-MoE: sparse Mixture-of-Experts T5 with instruction tuning, in JAX/Flax.',
    python_requires='>=3.11,<3.12',
    # The library and the data it needs; benchmarks/ and tests/ run from a checkout.
    packages=setuptools.find_packages(include=['moe_flan', 'moe_flan.*', 'tasks', 'tasks.*']),
    include_package_data=True,
    package_data={'tasks': ['data/*', 'data/**/*'], 'moe_flan': ['kernels/*.cc']},
    install_requires=INSTALL_REQUIRES,
    extras_require={'test': TEST_REQUIRES + TPU_REQUIRES, 'tpu': TPU_REQUIRES},
    entry_points={'console_scripts': [
        'moe_flan_train=moe_flan.train:console_main',
        'moe_flan_evaluate=moe_flan.evaluate:console_main',
        'moe_flan_infer=moe_flan.infer:console_main',
        'moe_flan_aot=moe_flan.aot.cli:console_main',
    ]},
)
