"""train_and_evaluate: the one training loop every config runs through."""

import contextlib
import functools
import itertools
import os
import shlex
import sys
import time
from typing import Any, Callable, Sequence

from absl import logging
from clu import metric_writers
from clu import periodic_actions
import jax
from jax.experimental.compilation_cache import compilation_cache as jax_compilation_cache
import jax.numpy as jnp
import ml_collections
import numpy as np

from gmsrm_jax import config_checks
from gmsrm_jax import visualize
from gmsrm_jax.data import pipeline
from gmsrm_jax.train import checkpoint
from gmsrm_jax.train import health
from gmsrm_jax.train import parallel
from gmsrm_jax.train import preemption
from gmsrm_jax.train import state as state_lib
from gmsrm_jax.train import tasks


def init_function(config: ml_collections.ConfigDict, task: tasks.Task, components: Any
                  ) -> Callable[[], state_lib.TrainState]:
  """The run's initial state as a function of nothing: the same state for the same seed."""
  return functools.partial(task.init_state, components, config, jax.random.PRNGKey(config.seed))


def abstract_train_state(config: ml_collections.ConfigDict, task: tasks.Task, components: Any,
                         mesh) -> tuple[Any, Any]:
  """(init function, abstract state with shardings): the restore target and the init plan."""
  init_fn = init_function(config, task, components)
  sharding = parallel.replicated(mesh)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                          jax.eval_shape(init_fn))
  return init_fn, abstract


def restore_or_init(config, task, components, mesh, manager, *, step: int | None = None,
                    allow_config_change: Sequence[str] = ()):
  """maxtext's load order: resume from the workdir's checkpoint if any; else initialise from
  the seed with the pre-trained frozen parts the config names (loaded first, so a missing
  file fails before any compile; placed after init, so no weight is a compiled constant).

  Resuming restores `step` (default: the newest checkpoint that restores; damaged newer ones
  are logged and set aside, never silently replaced by a fresh start), checks the config
  against the checkpoint's (config_checks.check_changes) and sets aside any checkpoint newer
  than the restored one, so that the run's next saves continue from it.
  """
  init_fn, abstract = abstract_train_state(config, task, components, mesh)
  restored = checkpoint.restore(manager, abstract, step, fallback=True)
  if restored is not None:
    config_checks.check_changes(
        restored.config, config, guarded=config_checks.RESUME_GUARDED,
        unguarded=config_checks.RESUME_UNGUARDED, allowed=allow_config_change,
        what=f"checkpoint step {restored.step} in {manager.directory}")
    if restored.skipped:
      checkpoint.set_aside(manager, restored.skipped, "damaged")
    later = sorted(s for s in manager.all_steps() if s > restored.step)
    if later:
      checkpoint.set_aside(manager, later, f"after_restoring_{restored.step}")
    return restored.state
  frozen = task.load_frozen(config, abstract.frozen, parallel.replicated(mesh))
  logging.info("No checkpoint in %s: initialising from seed %d.", manager.directory, config.seed)
  state = parallel.create_sharded(init_fn, mesh)
  if jax.tree.leaves(frozen):
    state = state.replace(frozen=frozen)
  return state


def load_loss_networks(config: ml_collections.ConfigDict, task: tasks.Task, mesh
                       ) -> dict[str, Any]:
  """The task's frozen loss networks, replicated on the mesh (jit arguments of every step)."""
  return jax.device_put(task.loss_networks(config), parallel.replicated(mesh))


def restore_run(config: ml_collections.ConfigDict, workdir: str, mesh, *,
                step: int | None = None, allow_config_change: Sequence[str] = ()
                ) -> tuple[Any, state_lib.TrainState, int]:
  """(components, state, step) of a trained run, for evaluation, export and reports.

  Raises FileNotFoundError (with the command to train) when the run has no checkpoint,
  checkpoint.CheckpointMismatchError when it does not fit the config's model,
  checkpoint.CheckpointDamagedError (naming the step and the others) when it cannot be read,
  and config_checks.ConfigChangeError when the config's model or data fields differ from the
  saved ones (unless `allow_config_change` names them: then they are logged as overrides).
  """
  task = tasks.get(config)
  components = task.create_components(config)
  _, abstract = abstract_train_state(config, task, components, mesh)
  restored = checkpoint.restore(checkpoint.create_manager(workdir, read_only=True), abstract,
                                step)
  if restored is None:
    raise FileNotFoundError(
        f"No checkpoint in {checkpoint.checkpoint_dir(workdir)}. Train first: python train.py "
        f"--config=<the same config> --workdir={workdir}")
  config_checks.check_changes(
      restored.config, config, guarded=config_checks.INFERENCE_GUARDED,
      unguarded=config_checks.INFERENCE_UNGUARDED, allowed=allow_config_change,
      what=f"checkpoint step {restored.step} of {workdir}",
      reason=config_checks.INFERENCE_REASON)
  return components, restored.state, restored.step


