"""orbax checkpointing of the train state with its config; strict, checked restore.

A checkpoint is {state, config}. Restoring checks the stored tree against the model
(`CheckpointMismatchError` names the leaves that differ), then reads it; a checkpoint whose
files cannot be read, or whose state holds NaN/inf, is damaged (`CheckpointDamagedError`).
Training falls back past damaged checkpoints to the newest one that restores and sets the
damaged ones aside (`set_aside`); evaluation and export name the damaged step instead.
"""

import dataclasses
import os
import sys
from typing import Any, Sequence

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import orbax.checkpoint as ocp

from gmsrm_jax.train import health
from gmsrm_jax.tree_match import CheckpointMismatchError, check_compatible  # noqa: F401

STATE = "state"
CONFIG = "config"
SET_ASIDE = "checkpoints_set_aside"


class CheckpointDamagedError(RuntimeError):
  """A checkpoint (or every checkpoint) of a run cannot be restored."""


@dataclasses.dataclass(frozen=True)
class Restored:
  state: Any
  step: int
  config: dict[str, Any]  # The config saved with the state (JSON types: lists, not tuples).
  skipped: tuple[int, ...] = ()  # Newer steps that were damaged (training's fallback only).


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def create_manager(workdir: str, *, max_to_keep: int | None = None,
                   save_interval_steps: int = 1, read_only: bool = False
                   ) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, save_interval_steps=save_interval_steps,
      enable_async_checkpointing=True, read_only=read_only, create=not read_only,
      # A save cut short by a crash or kill -9 leaves only a temporary directory; a writer
      # removes those when it starts (readers ignore them).
      cleanup_tmp_directories=not read_only)
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


def read_config(workdir: str, step: int | None = None) -> tuple[dict[str, Any], int]:
  """(the config saved with checkpoint `step` (default: the newest), that step), without
  reading the state: what evaluation, export and inpainting start from.

  Raises FileNotFoundError (with the command to train) when the run has no such checkpoint,
  CheckpointDamagedError when the config cannot be read.
  """
  manager = create_manager(workdir, read_only=True)
  steps = sorted(manager.all_steps())
  if not steps:
    raise FileNotFoundError(
        f"No checkpoint in {checkpoint_dir(workdir)}. Train first: python train.py "
        f"--config=<config> --workdir={workdir}")
  if step is not None and step not in steps:
    raise FileNotFoundError(f"No checkpoint step {step} in {manager.directory}; its steps: "
                            f"{steps}.")
  step = steps[-1] if step is None else step
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**{
        CONFIG: ocp.args.JsonRestore()}))
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointDamagedError(f"The config of checkpoint step {step} in "
                                 f"{manager.directory} cannot be read ({_short(e)}).") from e
  return restored[CONFIG], step


def _short(error: BaseException) -> str:
  # tensorstore appends its whole JSON spec to every message.
  text = f"{type(error).__name__}: {error}".split(" [tensorstore_spec=")[0]
  return text if len(text) <= 400 else text[:400] + " ..."


def _restore_step(manager: ocp.CheckpointManager, abstract_state: Any, step: int) -> Restored:
  try:
    state_metadata = manager.item_metadata(step).get(STATE)
  except Exception as e:  # pylint: disable=broad-except
    # orbax and tensorstore report damaged files through many types (ValueError, KeyError,
    # JSONDecodeError, FileNotFoundError, ...); all mean "this step cannot be read".
    raise CheckpointDamagedError(f"its metadata cannot be read ({_short(e)})") from e
  if state_metadata is None:
    raise CheckpointDamagedError("it has no train state")
  check_compatible(state_metadata, abstract_state)  # A mismatch is the config's, not damage.
  absent = _array_free_fields_absent_on_disk(state_metadata, abstract_state)
  target = abstract_state
  if absent:
    # orbax refuses a target with keys the checkpoint lacks, even empty ones: restore the
    # fields that are on disk and keep the (array-free) others as the abstract state has them.
    target = {f.name: getattr(abstract_state, f.name) for f in dataclasses.fields(abstract_state)
              if f.name not in absent}
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**{
        STATE: ocp.args.StandardRestore(target), CONFIG: ocp.args.JsonRestore()}))
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointDamagedError(f"its files cannot be read ({_short(e)})") from e
  state = abstract_state.replace(**restored[STATE]) if absent else restored[STATE]
  bad = health.nonfinite_fields(state)
  if bad:
    raise CheckpointDamagedError(f"its state holds non-finite values in {', '.join(bad)}")
  return Restored(state=state, step=step, config=restored[CONFIG])


