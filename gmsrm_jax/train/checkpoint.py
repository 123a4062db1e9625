"""orbax checkpointing of the train state with its config; strict restore."""

import os
from typing import Any

from absl import logging
import jax
import ml_collections
import orbax.checkpoint as ocp

STATE = "state"
CONFIG = "config"


class CheckpointMismatchError(ValueError):
  """The checkpoint on disk does not fit the model the config builds."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def create_manager(workdir: str, *, max_to_keep: int | None = None,
                   save_interval_steps: int = 1, read_only: bool = False
                   ) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, save_interval_steps=save_interval_steps,
      enable_async_checkpointing=True, read_only=read_only, create=not read_only)
  # Handlers named up front, so a fresh manager can read metadata before any save/restore.
  return ocp.CheckpointManager(
      checkpoint_dir(workdir), options=options,
      item_handlers={STATE: ocp.StandardCheckpointHandler(), CONFIG: ocp.JsonCheckpointHandler()})


def save(manager: ocp.CheckpointManager, step: int, state: Any,
         config: ml_collections.ConfigDict, *, force: bool = False) -> bool:
  """Asynchronous: returns once the device arrays are copied; orbax writes in the background.

  A save interrupted by a crash leaves only a temporary directory, which restore ignores.
  """
  return manager.save(step, args=ocp.args.Composite(**{
      STATE: ocp.args.StandardSave(state),
      CONFIG: ocp.args.JsonSave(config.to_dict())}), force=force)


def _paths(tree: Any) -> dict[str, Any]:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(path, simple=True, separator="/"): leaf for path, leaf in flat}


def check_compatible(metadata_tree: Any, abstract_state: Any) -> None:
  """Raises naming the first leaves that differ; orbax alone could load part of a tree."""
  stored = _paths(metadata_tree)
  wanted = _paths(abstract_state)
  problems = []
  for name in sorted(set(wanted) - set(stored)):
    problems.append(f"missing in checkpoint: {name}")
  for name in sorted(set(stored) - set(wanted)):
    problems.append(f"not in the model: {name}")
  for name in sorted(set(stored) & set(wanted)):
    s_shape, w_shape = tuple(stored[name].shape), tuple(wanted[name].shape)
    if s_shape != w_shape:
      problems.append(f"{name}: checkpoint shape {s_shape} != model shape {w_shape}")
  if problems:
    shown = "\n  ".join(problems[:20])
    more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
    raise CheckpointMismatchError(
        "The checkpoint does not match the model built from this config (was it written with "
        f"a different model/config?):\n  {shown}{more}")


def restore(manager: ocp.CheckpointManager, abstract_state: Any, step: int | None = None
            ) -> tuple[Any, int] | None:
  """Restores `step` (default: latest complete) into the shardings of `abstract_state`.

  `abstract_state` is a tree of jax.ShapeDtypeStruct with shardings (from jax.eval_shape).
  Returns None when there is no checkpoint.
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    return None
  metadata = manager.item_metadata(step)[STATE]
  if metadata is None:
    raise CheckpointMismatchError(f"Checkpoint step {step} in {manager.directory} has no "
                                  "readable train state.")
  check_compatible(metadata, abstract_state)
  restored = manager.restore(step, args=ocp.args.Composite(**{
      STATE: ocp.args.StandardRestore(abstract_state)}))
  logging.info("Restored checkpoint at step %d from %s", step, manager.directory)
  return restored[STATE], step


def restore_config(manager: ocp.CheckpointManager, step: int | None = None) -> dict | None:
  step = manager.latest_step() if step is None else step
  if step is None:
    return None
  return manager.restore(step, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))[
      CONFIG]
