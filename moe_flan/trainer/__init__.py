"""The trainer: optimizers, freezing, train state/steps, checkpoints, metrics, the train loop.

Modules are imported by name (e.g. `from moe_flan.trainer import loop`); importing this package
registers nothing with gin by itself.
"""
