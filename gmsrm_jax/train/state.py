"""The one train-state dataclass and its pure initialiser."""

import dataclasses
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from gmsrm_jax import models


@flax.struct.dataclass
class TrainState:
  """Every leaf carried from one step to the next; sharded, donated and checkpointed together."""

  step: jax.Array
  g_params: Any  # Trainable generator params (the optimizer's and the EMA's tree).
  d_params: Any
  g_opt_state: Any
  d_opt_state: Any
  ema_params: Any  # Exponential moving average of g_params: what evaluation and export use.
  g_state: Any  # Generator collections other than params (e.g. a carried memory); may be {}.
  d_state: Any  # Discriminator spectral-norm statistics ('batch_stats').
  rng: jax.Array  # Raw uint32 key; per-step keys are fold_in(rng, step).
  # Pre-trained generator params that are never trained (GM-SRM's generative memory), in the
  # nesting of the generator's param tree; {} for models without any. Outside the optimizer,
  # the gradients and the EMA; merged back for `apply` (models.merge_frozen).
  frozen: Any = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Components:
  """The stateless pieces a step needs: modules and optimizers built from the config."""

  generator: nn.Module
  discriminator: nn.Module
  g_tx: optax.GradientTransformation
  d_tx: optax.GradientTransformation


def learning_rate(optim: ml_collections.ConfigDict, peak: float, num_steps: int
                  ) -> float | optax.Schedule:
  """`peak` as a constant (`optim.schedule = "constant"`, the papers' setting), or "cosine":
  a linear warm-up over `optim.warmup_steps`, then a cosine decay to `optim.final_lr_fraction`
  of the peak at `num_steps` (measured in docs/QUALITY.md for short runs)."""
  schedule = optim.get("schedule", "constant")
  if schedule == "constant":
    return peak  # A plain float keeps the optimizer state of runs made before schedules.
  if schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=optim.warmup_steps,
        decay_steps=max(num_steps, optim.warmup_steps + 1),
        end_value=peak * optim.final_lr_fraction)
  raise ValueError(f"Unknown config.optim.schedule {schedule!r}; use 'constant' or 'cosine'.")


def create_components(config: ml_collections.ConfigDict) -> Components:
  optim, num_steps = config.optim, config.train.num_steps
  return Components(
      generator=models.create_generator(config.model),
      discriminator=models.create_discriminator(config.disc),
      g_tx=optax.adam(learning_rate(optim, optim.learning_rate, num_steps), b1=optim.b1,
                      b2=optim.b2),
      d_tx=optax.adam(learning_rate(optim, optim.d_learning_rate, num_steps), b1=optim.b1,
                      b2=optim.b2),
  )


def split_variables(variables: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
  variables = dict(variables)
  return variables.pop("params"), variables


def init_state(components: Components, rng: jax.Array, image_shape: tuple[int, ...]
               ) -> TrainState:
  """Pure: same rng -> same state. `image_shape` is [batch, H, W, 3] (batch may be 1)."""
  g_key, d_key, state_key = jax.random.split(rng, 3)
  image = jnp.zeros(image_shape, jnp.float32)
  mask = jnp.zeros((*image_shape[:-1], 1), jnp.float32)
  params, g_state = split_variables(
      components.generator.init({"params": g_key, "noise": g_key}, image, mask, train=False))
  # Frozen parts come out randomly initialised here; a fresh run replaces them with the
  # pre-trained weights its config names (loop.restore_or_init), outside jit.
  g_params, frozen = models.split_frozen(params)
  d_params, d_state = split_variables(
      components.discriminator.init(d_key, image, mask, update_stats=False))
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      g_params=g_params,
      d_params=d_params,
      g_opt_state=components.g_tx.init(g_params),
      d_opt_state=components.d_tx.init(d_params),
      ema_params=g_params,
      g_state=g_state,
      d_state=d_state,
      rng=state_key,
      frozen=frozen,
  )
