"""Stage 1 (StyleGAN2 pre-training of the generative memory) through the shared loop.

One 4-step run on one device of the reference step (`every_phase_step`: every phase computed at
every step, the lazy ones' results kept on their steps, as the library did before issue #13),
the same 4 steps through `train_and_evaluate` on 8 virtual devices, which runs the library's
step variants (only the due phases, picked per step in Python); the lazy phases, the EMA, the
carried statistics, checkpoint/export/load and a short run whose samples approach the data are
all checked against it.
"""

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import transfer_guard
from configs import memory_celebahq
from configs import memory_paris
from configs import memory_places2
from configs import memory_synthetic
from gmsrm_jax import plots
from gmsrm_jax import stylegan
from gmsrm_jax.data import pipeline
from gmsrm_jax.train import loop
from gmsrm_jax.train import memory_pretraining as mp
from gmsrm_jax.train import parallel
from gmsrm_jax.train import step as step_lib
from gmsrm_jax.train import tasks

NUM_STEPS = 4


def every_phase_step(components, config, state, batch):
  """The reference step: all four phases computed, each lazy phase's state and metrics kept
  where state.step % interval == 0 (selected on the device), then the EMA."""
  real = batch["image"]
  keys = jax.random.split(jax.random.fold_in(state.rng, state.step), 4)
  metrics = {}
  for phase, key, interval in ((mp.generator_main, keys[0], 1),
                               (mp.generator_path_length, keys[1], config.loss.pl_interval),
                               (mp.discriminator_main, keys[2], 1),
                               (mp.discriminator_r1, keys[3], config.loss.r1_interval)):
    applied, phase_metrics = phase(components, config, state, real, key)
    due = state.step % interval == 0
    state = jax.tree.map(lambda new, old, due=due: jnp.where(due, new, old), applied, state)
    metrics.update({k: jnp.where(due, v, 0) for k, v in phase_metrics.items()})
  beta = mp.ema_beta(config, state.step)
  metrics["ema/beta"] = beta
  return state.replace(step=state.step + 1, ema_params=step_lib.ema_update(
      state.ema_params, state.g_params, beta)), metrics


@dataclasses.dataclass
class Run:
  components: Any
  step_fn: Any
  mesh: Any
  batches: Any
  states: list  # Host copies after 0, 1, ..., NUM_STEPS steps.
  metrics: list  # Host metrics of steps 0 .. NUM_STEPS - 1.
  state: Any  # The device state after NUM_STEPS steps (donated by any further step).


@pytest.fixture(scope="module")
def config(tiny_data_dir):
  config = memory_synthetic.get_config("tiny")
  config.data.data_dir = tiny_data_dir
  config.train.num_steps = NUM_STEPS
  # Both regularizers on steps 0 and 2: two step variants (pl+r1, plain) for the loop to
  # compile, not three; different intervals are checked without compiling
  # (test_step_variants_run_the_phases_due_at_each_step).
  config.loss.pl_interval = 2
  return config


@pytest.fixture(scope="module")
def one_device(config):
  mesh = parallel.make_mesh(jax.devices()[:1])
  components = mp.create_components(config)
  state = parallel.create_sharded(functools.partial(
      mp.init_state, components, config, jax.random.PRNGKey(config.seed)), mesh)
  replicated = parallel.replicated(mesh)
  step_fn = jax.jit(functools.partial(every_phase_step, components, config),
                    in_shardings=(replicated, parallel.batch_sharded(mesh)),
                    out_shardings=(replicated, replicated), donate_argnums=0)
  batches = pipeline.create_train_iterator(config, start_step=0)
  states, metrics = [jax.device_get(state)], []
  for _ in range(NUM_STEPS):
    state, step_metrics = step_fn(state, parallel.global_batch(next(batches), mesh))
    states.append(jax.device_get(state))
    metrics.append(jax.device_get(step_metrics))
  return Run(components, step_fn, mesh, batches, states, metrics, state)


def _assert_trees_close(a, b, rtol, atol):
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(jax.device_get(a))[0],
                          jax.tree.leaves(jax.device_get(b))):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))


