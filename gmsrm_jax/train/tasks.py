"""Tasks: what a config trains. The loop (checkpointing, sharding, logging, resume) is shared.

A task provides the stateless components, the initial TrainState, the pure train step, and a
sampler for the sample grids. `config.task` names it; modules register lazily, so a task's
dependencies are imported only when it is used.
"""

import dataclasses
import functools
import importlib
from typing import Any, Callable

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from gmsrm_jax import models
from gmsrm_jax import objectives
from gmsrm_jax import visualize
from gmsrm_jax.data import pipeline
from gmsrm_jax.train import parallel
from gmsrm_jax.train import state as state_lib
from gmsrm_jax.train import step as step_lib

# state, batch -> (state, metrics); pure, jitted by the loop with the state donated.
StepFn = Callable[[Any, ml_collections.ConfigDict, state_lib.TrainState, dict],
                  tuple[state_lib.TrainState, dict]]
# The variant name of tasks whose every step does the same work.
ONLY_VARIANT = "step"


@dataclasses.dataclass(frozen=True)
class Task:
  create_components: Callable[[ml_collections.ConfigDict], Any]
  # (components, config, rng) -> TrainState. Pure: the loop jits it with replicated outputs.
  init_state: Callable[[Any, ml_collections.ConfigDict, jax.Array], state_lib.TrainState]
  # The step every step runs; None for tasks with step_variants.
  train_step: StepFn | None
  # (components, config, mesh) -> (state -> uint8 grid image). Fixed inputs are prepared once,
  # so grids are comparable across steps and runs.
  make_sampler: Callable[[Any, ml_collections.ConfigDict, Any],
                         Callable[[state_lib.TrainState], np.ndarray]]
  # (config, abstract TrainState.frozen, sharding) -> the pre-trained frozen params a fresh
  # run starts from (file I/O, never under jit). Runs only when no checkpoint exists.
  load_frozen: Callable[[ml_collections.ConfigDict, Any, Any], Any] = (
      lambda config, abstract_frozen, sharding: {})
  # config -> frozen networks the loss needs ({name: host param tree}), passed to every step.
  loss_networks: Callable[[ml_collections.ConfigDict], dict[str, Any]] = lambda config: {}
  # Tasks whose steps differ in the work they do (stage 1's lazy regularisation): config ->
  # {variant name: StepFn}, and (config, step number) -> the variant that step runs. Every
  # variant returns the same metrics tree (the loop sums metrics over a log window). The loop
  # jits each variant on its own and picks one in Python per step, so no step computes work it
  # then discards; a variant compiles when a step first picks it.
  step_variants: Callable[[ml_collections.ConfigDict], dict[str, StepFn]] | None = None
  pick_variant: Callable[[ml_collections.ConfigDict, int], str] | None = None

  def __post_init__(self):
    if (self.train_step is None) == (self.step_variants is None):
      raise ValueError("A task has either one train_step or step_variants, not both.")
    if (self.step_variants is None) != (self.pick_variant is None):
      raise ValueError("step_variants and pick_variant come together.")

  def variants(self, config: ml_collections.ConfigDict) -> dict[str, StepFn]:
    if self.step_variants is None:
      return {ONLY_VARIANT: self.train_step}
    return self.step_variants(config)

  def variant_for_step(self, config: ml_collections.ConfigDict, step: int) -> str:
    return ONLY_VARIANT if self.pick_variant is None else self.pick_variant(config, step)


def _inpainting_init(components, config, rng):
  size = config.data.crop_size
  return state_lib.init_state(components, rng, (1, size, size, 3))


def _inpainting_sampler(components, config, mesh):
  batch = next(iter(pipeline.create_eval_iterator(
      config, mask_spec=("bin", "30-40"), num_images=config.eval.batch_size)))
  inputs = parallel.global_batch({k: batch[k] for k in ("image", "mask", "weight")}, mesh)
  host = {k: np.asarray(multihost_utils.process_allgather(v, tiled=True))
          for k, v in inputs.items()}
  # A test split smaller than the batch is padded with repeats of image 0: show real rows only.
  real = host["weight"] > 0
  predict = jax.jit(functools.partial(step_lib.predict, components),
                    out_shardings=parallel.replicated(mesh))

  def sample(state):
    output = predict(step_lib.inference_variables(config, state), inputs["image"],
                     inputs["mask"])
    output = np.asarray(multihost_utils.process_allgather(output, tiled=True))
    return visualize.inpainting_grid(host["image"][real], host["mask"][real], output[real])

  return sample


INPAINTING = Task(
    create_components=state_lib.create_components, init_state=_inpainting_init,
    train_step=step_lib.train_step, make_sampler=_inpainting_sampler,
    load_frozen=lambda config, abstract_frozen, sharding: models.load_frozen(
        config.model, abstract_frozen, sharding),
    loss_networks=lambda config: objectives.loss_networks(config.loss))

# Tasks defined in other modules: name -> "module:attribute", imported on first use.
_LAZY = {"memory_pretraining": "gmsrm_jax.train.memory_pretraining:TASK"}
_TASKS = {"inpainting": INPAINTING}


def register_lazy(name: str, target: str) -> None:
  _LAZY[name] = target


def get(config: ml_collections.ConfigDict) -> Task:
  name = config.task
  if name not in _TASKS and name in _LAZY:
    module, attribute = _LAZY[name].split(":")
    _TASKS[name] = getattr(importlib.import_module(module), attribute)
  if name not in _TASKS:
    raise ValueError(f"Unknown config.task {name!r}; known: {sorted({*_TASKS, *_LAZY})}.")
  return _TASKS[name]
