"""The pure train step: one generator forward gives the G update and the D update.

All reductions run over the GLOBAL batch: under `jax.jit` with the batch sharded on the mesh
'data' axis, `jnp.mean` over the batch is a cross-device mean, so the new state (params, EMA,
spectral-norm statistics, any carried memory) is identical on every device and process.
"""

from typing import Any

from flax import traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import optax

from gmsrm_jax import config_checks
from gmsrm_jax import losses
from gmsrm_jax import models
from gmsrm_jax import objectives
from gmsrm_jax import precision
from gmsrm_jax.train.state import Components, TrainState


# A generator may `sow` non-loss values (e.g. memory statistics) into this collection during
# training; they are reported as metrics "diag/<module path>/<name>" and never carried.
DIAGNOSTICS = "diagnostics"


def generator_variables(params: Any, g_state: dict[str, Any], frozen: Any) -> dict[str, Any]:
  """The generator's flax variables: trainable + frozen params, and the carried collections."""
  return {"params": models.merge_frozen(params, frozen), **g_state}


def generator_forward(components: Components, variables: dict[str, Any], image: jax.Array,
                      mask: jax.Array, *, train: bool, rng: jax.Array,
                      compute_dtype: Any | None = None
                      ) -> tuple[jax.Array, dict[str, jax.Array], dict[str, Any],
                                 dict[str, jax.Array]]:
  """Returns (prediction, auxiliary loss terms, updated non-param collections, diagnostics).

  `compute_dtype` is the dtype the network proper runs in, with `variables` cast to it by
  the caller (the train step's mixed precision); None for inference, in float32.
  """
  carried = [name for name in variables if name != "params"]
  (prediction, aux), new_state = components.generator.apply(
      variables, image, mask, train=train, compute_dtype=compute_dtype, rngs={"noise": rng},
      mutable=[*carried, DIAGNOSTICS])
  new_state = dict(new_state)
  diagnostics = traverse_util.flatten_dict(new_state.pop(DIAGNOSTICS, {}), sep="/")
  return prediction, aux, new_state, {f"diag/{k}": v for k, v in diagnostics.items()}