def test_loop_on_eight_devices_matches_one_device_checkpoints_and_exports(
    config, one_device, tmp_path, monkeypatch):
  assert jax.device_count() == 8
  assert tasks.get(config) is mp.TASK
  workdir, cache_dir = str(tmp_path / "run"), str(tmp_path / "compilation_cache")
  # No step reads a device value (the loop's guard, enforced on CPU), and the compiled
  # programs are written to the persistent cache.
  transfer_guard.enforce_on_cpu(monkeypatch)
  config = config.copy_and_resolve_references()
  config.train.device_to_host_guard = "disallow_explicit"
  config.train.compilation_cache_dir = cache_dir
  final = loop.train_and_evaluate(config, workdir)
  assert os.listdir(cache_dir)

  # The step variants reproduce the reference; minibatch std, the w average, the path-length
  # mean, R1: all over the global batch. To round-off on the checkpoint of step 2; after it,
  # to 1e-3: Adam with beta1 = 0 steps each parameter by about lr whatever its gradient's
  # size, so an element whose gradient is within round-off of zero moves by a different
  # amount (measured: 1 of 2304 elements by 1.4e-5 at step 4, and in a 3-variant run, 1 vs 8
  # devices, Adam's first moments by up to 2.6e-4, while 1-ulp noise in that run's step-2
  # state moved G's gradient norm by 1.4e-4).
  _, at_step_2, _ = loop.restore_run(config, workdir, parallel.make_mesh(), step=2)
  _assert_trees_close(at_step_2, one_device.states[2], rtol=1e-4, atol=1e-5)
  _assert_trees_close(final, one_device.states[-1], rtol=1e-3, atol=5e-4)
  # Each applied regularization is an Adam step of its own (StyleGAN2's lazy scheme): path
  # length and R1 on steps 0 and 2.
  assert int(final.g_opt_state[0].count) == NUM_STEPS + 2
  assert int(final.d_opt_state[0].count) == NUM_STEPS + 2
  # The logged means over each 2-step window: zero-metric steps count, as in the reference.
  logged = plots.read_scalars(workdir, "loss/")
  for name in ("loss/r1", "loss/pl", "loss/g", "loss/d"):
    steps, means = logged[name]
    np.testing.assert_array_equal(steps, [2, 4])
    reference = [float(m[name]) for m in one_device.metrics]
    np.testing.assert_allclose(means, [np.mean(reference[:2]), np.mean(reference[2:])],
                               rtol=1e-3, atol=1e-6, err_msg=name)
  assert os.path.exists(os.path.join(workdir, "samples", f"step_{NUM_STEPS:08d}.png"))

  _, restored, step = loop.restore_run(config, workdir, parallel.make_mesh())
  assert step == NUM_STEPS
  _assert_trees_close(restored, final, rtol=0, atol=0)

  path = mp.export_state(config, restored, os.path.join(workdir, "memory"))
  memory = stylegan.load_memory(path, config.model)
  assert memory.step == NUM_STEPS
  _assert_trees_close(memory.params, final.ema_params, rtol=0, atol=0)
  np.testing.assert_array_equal(memory.w_avg, final.g_state["w_avg"])


def test_lazy_regularization_runs_on_its_steps(config, one_device):
  assert (config.loss.r1_interval, config.loss.pl_interval) == (2, 2)
  for name in ("loss/r1", "loss/pl"):
    values = [float(m[name]) for m in one_device.metrics]
    assert [v != 0 for v in values] == [True, False, True, False], (name, values)
  assert [mp.pick_variant(config, step) for step in range(NUM_STEPS)] == [
      "pl+r1", "plain", "pl+r1", "plain"]
  assert mp.lazy_regularization_factor(16) == pytest.approx(16 / 17)


