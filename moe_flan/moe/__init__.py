"""Mixture-of-Experts layer family: routers, dispatchers, experts, losses and the layer.

Public API:
  MoeLayer                         the sparse feed-forward block (layer.py)
  ROUTERS, register_router         routing strategies by name (routing.py)
  DISPATCHERS, register_dispatcher dispatch implementations by name (dispatch.py)
  Routing, Router                  the routing decision record and the float32 router
  ExpertFFN, ExpertParams          expert weights and their evaluation (experts.py)
  collect_moe_metrics              per-layer metrics averaged over layers (losses.py)
"""
from moe_flan.moe.dispatch import DISPATCHERS, register_dispatcher
from moe_flan.moe import dispatch_segmented  # registers 'segmented'  # noqa: F401
from moe_flan.moe.experts import ExpertFFN, ExpertParams
from moe_flan.moe.layer import MoeLayer
from moe_flan.moe.losses import collect_moe_metrics
from moe_flan.moe.routing import ROUTERS, Router, Routing, register_router

__all__ = ['MoeLayer', 'ROUTERS', 'register_router', 'DISPATCHERS', 'register_dispatcher',
           'Routing', 'Router', 'ExpertFFN', 'ExpertParams', 'collect_moe_metrics']
