"""Stage 1 of GM-SRM (§III-B, §III-D): pre-train the generative memory as a StyleGAN2 GAN.

`TASK` plugs into the shared loop (`config.task = "memory_pretraining"`):
  python train.py --config=configs/memory_synthetic.py --workdir=runs/memory
then export the frozen memory that stage 2 loads by path (and a before/after report):
  python -m gmsrm_jax.train.memory_pretraining --config=configs/memory_synthetic.py \
      --workdir=runs/memory            # -> runs/memory/memory/ and runs/memory/report.{json,png}

One train step runs StyleGAN2's four phases in order, each an Adam update on its own:
  G main (non-saturating loss) -> G reg (path length, every pl_interval steps)
  -> D main (logistic loss on fakes of the updated G) -> D reg (R1, every r1_interval steps),
then the EMA of G. A step runs the lazy phases due at it: the loop picks one of the step
variants (`step_variants`, `pick_variant`) from the step number. Batch masks are ignored: the
memory models whole images.
"""

import functools
import json
import math
import os
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from gmsrm_jax import config_checks
from gmsrm_jax import precision
from gmsrm_jax import visualize
from gmsrm_jax.data import pipeline
from gmsrm_jax.stylegan import layers
from gmsrm_jax.stylegan import losses
from gmsrm_jax.stylegan import memory as memory_lib
from gmsrm_jax.stylegan import networks
from gmsrm_jax.train import parallel
from gmsrm_jax.train import state as state_lib
from gmsrm_jax.train import step as step_lib
from gmsrm_jax.train import tasks

Metrics = dict[str, jax.Array]
Phase = Callable[[state_lib.TrainState, jax.Array, jax.Array],
                 tuple[state_lib.TrainState, Metrics]]


def lazy_regularization_factor(interval: int) -> float:
  """c = k / (k + 1) (StyleGAN2 App. B): k minibatches take k + 1 Adam steps with lazy reg."""
  return interval / (interval + 1.0) if interval > 0 else 1.0


def _adam(learning_rate: float, optim: ml_collections.ConfigDict, interval: int
          ) -> optax.GradientTransformation:
  # lr' = c lr, beta' = beta^c: the extra regularization steps leave Adam's effective
  # averaging horizon and step size per minibatch unchanged.
  c = lazy_regularization_factor(interval)
  return optax.adam(learning_rate * c, b1=optim.b1**c, b2=optim.b2**c, eps=optim.eps)


def _check_config(config: ml_collections.ConfigDict) -> None:
  if config.model.resolution != config.data.crop_size:
    raise ValueError(f"config.model.resolution ({config.model.resolution}) must equal "
                     f"config.data.crop_size ({config.data.crop_size}).")
  pl_batch = config.train.batch_size // config.loss.pl_batch_shrink
  if config.loss.pl_weight and pl_batch < 1:
    raise ValueError(f"pl_batch_shrink {config.loss.pl_batch_shrink} leaves no sample of the "
                     f"batch of {config.train.batch_size}.")
  group = min(config.disc.mbstd_group_size, config.train.batch_size)
  if config.train.batch_size % group:
    raise ValueError(f"Batch size {config.train.batch_size} is not divisible by the minibatch-"
                     f"std group size {group}.")


def create_components(config: ml_collections.ConfigDict) -> state_lib.Components:
  _check_config(config)
  loss, optim = config.loss, config.optim
  return state_lib.Components(
      generator=networks.create_generator(config.model),
      discriminator=networks.create_discriminator(config.disc, config.model.resolution),
      g_tx=_adam(optim.learning_rate, optim, loss.pl_interval if loss.pl_weight else 0),
      d_tx=_adam(optim.d_learning_rate, optim, loss.r1_interval if loss.r1_gamma else 0))


