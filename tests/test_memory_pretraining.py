"""Stage 1 (StyleGAN2 pre-training of the generative memory) through the shared loop.

One 4-step run on one device (the reference), the same 4 steps through `train_and_evaluate` on
8 virtual devices; the lazy phases, the EMA, the carried statistics, checkpoint/export/load and
a short run whose samples approach the data are all checked against it.
"""

import dataclasses
import functools
import os
from typing import Any

import jax
import numpy as np
import pytest

from configs import memory_celebahq
from configs import memory_paris
from configs import memory_places2
from configs import memory_synthetic
from gmsrm_jax import stylegan
from gmsrm_jax.data import pipeline
from gmsrm_jax.train import loop
from gmsrm_jax.train import memory_pretraining as mp
from gmsrm_jax.train import parallel
from gmsrm_jax.train import tasks

NUM_STEPS = 4


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
  return config


@pytest.fixture(scope="module")
def one_device(config):
  mesh = parallel.make_mesh(jax.devices()[:1])
  components = mp.create_components(config)
  state = parallel.create_sharded(functools.partial(
      mp.init_state, components, config, jax.random.PRNGKey(config.seed)), mesh)
  replicated = parallel.replicated(mesh)
  step_fn = jax.jit(functools.partial(mp.train_step, components, config),
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
    config, one_device, tmp_path):
  assert jax.device_count() == 8
  assert tasks.get(config) is mp.TASK
  workdir = str(tmp_path)
  final = loop.train_and_evaluate(config, workdir)
  # Minibatch std, the w average, the path-length mean, R1: all over the global batch.
  _assert_trees_close(final, one_device.states[-1], rtol=1e-4, atol=1e-5)
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
  assert (config.loss.r1_interval, config.loss.pl_interval) == (2, 4)
  r1 = [float(m["loss/r1"]) for m in one_device.metrics]
  pl = [float(m["loss/pl"]) for m in one_device.metrics]
  assert [v != 0 for v in r1] == [True, False, True, False], r1
  assert [v != 0 for v in pl] == [True, False, False, False], pl
  # Each applied regularization is an Adam step of its own (StyleGAN2's lazy scheme).
  final = one_device.states[-1]
  assert int(final.g_opt_state[0].count) == NUM_STEPS + 1
  assert int(final.d_opt_state[0].count) == NUM_STEPS + 2
  assert mp.lazy_regularization_factor(16) == pytest.approx(16 / 17)


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
  assert pl_mean[0] == 0 and pl_mean[1] > 0 and pl_mean[1] == pl_mean[2]  # Only on step 0.
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
