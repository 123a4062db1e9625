"""orbax checkpointing of the train state with its config; strict restore."""

import dataclasses
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
  absent = _array_free_fields_absent_on_disk(metadata, abstract_state)
  target = abstract_state
  if absent:
    # orbax refuses a target with keys the checkpoint lacks, even empty ones: restore the
    # fields that are on disk and keep the (array-free) others as the abstract state has them.
    target = {f.name: getattr(abstract_state, f.name) for f in dataclasses.fields(abstract_state)
              if f.name not in absent}
  restored = manager.restore(step, args=ocp.args.Composite(**{
      STATE: ocp.args.StandardRestore(target)}))[STATE]
  if absent:
    restored = abstract_state.replace(**restored)
  logging.info("Restored checkpoint at step %d from %s", step, manager.directory)
  return restored, step


def _array_free_fields_absent_on_disk(metadata: Any, abstract_state: Any) -> tuple[str, ...]:
  """State fields that hold no arrays and are missing from a checkpoint written before they
  existed (e.g. `TrainState.frozen`, empty for models without frozen parameters)."""
  if not dataclasses.is_dataclass(abstract_state) or not hasattr(metadata, "keys"):
    return ()
  stored = set(metadata.keys())
  return tuple(f.name for f in dataclasses.fields(abstract_state)
               if f.name not in stored and not jax.tree.leaves(getattr(abstract_state, f.name)))


def restore_config(manager: ocp.CheckpointManager, step: int | None = None) -> dict | None:
  step = manager.latest_step() if step is None else step
  if step is None:
    return None
  return manager.restore(step, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))[
      CONFIG]