def init_state(components: state_lib.Components, config: ml_collections.ConfigDict,
               rng: jax.Array) -> state_lib.TrainState:
  g_key, d_key, state_key = jax.random.split(rng, 3)
  z = jnp.zeros((1, config.model.z_dim), jnp.float32)
  g_params = components.generator.init({"params": g_key, "noise": g_key}, z)["params"]
  size = config.model.resolution
  d_params = components.discriminator.init(d_key, jnp.zeros((1, size, size, 3)))["params"]
  return state_lib.TrainState(
      step=jnp.zeros((), jnp.int32), g_params=g_params, d_params=d_params,
      g_opt_state=components.g_tx.init(g_params), d_opt_state=components.d_tx.init(d_params),
      ema_params=g_params,
      # Carried statistics: the tracked average w (truncation, export) and the path-length
      # running mean a of StyleGAN2 eq. 4.
      g_state={"w_avg": jnp.zeros((config.model.w_dim,), jnp.float32),
               "pl_mean": jnp.zeros((), jnp.float32)},
      d_state={}, rng=state_key)


def mixed_latents(components: state_lib.Components, config: ml_collections.ConfigDict,
                  g_params: Any, key: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
  """(latents [B, num_blocks, w_dim], w of the main z [B, w_dim]) with style mixing.

  With probability style_mixing_prob the blocks from a random cutoff on take the w of a second
  z (one coin and one cutoff per batch, as StyleGAN2). Mixing is per memory block, the
  granularity at which GM-SRM supplies its embeddings c_i.
  """
  generator = components.generator
  z_key, mix_key = jax.random.split(key)
  # One draw per kind of randomness: each draw is a threefry kernel XLA compiles separately.
  z = layers.standard_normal(z_key, (2, batch_size, config.model.z_dim))
  apply = lambda z: generator.apply({"params": g_params}, z, method=generator.latents)
  latents = apply(z[0])
  w = latents[:, 0]
  num_blocks = latents.shape[1]
  if config.loss.style_mixing_prob > 0 and num_blocks > 1:
    other = apply(z[1])
    coin, position = jax.random.uniform(mix_key, (2,))
    cutoff = 1 + jnp.floor(position * (num_blocks - 1)).astype(jnp.int32)  # In [1, blocks).
    cutoff = jnp.where(coin < config.loss.style_mixing_prob, cutoff, num_blocks)
    latents = jnp.where(jnp.arange(num_blocks)[None, :, None] < cutoff, latents, other)
  return latents, w


def _synthesize(components, config, g_params, latents, noise_key):
  """Images from `latents` in the compute dtype (docs/DESIGN.md P1), returned in float32.

  The mapping network stays out of it (`mixed_latents` runs it on the float32 params): its
  w feeds the carried w_avg, and its FLOPs are a rounding error of the synthesis network's.
  """
  dtype = precision.compute_dtype(config)
  images = components.generator.apply(
      {"params": precision.to_compute(g_params, dtype)}, precision.to_compute(latents, dtype),
      rngs={"noise": noise_key}, method=components.generator.synthesize)
  return precision.to_float32(images)


def _discriminate(components, config, d_params, images):
  """Logits of `images` in the compute dtype, returned in float32 for the losses."""
  dtype = precision.compute_dtype(config)
  return precision.to_float32(components.discriminator.apply(
      {"params": precision.to_compute(d_params, dtype)}, precision.to_compute(images, dtype)))


def _update(tx, grads, opt_state, params):
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def generator_main(components, config, state, real, key):
  """G main phase: minimise softplus(-D(G(z))); tracks w_avg from the global batch."""
  del real
  latent_key, noise_key = jax.random.split(key)

  def loss_fn(g_params):
    latents, w = mixed_latents(components, config, g_params, latent_key,
                               config.train.batch_size)
    fake_logits = _discriminate(components, config, state.d_params,
                                _synthesize(components, config, g_params, latents, noise_key))
    return losses.generator_loss(fake_logits), (jnp.mean(w, axis=0), jnp.mean(fake_logits))

  (loss, (w_mean, fake_logit)), grads = precision.value_and_grad(
      loss_fn, precision.compute_dtype(config), has_aux=True)(state.g_params)
  g_params, g_opt_state = _update(components.g_tx, grads, state.g_opt_state, state.g_params)
  beta = config.train.w_avg_beta
  w_avg = beta * state.g_state["w_avg"] + (1.0 - beta) * jax.lax.stop_gradient(w_mean)
  state = state.replace(g_params=g_params, g_opt_state=g_opt_state,
                        g_state={**state.g_state, "w_avg": w_avg})
  return state, {"loss/g": loss, "disc/fake_logit_g": fake_logit,
                 "grad_norm/g": optax.tree.norm(grads)}


def generator_path_length(components, config, state, real, key):
  """G reg phase: pl_weight * (||J_w^T y|| - a)^2 on B / pl_batch_shrink samples, times the
  interval (lazy regularization); a is the running mean of the lengths."""
  del real
  loss_cfg = config.loss
  latent_key, noise_key, pl_key = jax.random.split(key, 3)
  batch = config.train.batch_size // loss_cfg.pl_batch_shrink
  pl_mean = state.g_state["pl_mean"]

  def loss_fn(g_params):
    latents, _ = mixed_latents(components, config, g_params, latent_key, batch)
    lengths = losses.path_lengths(
        lambda lat: _synthesize(components, config, g_params, lat, noise_key), latents, pl_key)
    # As StyleGAN2: the penalty uses the freshly updated mean (gradient flows through it).
    new_mean = pl_mean + loss_cfg.pl_decay * (jnp.mean(lengths) - pl_mean)
    penalty = jnp.mean(jnp.square(lengths - new_mean))
    return penalty * loss_cfg.pl_weight * loss_cfg.pl_interval, jax.lax.stop_gradient(new_mean)

  (loss, new_mean), grads = precision.value_and_grad(
      loss_fn, precision.compute_dtype(config), has_aux=True)(state.g_params)
  g_params, g_opt_state = _update(components.g_tx, grads, state.g_opt_state, state.g_params)
  state = state.replace(g_params=g_params, g_opt_state=g_opt_state,
                        g_state={**state.g_state, "pl_mean": new_mean})
  return state, {"loss/pl": loss, "reg/pl_mean": new_mean}


def discriminator_main(components, config, state, real, key):
  """D main phase: softplus(D(G(z))) + softplus(-D(x)), fakes from the just-updated G."""
  latent_key, noise_key = jax.random.split(key)
  latents, _ = mixed_latents(components, config, state.g_params, latent_key, real.shape[0])
  fake = jax.lax.stop_gradient(_synthesize(components, config, state.g_params, latents,
                                           noise_key))

  def loss_fn(d_params):
    # Separate calls: minibatch-std groups must not mix real and fake images.
    real_logits = _discriminate(components, config, d_params, real)
    fake_logits = _discriminate(components, config, d_params, fake)
    return (losses.discriminator_loss(real_logits, fake_logits),
            (jnp.mean(real_logits), jnp.mean(fake_logits)))

  (loss, (real_logit, fake_logit)), grads = precision.value_and_grad(
      loss_fn, precision.compute_dtype(config), has_aux=True)(state.d_params)
  d_params, d_opt_state = _update(components.d_tx, grads, state.d_opt_state, state.d_params)
  state = state.replace(d_params=d_params, d_opt_state=d_opt_state)
  return state, {"loss/d": loss, "disc/real_logit": real_logit, "disc/fake_logit": fake_logit,
                 "grad_norm/d": optax.tree.norm(grads)}


def discriminator_r1(components, config, state, real, key):
  """D reg phase: gamma/2 * E||grad_x D(x)||^2 on the real batch, times the interval."""
  del key
  loss_cfg = config.loss

  def loss_fn(d_params):
    penalty = losses.r1_penalty(lambda x: _discriminate(components, config, d_params, x), real)
    return jnp.mean(penalty) * (loss_cfg.r1_gamma / 2.0) * loss_cfg.r1_interval

  loss, grads = precision.value_and_grad(loss_fn, precision.compute_dtype(config))(
      state.d_params)
  d_params, d_opt_state = _update(components.d_tx, grads, state.d_opt_state, state.d_params)
  return state.replace(d_params=d_params, d_opt_state=d_opt_state), {"loss/r1": loss}


# Variant name of a step with no lazy phase due.
PLAIN = "plain"


def lazy_phases(config: ml_collections.ConfigDict) -> dict[str, int]:
  """{name: interval} of the lazy regularizers the config turns on: "pl", "r1"."""
  phases = {}
  if config.loss.pl_weight:
    phases["pl"] = config.loss.pl_interval
  if config.loss.r1_gamma:
    phases["r1"] = config.loss.r1_interval
  return phases


def pick_variant(config: ml_collections.ConfigDict, step: int) -> str:
  """The step variant step `step` runs: its due lazy phases ("pl+r1", "pl", "r1") or PLAIN."""
  due = [name for name, interval in lazy_phases(config).items() if step % interval == 0]
  return "+".join(due) or PLAIN


def step_variants(config: ml_collections.ConfigDict) -> dict[str, tasks.StepFn]:
  """The variants steps pick (one period of the intervals holds them all), in order of first
  use: "pl+r1", PLAIN, "pl" for StyleGAN2's intervals 4 and 16."""
  period = math.lcm(*lazy_phases(config).values())
  names = dict.fromkeys(pick_variant(config, step) for step in range(period))
  return {name: functools.partial(train_step,
                                  regularize=() if name == PLAIN else tuple(name.split("+")))
          for name in names}


def _lazy(due: bool, phase: Phase, state, real, key):
  """`phase` on the steps it is due; otherwise the state unchanged and zero metrics.

  So every variant returns the same metrics tree. A lazy phase's metrics are its loss as
  applied (already times the interval), so their mean over a window that is a multiple of the
  interval is the per-step regularization loss.
  """
  if due:
    return phase(state, real, key)
  metrics = jax.eval_shape(phase, state, real, key)[1]
  return state, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metrics)