def train_step(components: Components, config: ml_collections.ConfigDict, state: TrainState,
               batch: dict[str, jax.Array], loss_networks: dict[str, Any] | None = None
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One G and one D update. `loss_networks` are frozen networks the objective needs (VGG-19
  for eq. 11), passed as (non-donated) arguments so their weights are never compile-time
  constants nor part of the carried state."""
  image, mask = batch["image"], batch["mask"]
  step_rng = jax.random.fold_in(state.rng, state.step)
  disc = components.discriminator
  objective = objectives.get(config.loss)
  adversarial = uses_discriminator(config)

  compute_dtype = precision.compute_dtype(config)  # docs/DESIGN.md P1.
  compute = lambda tree: precision.to_compute(tree, compute_dtype)

  def discriminate(d_params, images, *, update_stats):
    # Real and fake in one call: one spectral-norm power iteration per step, one D launch.
    # The spectral-norm statistics enter uncast: their power iteration promotes to float32.
    both_masks = compute(jnp.concatenate([mask, mask]))
    variables = {"params": compute(d_params), **state.d_state}
    if update_stats:
      logits, new_d_state = disc.apply(variables, compute(images), both_masks,
                                       update_stats=True, mutable=list(state.d_state.keys()))
    else:
      logits = disc.apply(variables, compute(images), both_masks, update_stats=False)
      new_d_state = state.d_state
    real_logits, fake_logits = jnp.split(precision.to_float32(logits), 2)
    return real_logits, fake_logits, dict(new_d_state)

  def g_loss_fn(g_params):
    # Only the trainable params are differentiated: the frozen ones enter as constants of
    # this function, so no gradient (and no optimizer or EMA state) ever exists for them.
    # The carried collections (CICM's memory) enter uncast: the model keeps them float32.
    variables = generator_variables(compute(g_params), state.g_state, compute(state.frozen))
    # Image and mask stay float32: the model casts its encoder's input (models.base
    # in_compute_dtype), after the parameter-free prior.
    prediction, aux, new_g_state, diagnostics = generator_forward(
        components, variables, image, mask, train=True, rng=step_rng,
        compute_dtype=compute_dtype)
    # New carried state is not cast: a module that computed it in bfloat16 would show in its
    # dtype (tests/test_mixed_precision.py) instead of being rounded silently.
    prediction, diagnostics = precision.to_float32((prediction, diagnostics))
    # In the model's order (a tree map would sort it): the weighted total sums them in it.
    aux = {name: precision.at_least_float32(term) for name, term in aux.items()}
    completed = models.composite(prediction, image, mask)
    real_logits = fake_logits = None
    if adversarial:
      real_logits, fake_logits, _ = discriminate(
          state.d_params, jnp.concatenate([image, completed]), update_stats=False)
    terms = {**objective.generator_terms(image=image, mask=mask, prediction=prediction,
                                         real_logits=real_logits, fake_logits=fake_logits,
                                         loss_networks=compute(loss_networks or {})),
             **aux}
    # A family-independent term, weighted by objectives.weighted_auxiliary like the aux ones.
    if config_checks.added_field(config.loss, "loss.ssim_weight"):
      terms["ssim"] = losses.structural_loss(completed, image)
    return objective.generator_total(terms, config.loss), (terms, completed, new_g_state,
                                                           diagnostics)

  (g_total, (g_terms, completed, new_g_state, diagnostics)), g_grads = precision.value_and_grad(
      g_loss_fn, compute_dtype, has_aux=True)(state.g_params)

  g_updates, g_opt_state = components.g_tx.update(g_grads, state.g_opt_state, state.g_params)
  g_params = optax.apply_updates(state.g_params, g_updates)
  new_state = state.replace(
      step=state.step + 1, g_params=g_params, g_opt_state=g_opt_state,
      ema_params=ema_update(state.ema_params, g_params, ema_decay_at(
          state.step, config.train.ema_decay,
          config_checks.added_field(config.train, "train.ema_warmup"))),
      g_state=new_g_state)
  metrics = {**{f"loss/{k}": v for k, v in g_terms.items()}, "loss/g_total": g_total,
             "grad_norm/g": optax.tree.norm(g_grads), **diagnostics}
  if not adversarial:
    return new_state, metrics

  fake = jax.lax.stop_gradient(completed)

  def d_loss_fn(d_params):
    real_logits, fake_logits, new_d_state = discriminate(
        d_params, jnp.concatenate([image, fake]), update_stats=True)
    loss = objective.discriminator_loss(real_logits, fake_logits)
    return loss, (new_d_state, jnp.mean(real_logits), jnp.mean(fake_logits))

  (d_loss, (new_d_state, real_mean, fake_mean)), d_grads = precision.value_and_grad(
      d_loss_fn, compute_dtype, has_aux=True)(state.d_params)
  d_updates, d_opt_state = components.d_tx.update(d_grads, state.d_opt_state, state.d_params)
  new_state = new_state.replace(d_params=optax.apply_updates(state.d_params, d_updates),
                                d_opt_state=d_opt_state, d_state=new_d_state)
  metrics.update({"loss/d": d_loss, "disc/real_logit": real_mean,
                  "disc/fake_logit": fake_mean, "grad_norm/d": optax.tree.norm(d_grads)})
  return new_state, metrics


def uses_discriminator(config: ml_collections.ConfigDict) -> bool:
  """Whether the step trains and queries the discriminator: not when the adversarial term has
  weight 0 (the short-run demos, DESIGN Q8), where it would be a third of the step's work
  spent on a loss nobody minimises. The discriminator's state then stays as initialised."""
  return config.loss.adv_weight != 0.0


def ema_decay_at(step: jax.Array, decay: float, warmup: bool) -> jax.Array:
  """The decay of the EMA update that follows `step` completed updates.

  With `warmup`, min(decay, (1 + step) / (10 + step)): the average spans about the last tenth
  of the steps so far until that reaches the configured horizon (step ~9,000 for 0.999).
  Without it, a 1,500-step run's EMA would still be 0.999^1500 = 22% random initialisation
  (docs/QUALITY.md measured it 1.6 dB below the online weights).
  """
  if not warmup:
    return jnp.asarray(decay, jnp.float32)
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def ema_update(ema_params: Any, params: Any, decay: float) -> Any:
  """ema <- decay * ema + (1 - decay) * params."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)


def inference_params(config: ml_collections.ConfigDict, state: TrainState) -> Any:
  """The trainable generator weights evaluation, sample grids and export use (`eval.use_ema`)."""
  return state.ema_params if config.eval.use_ema else state.g_params


def inference_variables(config: ml_collections.ConfigDict, state: TrainState) -> dict[str, Any]:
  """Everything inference needs, as flax variables: the inference weights with the frozen
  params merged in, and the carried collections (e.g. CICM's memory). Prediction, sample
  grids, evaluation and export all take this."""
  return generator_variables(inference_params(config, state), state.g_state, state.frozen)


def predict(components: Components, variables: dict[str, Any], image: jax.Array,
            mask: jax.Array, rng: jax.Array | None = None) -> jax.Array:
  """Inference: the composited output for `inference_variables`. `rng` draws GM-SRM's
  stochastic variation (eq. 8); the default key 0 is evaluation's, so outputs repeat."""
  prediction, _, _, _ = generator_forward(
      components, variables, image, mask, train=False,
      rng=jax.random.key(0) if rng is None else rng)
  return models.composite(prediction, image, mask)