def jit_train_steps(config: ml_collections.ConfigDict, task: tasks.Task, components: Any,
                    mesh) -> dict[str, Callable]:
  """The task's step variants as the loop runs them, by name: (state, batch, loss networks,
  health) -> (state, metrics, health), with the health update (health.update) inside and the
  state and health donated. Each compiles at its first call."""
  replicated = parallel.replicated(mesh)

  def jit(step_fn):
    def step_with_health(state, batch, loss_networks, device_health):
      new_state, metrics = step_fn(components, config, state, batch, loss_networks)
      return new_state, metrics, health.update(device_health, metrics, new_state)

    return jax.jit(step_with_health,
                   in_shardings=(replicated, parallel.batch_sharded(mesh), replicated,
                                 replicated),
                   out_shardings=(replicated, replicated, replicated), donate_argnums=(0, 3))

  return {name: jit(step_fn) for name, step_fn in task.variants(config).items()}


# The log window's running sum of the metrics: one dispatch per step instead of one per metric.
_add_metrics = jax.jit(lambda summed, metrics: jax.tree.map(jnp.add, summed, metrics),
                       donate_argnums=0)


@contextlib.contextmanager
def compilation_cache(directory: str):
  """JAX's persistent compilation cache in `directory` ("" = off) while the block runs.

  The setting is process-wide; JAX reads it once, at its first compile, so it is reset on the
  way in and out (a process that trains twice, e.g. a test session, keeps its other compiles
  out of the run's directory).
  """
  if not directory:
    yield
    return
  previous = jax.config.jax_compilation_cache_dir
  jax_compilation_cache.set_cache_dir(directory)
  jax_compilation_cache.reset_cache()
  try:
    yield
  finally:
    jax_compilation_cache.set_cache_dir(previous)
    jax_compilation_cache.reset_cache()


def split_for_writer(means: dict[str, np.ndarray]) -> tuple[dict[str, float], dict[str, Any]]:
  """Metrics averaged over the log interval -> (scalars, images) for the metric writer.

  Scalars stay scalars; a vector (e.g. regions per memory set) becomes one scalar per entry,
  "<name>/<index>"; a matrix (e.g. anchor similarities) becomes a heatmap image.
  """
  scalars, images = {}, {}
  for name, value in means.items():
    if value.ndim == 0:
      scalars[name] = float(value)
    elif value.ndim == 1:
      scalars.update({f"{name}/{i:02d}": float(v) for i, v in enumerate(value)})
    else:
      images[name] = visualize.matrix_image(value)[None]
  return scalars, images


def _write_samples(writer, workdir: str, step: int, grid: np.ndarray) -> None:
  writer.write_images(step, {"samples": grid[None]})
  if jax.process_index() == 0:
    visualize.save_png(grid, os.path.join(workdir, "samples", f"step_{step:08d}.png"))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       step: int | None = None, allow_config_change: Sequence[str] = ()
                       ) -> state_lib.TrainState:
  """Trains `config` in `workdir`, resuming from its newest checkpoint that restores (or from
  `step`; see restore_or_init for what `allow_config_change` permits).

  Raises health.NonFiniteError when a loss term or the state becomes non-finite (nothing from
  that step on is saved), and preemption.Stopped (a SystemExit with preemption.EXIT_CODE)
  after saving the current step when SIGTERM/SIGINT arrives.
  """
  config_checks.validate(config)
  # The data first: an unprepared dataset fails in a second, before model initialisation and
  # before anything (checkpoint directory, events file) is written to the workdir.
  pipeline.check_prepared(config, [f for f in ("train_split", "eval_split")
                                   if f in config.data])
  workdir = os.path.abspath(workdir)
  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.train.batch_size, mesh)
  task = tasks.get(config)
  components = task.create_components(config)
  loss_networks = load_loss_networks(config, task, mesh)  # Fails fast on a missing file.
  manager = checkpoint.create_manager(workdir, max_to_keep=config.train.max_to_keep)
  # The handlers stay ours until the last save is written: a signal after the last step
  # must not kill that save (the run then simply finishes).
  with (compilation_cache(config.train.compilation_cache_dir),
        preemption.StopRequests(jax.process_count()) as stop):
    try:
      state = restore_or_init(config, task, components, mesh, manager, step=step,
                              allow_config_change=allow_config_change)
      return _train(config, workdir, task, components, mesh, manager, state, loss_networks,
                    stop)
    finally:
      # Whatever ends the run (an error, a signal), a save in flight is completed: its state
      # was checked finite before the save began.
      manager.close()


