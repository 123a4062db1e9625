"""UNet-CICM through the shared train step and loop. The memory is carried state: the same on
1 device, 8 devices and 2 processes for the same global batch; checkpointed, restored and read
by evaluation; its diagnostics reach TensorBoard."""

import functools

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from configs import unet_cicm as cicm_config
from gmsrm_jax import evaluation
from gmsrm_jax import metrics as metrics_lib
from gmsrm_jax.data import pipeline
from gmsrm_jax.train import checkpoint
from gmsrm_jax.train import loop
from gmsrm_jax.train import parallel
from gmsrm_jax.train import step as step_lib
from gmsrm_jax.train import tasks
import test_multiprocess  # Its two-process runner (tests/ is on the path under pytest).


def _memory(state):
  return jax.device_get(state.g_state["memory"]["cicm"])


def _assert_close(a, b, where, relative=1e-5):
  """Leafwise |a - b| <= 2e-5 |b| + relative * (the leaf's largest |b|): equal up to the
  rounding of reductions whose order depends on the device count."""
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    scale = float(np.max(np.abs(y))) if y.size else 0.0
    np.testing.assert_array_less(np.abs(x - y), 2e-5 * np.abs(y) + relative * scale + 1e-7,
                                 err_msg=f"{where}: {jax.tree_util.keystr(path)}")


def _config(data_dir):
  config = cicm_config.get_config("tiny")
  config.data.data_dir = data_dir
  config.train.num_steps = 2  # As tests/multiprocess_worker.py.
  config.train.checkpoint_every = 1  # Every step's state and metrics, to redo each step.
  config.train.log_every = 1
  return config


@pytest.fixture(scope="module")
def trained(tiny_data_dir, tmp_path_factory):
  """The real loop, one process, 8 devices: train 2 steps, checkpoint each, logs."""
  assert jax.device_count() == 8
  config = _config(tiny_data_dir)
  workdir = str(tmp_path_factory.mktemp("unet_cicm"))
  return config, workdir, loop.train_and_evaluate(config, workdir)


@pytest.fixture(scope="module")
def initial(trained):
  """The state before step 1, on the host (one init compile for the tests that need it)."""
  config, _, _ = trained
  task = tasks.get(config)
  return jax.device_get(jax.jit(functools.partial(
      task.init_state, task.create_components(config), config))(jax.random.PRNGKey(config.seed)))


def _logged(workdir):
  """{metric: {step: value}} as the loop wrote them for TensorBoard."""
  events = event_accumulator.EventAccumulator(workdir, size_guidance={"tensors": 0})
  events.Reload()
  return {tag: {e.step: tensor_util.make_ndarray(e.tensor_proto) for e in events.Tensors(tag)}
          for tag in events.Tags()["tensors"]}


def _restore(config, workdir, step=None):
  task = tasks.get(config)
  components = task.create_components(config)
  mesh = parallel.make_mesh()
  _, abstract = loop.abstract_train_state(config, task, components, mesh)
  state, _ = checkpoint.restore(checkpoint.create_manager(workdir, read_only=True), abstract,
                                step)
  return state, components, mesh


def test_one_device_steps_agree_with_eight_devices(trained, initial):
  """Each step of the 8-device loop, redone on one device (no sharding at all) from the same
  state with the same global batch, writes the same memory and reports the same losses.

  The rest of the state is compared loosely: on these flat synthetic images the tiny UNet's
  4x4 bottleneck makes the backbone's gradients ill-conditioned, so they differ between device
  counts by up to a few % of a leaf's scale, with or without CICM (DESIGN.md, CICM section).
  """
  config, workdir, _ = trained
  task = tasks.get(config)
  components = task.create_components(config)
  train_step = jax.jit(functools.partial(task.train_step, components, config))
  batches = pipeline.create_train_iterator(config, start_step=0)
  before = initial
  logged = _logged(workdir)
  for step in (1, 2):
    after, metrics = train_step(jax.device_get(before), next(batches))
    eight = _restore(config, workdir, step)[0]
    assert not np.allclose(_memory(before)["features"], _memory(after)["features"])
    _assert_close(_memory(after), _memory(eight), f"step {step} memory, 1 vs 8 devices")
    _assert_close(after, eight, f"step {step} state, 1 vs 8 devices", relative=0.05)
    for name in ("loss/inpaint", "loss/ratio", "loss/inter", "loss/intra"):
      np.testing.assert_allclose(metrics[name], logged[name][step], rtol=1e-5, err_msg=name)
    before = eight


def test_memory_is_checkpointed_restored_and_read_by_evaluation(trained, initial):
  config, workdir, state = trained
  restored, components, mesh = _restore(config, workdir)
  assert int(restored.step) == 2
  for name, value in _memory(state).items():
    np.testing.assert_array_equal(_memory(restored)[name], value, err_msg=name)

  # Evaluation's one batch per bin (8 images), recomputed with the restored memory and with
  # the initial one: evaluate() must report the former.
  column, mask_spec = evaluation.mask_settings(config.eval)[0]
  batch = parallel.global_batch(next(iter(pipeline.create_eval_iterator(
      config, mask_spec=mask_spec, num_images=config.eval.num_images))), mesh)
  predict = jax.jit(functools.partial(step_lib.predict, components))
  to_unit = lambda x: (np.clip(np.asarray(x), -1, 1) + 1) / 2
  psnr = {name: float(np.mean(metrics_lib.psnr(
      to_unit(predict(restored.g_params, g_state, batch["image"], batch["mask"])),
      to_unit(batch["image"])))) for name, g_state in (("restored", restored.g_state),
                                                      ("initial", initial.g_state))}
  assert psnr["restored"] != psnr["initial"]
  results = evaluation.evaluate(config, workdir)["results"]
  np.testing.assert_allclose(results[column]["psnr"], psnr["restored"], rtol=1e-5)


def test_memory_diagnostics_reach_tensorboard(trained):
  _, workdir, _ = trained
  logged = _logged(workdir)
  assert {"diag/cicm/never_updated", "diag/cicm/complete_regions",
          "diag/cicm/anchor_similarity", "loss/ratio", "loss/inter", "loss/intra"} <= set(logged)
  received = sum(float(logged[f"diag/cicm/set_regions/{i:02d}"][1]) for i in range(5))
  # Every complete region of the step's batch went to exactly one set.
  np.testing.assert_allclose(received, float(logged["diag/cicm/complete_regions"][1]) * 8 * 16,
                             rtol=1e-5)


def test_two_processes_carry_the_same_memory_as_one(tiny_data_dir, tmp_path, trained):
  _, _, single = trained
  _, results = test_multiprocess.run_two_processes(tiny_data_dir, tmp_path, "unet_cicm:tiny")
  assert [r["process_count"] for r in results] == [2, 2]
  assert results[0]["leaves"] == results[1]["leaves"]  # Bit-identical across processes.
  flat = jax.tree_util.tree_flatten_with_path(jax.device_get(single))[0]
  assert any("memory" in jax.tree_util.keystr(path) for path, _ in flat)
  two = jax.tree.unflatten(jax.tree.structure(single),
                           [np.asarray(results[0]["leaves"][jax.tree_util.keystr(path)])
                            for path, _ in flat])
  _assert_close(two, jax.device_get(single), "2 processes vs 1")
