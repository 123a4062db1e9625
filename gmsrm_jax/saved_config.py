"""The config saved with a run's checkpoint, as an ml_collections config file.

Entry points that work on a trained run (evaluate.py, export.py) load it in place of
`--config` when that flag is not given (`cli.parse_flags` passes
`--config=<this file>:<step>:<workdir>`), so `--config.*` overrides apply on top of what the
run was trained with instead of on top of a config file that may differ from it.
"""

import ml_collections


def get_config(arg: str) -> ml_collections.ConfigDict:
  # Imported here: ml_collections loads this file by path, outside the package's imports.
  from gmsrm_jax.train import checkpoint  # pylint: disable=g-import-not-at-top
  step, workdir = arg.split(":", 1)
  stored, _ = checkpoint.read_config(workdir, int(step) if step else None)
  return ml_collections.ConfigDict(stored)
