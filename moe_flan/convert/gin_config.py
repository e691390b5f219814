"""A model config from gin files (`config_from_gin`), e.g. the `model.gin` that training and
conversion write (`moe_flan.config_gin.config_to_gin`).
"""
from __future__ import annotations

from typing import Sequence

import gin

from moe_flan.config import MoeConfig, T5Config  # both: gin must know MoeConfig
from moe_flan.trainer import cli as trainer_cli


def config_from_gin(gin_files: Sequence[str], gin_bindings: Sequence[str] = (),
                    search_paths: Sequence[str] = ()) -> T5Config:
  """The `T5Config` that gin files + bindings describe (bindings of other configurables, e.g.
  from run files, are skipped). Clears the global gin config before and after.

  Files are found as the train / evaluate / infer entry points find them (as given, else under
  the repository's gin/ and `search_paths`); one that is nowhere, or a missing include, is a
  ValueError naming it and the search paths.
  """
  try:
    trainer_cli.parse_gin(gin_files, gin_bindings, search_paths, skip_unknown=True)
    return T5Config()
  finally:
    # Left in place, the bindings would leak into every later T5Config(...) of the process.
    gin.clear_config()
