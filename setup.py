"""moe_flan: FLAN-MoE (sparse Mixture-of-Experts T5) training in JAX/Flax."""
import setuptools

INSTALL_REQUIRES = [
    'jax==0.10.2',
    'jaxlib==0.10.2',
    'flax==0.12.8',
    'optax==0.2.8',
    'orbax-checkpoint==0.12.8',
    'gin-config==0.5.0',
    'seqio==0.0.20',
    'tensorflow==2.21.0',
    'tensorflow-text==2.21.1',
    'tensorflow-datasets==4.9.10',
    'sentencepiece==0.2.3',
    'clu==0.0.12',
    'numpy==2.4.6',
    'matplotlib==3.11.2',
    'tensorboard==2.21.0',
    'safetensors==0.7.0',
    'pyarrow>=14,<27',        # FLAN Collection Parquet exports (tasks/flan_collection)
]

TEST_REQUIRES = [
    'pytest==9.2.0',
    'pytest-xdist==3.8.0',
    'torch==2.13.0',          # CPU wheel; only the HF converter tests import it
    'transformers==4.57.6',   # last 4.x: classic Switch routing; 5.x drops capacity, ties T5 heads
]

# libtpu at the version jax[tpu] pins: moe_flan.aot compiles train steps for TPU topologies on
# any Linux host (no TPU needed); the tests compile for a small one.
TPU_REQUIRES = ['libtpu==0.0.42.*; platform_system == "Linux"']

setuptools.setup(
    name='moe_flan',
    version='0.1.0',
    description='FLAN-MoE: sparse Mixture-of-Experts T5 with instruction tuning, in JAX/Flax.',
    python_requires='>=3.11,<3.12',
    packages=setuptools.find_packages(include=['moe_flan', 'moe_flan.*', 'tasks', 'tasks.*',
                                               'benchmarks', 'benchmarks.*']),
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
