"""The jitted train step: data parallelism is exact, losses move, EMA follows its formula."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base as base_config
from gmsrm_jax import losses as losses_lib
from gmsrm_jax import metrics as metrics_lib
from gmsrm_jax import objectives
from gmsrm_jax.train import parallel
from gmsrm_jax.train import state as state_lib
from gmsrm_jax.train import step as step_lib


def _batch(batch_size=8, size=32, seed=0):
  """Smooth colour ramps (learnable hole content) with one rectangular hole each."""
  rng = np.random.default_rng(seed)
  ramp = np.linspace(-1, 1, size, dtype=np.float32)
  slopes = rng.uniform(-0.6, 0.6, (batch_size, 2, 1, 1, 3)).astype(np.float32)
  offsets = rng.uniform(-0.3, 0.3, (batch_size, 1, 1, 3)).astype(np.float32)
  image = (slopes[:, 0] * ramp[None, :, None, None] + slopes[:, 1] * ramp[None, None, :, None]
           + offsets)
  mask = np.zeros((batch_size, size, size, 1), np.float32)
  for i in range(batch_size):
    y, x = rng.integers(0, size // 2, 2)
    mask[i, y:y + size // 2, x:x + size // 3] = 1.0
  return {"image": image, "mask": mask}


def _run(config, devices, num_steps=2, keep_initial=False):
  mesh = parallel.make_mesh(devices)
  components = state_lib.create_components(config)
  init_fn = functools.partial(state_lib.init_state, components, jax.random.PRNGKey(0),
                              (1, 32, 32, 3))
  state = parallel.create_sharded(init_fn, mesh)
  initial = jax.device_get(state) if keep_initial else None
  replicated = parallel.replicated(mesh)
  step_fn = jax.jit(functools.partial(step_lib.train_step, components, config),
                    in_shardings=(replicated, parallel.batch_sharded(mesh)),
                    out_shardings=(replicated, replicated), donate_argnums=0)
  all_metrics = []
  for i in range(num_steps):
    batch = jax.device_put(_batch(seed=i), parallel.batch_sharded(mesh))
    state, metrics = step_fn(state, batch)
    all_metrics.append(jax.device_get(metrics))
  if keep_initial:
    return initial, jax.device_get(state), all_metrics
  return jax.device_get(state), all_metrics


def test_one_device_and_eight_devices_give_the_same_state():
  assert jax.device_count() >= 8, "tests/conftest.py must force 8 host devices"
  config = base_config.get_config("tiny")
  one, metrics_one = _run(config, jax.devices()[:1])
  eight, metrics_eight = _run(config, jax.devices()[:8])
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(one)[0],
                          jax.tree.leaves(eight)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6, err_msg=jax.tree_util.keystr(path))
  for m1, m8 in zip(metrics_one, metrics_eight):
    for k in m1:
      np.testing.assert_allclose(m1[k], m8[k], rtol=1e-4, atol=1e-6, err_msg=k)
  # Spectral-norm statistics moved and agree (they are part of the compared state too).
  assert int(one.step) == 2
  sigma = one.d_state["batch_stats"]["sn_0"]["conv_0/kernel/sigma"]
  assert float(sigma) > 0


def test_step_updates_every_part_of_the_state_and_ema_formula():
  config = base_config.get_config("tiny")
  config.train.ema_decay = 0.9
  before, after, metrics = _run(config, jax.devices()[:1], num_steps=1, keep_initial=True)
  changed = lambda a, b: any(not np.array_equal(x, y) for x, y in
                             zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  assert changed(before.g_params, after.g_params)
  assert changed(before.d_params, after.d_params)
  assert changed(before.d_state, after.d_state)
  # Step 0 with the warm-up: decay min(0.9, 1/10) = 0.1.
  expected_ema = jax.tree.map(lambda e, p: 0.1 * e + 0.9 * p, before.ema_params, after.g_params)
  for a, b in zip(jax.tree.leaves(expected_ema), jax.tree.leaves(after.ema_params)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  for key in ("loss/rec_known", "loss/rec_hole", "loss/adv_g", "loss/d", "loss/g_total"):
    assert np.isfinite(metrics[0][key]), key


def test_without_the_adversarial_term_the_discriminator_is_skipped(monkeypatch):
  config = base_config.get_config("tiny")
  config.loss.adv_weight = 0.0
  before, skipped, metrics = _run(config, jax.devices()[:1], num_steps=1, keep_initial=True)
  assert not any(k.startswith(("disc/", "loss/d", "loss/adv", "grad_norm/d")) for k in metrics[0])
  for name in ("d_params", "d_opt_state", "d_state"):  # Untouched, not merely unchanged.
    for a, b in zip(jax.tree.leaves(getattr(before, name)),
                    jax.tree.leaves(getattr(skipped, name))):
      np.testing.assert_array_equal(a, b)
  # The generator's update is bit-identical to the one the step with the discriminator (and
  # the adversarial term weighted 0) computes.
  monkeypatch.setattr(step_lib, "uses_discriminator", lambda config: True)
  _, with_disc, metrics_with = _run(config, jax.devices()[:1], num_steps=1, keep_initial=True)
  assert "loss/d" in metrics_with[0]
  for a, b in zip(jax.tree.leaves(with_disc.g_params), jax.tree.leaves(skipped.g_params)):
    np.testing.assert_array_equal(a, b)


def test_the_demos_short_run_recipe_trains():
  """The demos' settings together (pyramid prior, residual head, overlay masks, cosine
  schedule, no discriminator) through the jitted step."""
  config = base_config.get_config("tiny")
  base_config.short_run_recipe(config)
  config.optim.warmup_steps = 1
  config.loss.ssim_weight = 0.5  # Any objective takes the structural term (DESIGN Q14).
  before, after, metrics = _run(config, jax.devices()[:1], num_steps=3, keep_initial=True)
  assert int(after.step) == 3 and "loss/d" not in metrics[0]
  for m in metrics:
    assert 0.0 < m["loss/ssim"] < 1.0
    np.testing.assert_allclose(
        m["loss/g_total"], m["loss/rec_known"] + 10.0 * m["loss/rec_hole"] + 0.5 * m["loss/ssim"],
        rtol=1e-5)
  assert all(np.isfinite(v) for m in metrics for v in jax.tree.leaves(m))
  # The schedule starts at 0 (warm-up), so only the later updates move G.
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before.g_params),
                                                      jax.tree.leaves(after.g_params)))


def test_learning_rate_schedules():
  config = base_config.get_config("tiny")
  assert state_lib.learning_rate(config.optim, 2e-4, 100) == 2e-4  # A float: no schedule state.
  config.optim.schedule = "cosine"
  config.optim.warmup_steps = 10
  config.optim.final_lr_fraction = 0.1
  schedule = state_lib.learning_rate(config.optim, 1e-3, 110)
  # Linear warm-up from 0, the peak at the end of it, cosine half-way, the floor at the end.
  for step, expected in ((0, 0.0), (5, 5e-4), (10, 1e-3), (60, 1e-4 + 0.9e-3 * 0.5),
                         (110, 1e-4), (500, 1e-4)):
    np.testing.assert_allclose(schedule(step), expected, rtol=1e-5, atol=1e-9)
  config.optim.schedule = "linear"
  with pytest.raises(ValueError, match="config.optim.schedule 'linear'"):
    state_lib.learning_rate(config.optim, 1e-3, 110)


def test_ema_warmup_decay_by_hand():
  # (1 + t) / (10 + t) until it reaches the configured decay, then the decay.
  for step, expected in ((0, 0.1), (1, 2 / 11), (90, 91 / 100), (989, 0.99), (5000, 0.99)):
    np.testing.assert_allclose(step_lib.ema_decay_at(step, 0.99, True), expected, rtol=1e-6)
    np.testing.assert_allclose(step_lib.ema_decay_at(step, 0.99, False), 0.99, rtol=1e-7)
  # Three updates by hand: e <- d_t e + (1 - d_t) p_t with d = 0.1, 2/11, 3/12.
  ema, params = jnp.array(5.0), [jnp.array(1.0), jnp.array(2.0), jnp.array(4.0)]
  expected = 5.0
  for step, p in enumerate(params):
    ema = step_lib.ema_update(ema, p, step_lib.ema_decay_at(step, 0.999, True))
    d = (1 + step) / (10 + step)
    expected = d * expected + (1 - d) * float(p)
  np.testing.assert_allclose(ema, expected, rtol=1e-6)
  # 0.1*5 + 0.9*1 = 1.4; then 2/11*1.4 + 9/11*2 = 1.8909; then 0.25*1.8909 + 0.75*4 = 3.4727.
  np.testing.assert_allclose(ema, 3.47272727, rtol=1e-6)


def test_reconstruction_improves_over_steps():
  config = base_config.get_config("tiny")
  config.loss.adv_weight = 0.0
  config.optim.learning_rate = 2e-3
  mesh = parallel.make_mesh(jax.devices()[:1])
  components = state_lib.create_components(config)
  state = parallel.create_sharded(functools.partial(
      state_lib.init_state, components, jax.random.PRNGKey(0), (1, 32, 32, 3)), mesh)
  step_fn = jax.jit(functools.partial(step_lib.train_step, components, config))
  batch = jax.tree.map(jnp.asarray, _batch())
  losses = []
  for _ in range(15):
    state, metrics = step_fn(state, batch)
    losses.append(float(metrics["loss/rec_hole"]))
  assert losses[-1] < 0.7 * losses[0], losses


def test_structural_loss_is_one_minus_the_evaluations_ssim():
  image = jnp.asarray(_batch(batch_size=2)["image"])
  other = jnp.asarray(_batch(batch_size=2, seed=1)["image"])
  assert float(losses_lib.structural_loss(image, image)) == pytest.approx(0.0, abs=1e-6)
  unit = lambda x: (np.clip(x, -1, 1) + 1) / 2
  expected = 1.0 - np.mean(metrics_lib.ssim(unit(other), unit(image)))
  np.testing.assert_allclose(losses_lib.structural_loss(other, image), expected, rtol=1e-5)
  # Differentiable: it pulls a perturbed image back towards the target.
  gradient = jax.grad(losses_lib.structural_loss)(other, image)
  assert float(losses_lib.structural_loss(other - 0.1 * gradient / jnp.abs(gradient).max(), image)
               ) < float(expected)


def test_unknown_auxiliary_loss_needs_a_weight():
  config = base_config.get_config("tiny")
  terms = {"rec_known": jnp.array(1.0), "rec_hole": jnp.array(1.0), "adv_g": jnp.array(1.0),
           "kl": jnp.array(1.0)}
  objective = objectives.get(config.loss)
  with pytest.raises(KeyError, match="kl_weight"):
    objective.generator_total(terms, config.loss)
  config.loss.unlock()
  config.loss.kl_weight = 0.5
  np.testing.assert_allclose(objective.generator_total(terms, config.loss),
                             1.0 * (1.0 + 10.0 * 1.0) + 0.01 * 1.0 + 0.5 * 1.0, rtol=1e-6)
