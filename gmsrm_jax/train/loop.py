"""train_and_evaluate: the one training loop every config runs through."""

import functools
import os
import time
from typing import Any, Callable

from absl import logging
from clu import metric_writers
from clu import periodic_actions
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gmsrm_jax import visualize
from gmsrm_jax.data import pipeline
from gmsrm_jax.train import checkpoint
from gmsrm_jax.train import parallel
from gmsrm_jax.train import state as state_lib
from gmsrm_jax.train import tasks


class NonFiniteLossError(FloatingPointError):
  """A loss term became NaN/inf; the run stops before that state can be checkpointed."""


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


def restore_or_init(config, task, components, mesh, manager):
  """maxtext's load order: resume from the workdir's checkpoint if any; else initialise from
  the seed with the pre-trained frozen parts the config names (loaded first, so a missing
  file fails before any compile; placed after init, so no weight is a compiled constant)."""
  init_fn, abstract = abstract_train_state(config, task, components, mesh)
  restored = checkpoint.restore(manager, abstract)
  if restored is not None:
    return restored[0]
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
                step: int | None = None) -> tuple[Any, state_lib.TrainState, int]:
  """(components, state, step) of a trained run, for evaluation, export and reports.

  Raises FileNotFoundError (with the command to train) when the run has no checkpoint, and
  checkpoint.CheckpointMismatchError when it does not fit the config's model.
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
  return components, *restored


def check_finite(metrics: dict[str, Any], step: int) -> None:
  for name, value in metrics.items():
    if name.startswith("loss/") and not np.all(np.isfinite(value)):
      raise NonFiniteLossError(f"Non-finite loss at step {step}: {name} = {float(value)}. "
                               "Stopping before the state is checkpointed.")


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> state_lib.TrainState:
  """Trains `config` in `workdir`, resuming from the latest complete checkpoint there."""
  workdir = os.path.abspath(workdir)
  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.train.batch_size, mesh)
  task = tasks.get(config)
  components = task.create_components(config)
  loss_networks = load_loss_networks(config, task, mesh)  # Fails fast on a missing file.
  manager = checkpoint.create_manager(workdir, max_to_keep=config.train.max_to_keep)
  state = restore_or_init(config, task, components, mesh, manager)
  start_step = int(state.step)
  num_steps = config.train.num_steps

  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  if start_step == 0:
    writer.write_hparams({k: str(v) for k, v in _flatten(config.to_dict()).items()})

  replicated = parallel.replicated(mesh)
  train_step = jax.jit(functools.partial(task.train_step, components, config),
                       in_shardings=(replicated, parallel.batch_sharded(mesh), replicated),
                       out_shardings=(replicated, replicated), donate_argnums=0)
  sample = task.make_sampler(components, config, mesh)

  report_progress = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer,
                                                    every_secs=None, every_steps=config.train.log_every)
  train_iter = pipeline.create_train_iterator(config, start_step=start_step)
  logging.info("Training steps %d -> %d on %d device(s), %d process(es).", start_step, num_steps,
               mesh.devices.size, jax.process_count())

  summed, summed_count = None, 0
  previous = None  # (step, device metrics) checked one step late to keep dispatch async.
  interval_start, interval_steps = time.perf_counter(), 0
  for step in range(start_step, num_steps):
    batch = parallel.global_batch(next(train_iter), mesh)
    with jax.profiler.StepTraceAnnotation("train", step_num=step):
      state, metrics = train_step(state, batch, loss_networks)
    if previous is not None:
      check_finite(jax.device_get(previous[1]), previous[0])
    previous = (step + 1, metrics)
    summed = metrics if summed is None else jax.tree.map(jnp.add, summed, metrics)
    summed_count += 1
    interval_steps += 1
    done = step + 1
    report_progress(done)

    is_last = done == num_steps
    if done % config.train.log_every == 0 or is_last:
      host = jax.device_get(summed)
      check_finite(host, done)
      elapsed = time.perf_counter() - interval_start
      scalars, images = split_for_writer({k: np.asarray(v) / summed_count
                                          for k, v in host.items()})
      scalars["perf/img_per_sec"] = interval_steps * config.train.batch_size / elapsed
      writer.write_scalars(done, scalars)
      if images:
        writer.write_images(done, images)
      summed, summed_count = None, 0
      interval_start, interval_steps = time.perf_counter(), 0

    if done % config.train.sample_every == 0 or is_last:
      _write_samples(writer, workdir, done, sample(state))

    preempted = manager.reached_preemption(done)
    if done % config.train.checkpoint_every == 0 or is_last or preempted:
      check_finite(jax.device_get(metrics), done)
      with report_progress.timed("checkpoint"):
        checkpoint.save(manager, done, state, config, force=True)
      if preempted:
        logging.warning("Preemption signal at step %d: checkpoint saved, stopping.", done)
        break
  manager.wait_until_finished()
  writer.flush()
  return state


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{name}."))
    else:
      flat[name] = value
  return flat