def ema_beta(config: ml_collections.ConfigDict, step: jax.Array) -> jax.Array:
  """Per-step EMA decay for a half-life of ema_half_life_images images: 0.5^(B / half_life).

  With ema_rampup > 0 the half-life is at most ema_rampup * images seen so far (StyleGAN2-ADA),
  so early EMA weights are not dominated by the random initialisation.
  """
  batch = config.train.batch_size
  half_life = jnp.asarray(config.train.ema_half_life_images, jnp.float32)
  if config.train.ema_rampup:
    half_life = jnp.minimum(half_life, step.astype(jnp.float32) * batch
                            * config.train.ema_rampup)
  return 0.5 ** (batch / jnp.maximum(half_life, 1e-8))


def train_step(components: state_lib.Components, config: ml_collections.ConfigDict,
               state: state_lib.TrainState, batch: dict[str, jax.Array],
               loss_networks: dict[str, Any] | None = None, *,
               regularize: tuple[str, ...] = ()) -> tuple[state_lib.TrainState, Metrics]:
  """One step; `regularize` names the lazy phases it runs ("pl", "r1"): those due at this
  step, i.e. pick_variant(config, state.step) split at "+" (the loop's step variants)."""
  del loss_networks  # StyleGAN2's losses use no frozen network.
  real = batch["image"]
  keys = jax.random.split(jax.random.fold_in(state.rng, state.step), 4)
  bind = lambda phase: functools.partial(phase, components, config)
  state, metrics = bind(generator_main)(state, real, keys[0])
  if config.loss.pl_weight:
    state, reg = _lazy("pl" in regularize, bind(generator_path_length), state, real, keys[1])
    metrics.update(reg)
  state, d_metrics = bind(discriminator_main)(state, real, keys[2])
  metrics.update(d_metrics)
  if config.loss.r1_gamma:
    state, reg = _lazy("r1" in regularize, bind(discriminator_r1), state, real, keys[3])
    metrics.update(reg)
  beta = ema_beta(config, state.step)
  state = state.replace(step=state.step + 1,
                        ema_params=step_lib.ema_update(state.ema_params, state.g_params, beta))
  metrics["ema/beta"] = beta
  return state, metrics