def _array_free_fields_absent_on_disk(metadata: Any, abstract_state: Any) -> tuple[str, ...]:
  """State fields that hold no arrays and are missing from a checkpoint written before they
  existed (e.g. `TrainState.frozen`, empty for models without frozen parameters)."""
  if not dataclasses.is_dataclass(abstract_state) or not hasattr(metadata, "keys"):
    return ()
  stored = set(metadata.keys())
  return tuple(f.name for f in dataclasses.fields(abstract_state)
               if f.name not in stored and not jax.tree.leaves(getattr(abstract_state, f.name)))




def restore(manager: ocp.CheckpointManager, abstract_state: Any, step: int | None = None, *,
            fallback: bool = False) -> Restored | None:
  """Restores `step` (default: the latest) into the shardings of `abstract_state`.

  `abstract_state` is a tree of jax.ShapeDtypeStruct with shardings (from jax.eval_shape).
  With `fallback` (training) and no `step`, a damaged checkpoint is logged as an error and
  the next older one is tried. Returns None when there is no checkpoint.

  Raises:
    CheckpointMismatchError: the checkpoint does not fit the model (names the leaves).
    CheckpointDamagedError: the requested (or latest) step cannot be restored, naming it and
      the other steps; with `fallback`, when no step can be restored, listing why for each.
    FileNotFoundError: `step` is not among the checkpoints.
  """
  available = sorted(manager.all_steps(), reverse=True)
  if not available:
    if step is not None:
      raise FileNotFoundError(f"No checkpoint in {manager.directory}; --step={step} needs one.")
    return None
  if step is not None and step not in available:
    raise FileNotFoundError(f"No checkpoint step {step} in {manager.directory}; its steps: "
                            f"{sorted(available)}.")
  candidates = [step] if step is not None else available if fallback else available[:1]
  _ignore_closed_event_loop_noise()
  failures = []
  for candidate in candidates:
    try:
      restored = _restore_step(manager, abstract_state, candidate)
    except CheckpointDamagedError as e:
      failures.append((candidate, str(e)))
      if not fallback or step is not None:
        others = [s for s in available if s != candidate]
        choose = (f"Choose another step with --step=N (steps here: {others})" if others
                  else "It is the only checkpoint here")
        raise CheckpointDamagedError(
            f"Checkpoint step {candidate} in {manager.directory} cannot be restored: {e}. "
            f"{choose}.") from e.__cause__
      logging.error("CHECKPOINT STEP %d IN %s IS DAMAGED AND SKIPPED: %s. Falling back to the "
                    "next older checkpoint.", candidate, manager.directory, e)
      continue
    logging.info("Restored checkpoint at step %d from %s", candidate, manager.directory)
    return dataclasses.replace(restored, skipped=tuple(s for s, _ in failures))
  reasons = "\n  ".join(f"step {s}: {reason}" for s, reason in failures)
  raise CheckpointDamagedError(
      f"No checkpoint in {manager.directory} can be restored:\n  {reasons}\nNothing was "
      "restored and nothing was started from scratch. To start this run again from its seed, "
      f"move {manager.directory} aside.")


def set_aside(manager: ocp.CheckpointManager, steps: Sequence[int], reason: str) -> list[str]:
  """Moves checkpoint steps out of the manager's sight, to <workdir>/checkpoints_set_aside/.

  Nothing is deleted: a damaged checkpoint stays for inspection, and the checkpoints after a
  restored earlier step stay recoverable. Returns the new paths.
  """
  directory = os.fspath(manager.directory)
  target_root = os.path.join(os.path.dirname(directory), SET_ASIDE)
  moved = []
  for step in steps:
    target = os.path.join(target_root, f"{step}_{reason}")
    suffix = 0
    while os.path.exists(target):
      suffix += 1
      target = os.path.join(target_root, f"{step}_{reason}.{suffix}")
    moved.append(target)
    if jax.process_index() == 0:
      os.makedirs(target_root, exist_ok=True)
      os.rename(os.path.join(directory, str(step)), target)
    logging.warning("Checkpoint step %d (%s) moved to %s.", step, reason.replace("_", " "),
                    target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("gmsrm_jax.checkpoint.set_aside")
  manager.reload()
  return moved


_previous_unraisable_hook = None


def _ignore_closed_event_loop_noise() -> None:
  """Drops the 'Event loop is closed' reports a failed orbax read leaves behind.

  When one tensorstore read of a damaged checkpoint fails, orbax closes its event loop while
  the other reads are still running; each of them then reports "Event loop is closed" from a
  tensorstore thread, dozens of tracebacks that bury the real error (which we raise or log).
  Every other unraisable exception still reaches the previous hook.
  """
  global _previous_unraisable_hook
  if _previous_unraisable_hook is not None:
    return
  _previous_unraisable_hook = previous = sys.unraisablehook

  def hook(unraisable):
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
      previous(unraisable)

  sys.unraisablehook = hook