def _train(config, workdir, task, components, mesh, manager, state, loss_networks, stop
           ) -> state_lib.TrainState:
  start_step = int(state.step)
  num_steps = config.train.num_steps

  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  if start_step == 0:
    writer.write_hparams({k: str(v) for k, v in config_checks.flatten(config.to_dict()).items()})

  replicated = parallel.replicated(mesh)
  train_steps = jit_train_steps(config, task, components, mesh)
  sample = task.make_sampler(components, config, mesh)
  evaluator = None
  eval_every = config.train.get("eval_every", 0)
  if eval_every:
    if config.task != "inpainting":
      raise ValueError(f"config.train.eval_every={eval_every}: in-loop evaluation is for "
                       f"inpainting models, not config.task={config.task!r}; set it to 0.")
    # Imported here: evaluation restores runs through this module.
    from gmsrm_jax import evaluation  # pylint: disable=g-import-not-at-top
    from gmsrm_jax.train import step as step_lib  # pylint: disable=g-import-not-at-top
    # Bad weights fail before the first step. The classical baselines do not change with the
    # weights: evaluate.py reports them, the loop does not recompute them every interval.
    evaluator = evaluation.Evaluator(config, mesh, with_baselines=False)

  report_progress = periodic_actions.ReportProgress(
      num_train_steps=num_steps, writer=writer, every_secs=None,
      every_steps=config.train.log_every)
  # Bounded by the run, so the prefetch reads no batch past the last step.
  batches = parallel.prefetch_global_batches(
      itertools.islice(pipeline.create_train_iterator(config, start_step=start_step),
                       num_steps - start_step), mesh)
  logging.info("Training steps %d -> %d on %d device(s), %d process(es).", start_step, num_steps,
               mesh.devices.size, jax.process_count())

  device_health = jax.device_put(health.initial(state), replicated)
  last_check, last_checkpoint = start_step, (start_step or None)
  summed, summed_count = None, 0
  interval_start, interval_steps = time.perf_counter(), 0
  for step in range(start_step, num_steps):
    # Nothing here reads a device value, so the host runs ahead of the device (the prefetched
    # batch, the next step's dispatch); the guard turns a read into an error or a log line.
    with jax.transfer_guard_device_to_host(config.train.device_to_host_guard):
      batch = next(batches)
      step_fn = train_steps[task.variant_for_step(config, step)]
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        state, metrics, device_health = step_fn(state, batch, loss_networks, device_health)
      summed = metrics if summed is None else _add_metrics(summed, metrics)
      summed_count += 1
      interval_steps += 1
      done = step + 1
      report_progress(done)
      stop_reason = stop.requested(manager, done)

    is_last = done == num_steps
    log_now = done % config.train.log_every == 0 or is_last
    save_now = done % config.train.checkpoint_every == 0 or is_last or stop_reason
    # The only reads of device values: at log and checkpoint steps, which wait anyway.
    if log_now or save_now:
      health.check(jax.device_get(device_health), state, checked_through=done,
                   last_check=last_check, last_checkpoint=last_checkpoint,
                   summed_metrics=summed)
      last_check = done

    if log_now:
      elapsed = time.perf_counter() - interval_start
      scalars, images = split_for_writer({k: np.asarray(v) / summed_count
                                          for k, v in jax.device_get(summed).items()})
      scalars["perf/img_per_sec"] = interval_steps * config.train.batch_size / elapsed
      writer.write_scalars(done, scalars)
      if images:
        writer.write_images(done, images)
      summed, summed_count = None, 0
      interval_start, interval_steps = time.perf_counter(), 0

    if done % config.train.sample_every == 0 or is_last:
      _write_samples(writer, workdir, done, sample(state))

    if evaluator is not None and (done % eval_every == 0 or is_last):
      # The evaluate.py numbers (same Evaluator) for the weights of this step.
      with report_progress.timed("eval"):
        results = evaluator.run(components, step_lib.inference_variables(config, state))[0]
      writer.write_scalars(done, evaluation.scalars(results))

    if save_now:
      with report_progress.timed("checkpoint"):
        checkpoint.save(manager, done, state, config, force=True)
      last_checkpoint = done
    if stop_reason:
      manager.wait_until_finished()
      writer.flush()
      message = (f"Stopped by {stop_reason} after step {done}: checkpoint {done} is saved in "
                 f"{manager.directory}. Resume by running the same command again: "
                 f"{shlex.join(['python', *sys.argv])}")
      logging.warning("%s", message)
      raise preemption.Stopped(message)
  manager.wait_until_finished()
  writer.flush()
  return state
