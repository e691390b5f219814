"""Checkpoint interoperability with Hugging Face T5 v1.1 / FLAN-T5 and SwitchTransformers.

Imported SwitchTransformers checkpoints route with the built-in 'hf_switch' router
(`moe_flan.moe.routing.hf_switch`). CLI: `python -m moe_flan.convert --help`.
"""
from moe_flan.convert.hf_checkpoint import config_from_hf
from moe_flan.convert.hf_checkpoint import export_hf
from moe_flan.convert.hf_checkpoint import import_hf
from moe_flan.convert.hf_checkpoint import params_from_hf
from moe_flan.convert.hf_checkpoint import params_to_hf

__all__ = ['config_from_hf', 'export_hf', 'import_hf', 'params_from_hf', 'params_to_hf']