def test_step_variants_run_the_phases_due_at_each_step():
  config = memory_places2.get_config()  # StyleGAN2's intervals: path length 4, R1 16.
  picks = [mp.pick_variant(config, step) for step in range(33)]
  for step, pick in enumerate(picks):
    assert ("pl" in pick.split("+")) == (step % 4 == 0), (step, pick)
    assert ("r1" in pick.split("+")) == (step % 16 == 0), (step, pick)
  # The variants a run compiles: those of one period of the intervals, in order of first use.
  assert list(mp.step_variants(config)) == ["pl+r1", mp.PLAIN, "pl"]
  config.loss.pl_weight = 0.0
  assert list(mp.step_variants(config)) == ["r1", mp.PLAIN]
  assert mp.pick_variant(config, 16) == "r1" and mp.pick_variant(config, 4) == mp.PLAIN


def test_ema_follows_its_half_life(config, one_device):
  batch, rampup = config.train.batch_size, config.train.ema_rampup
  for step in range(NUM_STEPS):
    half_life = min(config.train.ema_half_life_images, step * batch * rampup)
    beta = 0.5 ** (batch / max(half_life, 1e-8))
    np.testing.assert_allclose(one_device.metrics[step]["ema/beta"], beta, rtol=1e-6)
    before, after = one_device.states[step], one_device.states[step + 1]
    expected = jax.tree.map(lambda e, p: beta * e + (1 - beta) * p, before.ema_params,
                            after.g_params)
    _assert_trees_close(after.ema_params, expected, rtol=1e-6, atol=1e-7)


def test_tracked_w_average_and_path_length_mean(config, one_device):
  states = one_device.states
  beta = config.train.w_avg_beta
  # One lerp toward the batch mean of w per step, from zero.
  w_avg = [np.asarray(s.g_state["w_avg"]) for s in states]
  assert np.all(w_avg[0] == 0) and np.linalg.norm(w_avg[1]) > 0
  assert np.linalg.norm(w_avg[2] - beta * w_avg[1]) < np.linalg.norm(w_avg[1])
  pl_mean = [float(s.g_state["pl_mean"]) for s in states]
  # Updated on steps 0 and 2 only.
  assert pl_mean[0] == 0 and pl_mean[1] > 0 and pl_mean[1] == pl_mean[2] != pl_mean[3]
  assert pl_mean[3] == pl_mean[4]
  assert set(one_device.metrics[0]) >= {"loss/g", "loss/d", "loss/r1", "loss/pl",
                                        "disc/real_logit", "disc/fake_logit"}


def test_samples_move_toward_the_data(config, one_device, tmp_path):
  state = one_device.state
  for _ in range(60 - NUM_STEPS):
    state, metrics = one_device.step_fn(
        state, parallel.global_batch(next(one_device.batches), one_device.mesh))
  assert np.isfinite(float(metrics["loss/g"]))
  report, grid = mp.fidelity_report(one_device.components, config, one_device.states[0],
                                    state, num_images=64)
  initial, trained = report["distance_to_data"]["initial"], report["distance_to_data"]["trained"]
  assert trained["channel_mean_std_l2"] < 0.5 * initial["channel_mean_std_l2"], report
  assert trained["mean_image_rms"] < 0.5 * initial["mean_image_rms"], report
  assert grid.dtype == np.uint8 and grid.shape[0] == 3 * 16 + 2 * 4


@pytest.mark.parametrize("module, dataset", [(memory_places2, "places2_two_categories"),
                                             (memory_celebahq, "celeb_a_hq"),
                                             (memory_paris, "paris_street_view")])
def test_paper_configs_build_the_256_memory(module, dataset):
  config = module.get_config()
  assert config.data.name == dataset and config.task == "memory_pretraining"
  components = mp.create_components(config)
  abstract = jax.eval_shape(functools.partial(mp.init_state, components, config),
                            jax.random.PRNGKey(0))
  assert abstract.g_params["synthesis"]["b256"]["to_rgb"]["kernel"].shape == (1, 1, 64, 3)
  assert abstract.d_params["b256"]["conv0"]["kernel"].shape == (3, 3, 64, 64)
  g_count = sum(x.size for x in jax.tree.leaves(abstract.g_params))
  assert 20e6 < g_count < 30e6, g_count  # StyleGAN2 at 256^2 with the paper256 widths.
