"""A model config from gin files (`config_from_gin`), e.g. the `model.gin` that training and
conversion write (`moe_flan.config_gin.config_to_gin`).
"""
from __future__ import annotations

import logging
from typing import Sequence

import gin

from moe_flan.config import MoeConfig, T5Config  # both: gin must know MoeConfig
from moe_flan.trainer import cli as trainer_cli
from moe_flan.trainer import gin_checks

def config_from_gin(gin_files: Sequence[str], gin_bindings: Sequence[str] = (),
                    search_paths: Sequence[str] = ()) -> T5Config:
  """The `T5Config` that gin files + bindings describe (bindings of other configurables, e.g.
  from run files, are skipped). Clears the global gin config before and after.

  Files are found as the train / evaluate / infer entry points find them (as given, else under
  the repository's gin/ and `search_paths`); one that is nowhere, or a missing include, is a
  ValueError naming it and the search paths.
  """
  search_paths = (trainer_cli.REPO_GIN_DIR,) + tuple(search_paths)
  gin_checks.check_gin_files(gin_files, search_paths)
  gin.clear_config()
  for path in search_paths:
    gin.add_config_file_search_path(path)
  quiet = trainer_cli._QuietGinProbes()  # pylint: disable=protected-access
  logging.getLogger().addFilter(quiet)
  try:
    gin.parse_config_files_and_bindings(list(gin_files), list(gin_bindings),
                                        finalize_config=False, skip_unknown=True)
    return T5Config()
  except OSError as e:     # an include that is nowhere to be found: gin's message, one line
    raise ValueError(' '.join(line.strip() for line in str(e).splitlines())) from e
  finally:
    logging.getLogger().removeFilter(quiet)
    # Left in place, the bindings would leak into every later T5Config(...) of the process.
    gin.clear_config()