def sample_images(components: state_lib.Components, config: ml_collections.ConfigDict,
                  params: Any, w_avg: jax.Array, key: jax.Array, num_images: int,
                  psi: float = 1.0) -> jax.Array:
  """Images from fixed `key` (latents and noise): the same samples whatever the weights."""
  z_key, noise_key = jax.random.split(key)
  generator = components.generator
  z = layers.standard_normal(z_key, (num_images, config.model.z_dim))
  noise = networks.sample_noise(noise_key, networks.block_resolutions(
      config.model.start_resolution, config.model.resolution), num_images)
  # Inference: the fused (grouped) modulated convolution.
  return generator.apply({"params": params}, z, w_avg=w_avg, psi=psi, noise=noise, fused=True)


def image_grid(images: np.ndarray, columns: int, pad: int = 2) -> np.ndarray:
  """[N, H, W, 3] in [-1, 1] -> uint8 tiles, `columns` per row, white gaps."""
  tiles = visualize.to_uint8(images)
  n, h, w, _ = tiles.shape
  rows = -(-n // columns)
  grid = np.full((rows * (h + pad) - pad, columns * (w + pad) - pad, 3), 255, np.uint8)
  for i in range(n):
    y, x = (i // columns) * (h + pad), (i % columns) * (w + pad)
    grid[y:y + h, x:x + w] = tiles[i]
  return grid


def _sample_key(config) -> jax.Array:
  return jax.random.fold_in(jax.random.PRNGKey(config.seed), 0x5A4D)


def make_sampler(components, config, mesh):
  """EMA samples for the same latents and noise at every call (truncation psi from config)."""
  generate = jax.jit(functools.partial(
      sample_images, components, config, num_images=config.sample.num_images,
      psi=config.sample.truncation_psi), out_shardings=parallel.replicated(mesh))
  key = _sample_key(config)
  columns = int(np.ceil(np.sqrt(config.sample.num_images)))

  def sample(state):
    images = generate(state.ema_params, state.g_state["w_avg"], key)
    return image_grid(np.asarray(jax.device_get(images)), columns)

  return sample


TASK = tasks.Task(create_components=create_components, init_state=init_state, train_step=None,
                  make_sampler=make_sampler, step_variants=step_variants,
                  pick_variant=pick_variant)


# --- Stage-1 output: the exported memory and a before/after check against the data. -------

def image_statistics(images: np.ndarray, thumbnail: int = 8) -> dict[str, np.ndarray]:
  """Per-channel mean and std, and the mean image at thumbnail x thumbnail ([-1, 1] units)."""
  images = np.asarray(images, np.float64)
  n, h, w, c = images.shape
  pooled = images.reshape(n, thumbnail, h // thumbnail, thumbnail, w // thumbnail, c)
  return {"channel_mean": images.mean(axis=(0, 1, 2)), "channel_std": images.std(axis=(0, 1, 2)),
          "mean_image": pooled.mean(axis=(0, 2, 4))}


def statistics_distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, float]:
  """L2 distance of the (mean, std) per channel; RMS difference of the mean images."""
  moments = np.concatenate([a["channel_mean"] - b["channel_mean"],
                            a["channel_std"] - b["channel_std"]])
  return {"channel_mean_std_l2": float(np.linalg.norm(moments)),
          "mean_image_rms": float(np.sqrt(np.mean((a["mean_image"] - b["mean_image"])**2)))}


def data_images(config: ml_collections.ConfigDict, num_images: int) -> np.ndarray:
  """The first `num_images` training images as the loop sees them (this process's rows)."""
  iterator = pipeline.create_train_iterator(config, start_step=0)
  batches = []
  while sum(len(b) for b in batches) < num_images:
    batches.append(next(iterator)["image"])
  return np.concatenate(batches)[:num_images]


def generated_images(components, config, params, w_avg, num_images: int) -> np.ndarray:
  """`num_images` EMA samples (psi = 1, fixed keys), generated in sample-grid sized chunks."""
  chunk = config.sample.num_images
  generate = jax.jit(functools.partial(sample_images, components, config, num_images=chunk))
  key = jax.random.fold_in(_sample_key(config), 1)
  images = [np.asarray(jax.device_get(generate(params, w_avg, jax.random.fold_in(key, i))))
            for i in range(-(-num_images // chunk))]
  return np.concatenate(images)[:num_images]


def fidelity_report(components, config, initial: state_lib.TrainState,
                    trained: state_lib.TrainState, num_images: int
                    ) -> tuple[dict[str, Any], np.ndarray]:
  """How far EMA samples are from the training data, at initialisation and after training.

  Returns (report, grid): the report holds each set's per-channel mean/std and the distances
  of `statistics_distance`; the grid's rows are data, initial samples and trained samples (the
  same latents and noise in both sample rows).
  """
  data = data_images(config, num_images)
  before = generated_images(components, config, initial.ema_params, initial.g_state["w_avg"],
                            num_images)
  after = generated_images(components, config, trained.ema_params, trained.g_state["w_avg"],
                           num_images)
  stats = {name: image_statistics(images) for name, images in
           (("data", data), ("initial", before), ("trained", after))}
  report = {"step": int(trained.step), "images": num_images,
            "distance_to_data": {"initial": statistics_distance(stats["initial"], stats["data"]),
                                 "trained": statistics_distance(stats["trained"], stats["data"])},
            "channel_mean": {k: v["channel_mean"].tolist() for k, v in stats.items()},
            "channel_std": {k: v["channel_std"].tolist() for k, v in stats.items()}}
  columns = min(8, num_images)
  rows = [image_grid(images[:columns], columns) for images in (data, before, after)]
  gap = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
  return report, np.concatenate([rows[0], gap, rows[1], gap, rows[2]])


def export_state(config: ml_collections.ConfigDict, state: state_lib.TrainState,
                 path: str) -> str:
  """Exports the EMA generator and the tracked w_avg of `state` to `path`."""
  path = memory_lib.export_memory(path, params=state.ema_params, w_avg=state.g_state["w_avg"],
                                  model_config=config.model, step=int(state.step))
  logging.info("Exported the generative memory of step %d to %s", int(state.step), path)
  return path


def export_and_report(config: ml_collections.ConfigDict, workdir: str,
                      memory_dir: str | None = None, report_images: int = 256, *,
                      step: int | None = None) -> dict[str, Any]:
  """The stage-1 command: export the latest checkpoint (or `step`; default to
  <workdir>/memory), then write <workdir>/report.{json,png} (`fidelity_report`)."""
  from gmsrm_jax.train import loop  # pylint: disable=g-import-not-at-top
  config_checks.validate(config)
  workdir = os.path.abspath(workdir)
  mesh = parallel.make_mesh()
  components, state, _ = loop.restore_run(config, workdir, mesh, step=step)
  path = export_state(config, state, memory_dir or os.path.join(workdir, "memory"))
  initial = parallel.create_sharded(loop.init_function(config, TASK, components), mesh)
  report, grid = fidelity_report(components, config, initial, state, report_images)
  report["memory_dir"] = path
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "report.json"), "w") as f:
      json.dump(report, f, indent=2)
    visualize.save_png(grid, os.path.join(workdir, "report.png"))
  return report


if __name__ == "__main__":
  from absl import flags  # pylint: disable=g-import-not-at-top
  from gmsrm_jax import cli  # pylint: disable=g-import-not-at-top

  _MEMORY_DIR = flags.DEFINE_string("memory_dir", None,
                                    "Where to export the memory (default <workdir>/memory).")
  _REPORT_IMAGES = flags.DEFINE_integer("report_images", 256,
                                        "Images for the data/sample statistics.")

  def main(argv):
    del argv
    config, workdir = cli.setup()
    report = export_and_report(config, workdir, _MEMORY_DIR.value, _REPORT_IMAGES.value,
                               step=cli.STEP.value)
    print(json.dumps({k: report[k] for k in ("step", "memory_dir", "distance_to_data")},
                     indent=2))

  cli.run(main)
