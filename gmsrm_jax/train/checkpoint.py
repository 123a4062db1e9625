"""orbax checkpointing of the train state with its config; strict restore."""

import os
from typing import Any

from absl import logging
import jax
import ml_collections
import orbax.checkpoint as ocp

from gmsrm_jax.tree_match import CheckpointMismatchError, check_compatible  # noqa: F401

STATE = "state"
CONFIG = "config"


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
