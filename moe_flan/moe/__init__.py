"""Mixture-of-Experts layer family: routers, dispatchers, experts, losses and the layer.

Public API:
  MoeLayer, check_config           the sparse feed-forward block and its name checks (layer.py)
  ROUTERS, register_router         built-in routing strategies; users' extensions (routing.py)
  DISPATCHERS, register_dispatcher built-in dispatch implementations; users' (dispatch.py)
  Routing, Router                  the routing decision record and the float32 router
  ExpertFFN, ExpertParams          expert weights and their evaluation (experts.py)
  collect_moe_metrics              per-layer metrics averaged over layers (losses.py)
"""
from moe_flan.moe.dispatch import DISPATCHERS, dispatcher_names, register_dispatcher
from moe_flan.moe.experts import ExpertFFN, ExpertParams
from moe_flan.moe.layer import MoeLayer, check_config
from moe_flan.moe.losses import collect_moe_metrics
from moe_flan.moe.routing import ROUTERS, Router, Routing, register_router, router_names

__all__ = ['MoeLayer', 'check_config', 'ROUTERS', 'register_router', 'router_names',
           'DISPATCHERS', 'register_dispatcher', 'dispatcher_names', 'Routing', 'Router',
           'ExpertFFN', 'ExpertParams', 'collect_moe_metrics']
