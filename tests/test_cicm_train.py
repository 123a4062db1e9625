"""UNet-CICM through the shared train step and loop. The memory is carried state: the same on
1 device, 8 devices and 2 processes for the same global batch; checkpointed, restored and read
by evaluation; its diagnostics reach TensorBoard."""

import functools
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from configs import unet_cicm as cicm_config
from gmsrm_jax import evaluation
from gmsrm_jax import export as export_lib
from gmsrm_jax import metrics as metrics_lib
from gmsrm_jax.data import pipeline
from gmsrm_jax.train import loop
from gmsrm_jax.train import parallel
from gmsrm_jax.train import step as step_lib
from gmsrm_jax.train import tasks
import two_processes  # The two-process runner (tests/ is on the path under pytest).


def _memory(state):
  return jax.device_get(state.g_state["memory"]["cicm"])


def _assert_close(a, b, where, relative=1e-5, pointwise=2e-5, absolute=1e-7):
  """Leafwise |a - b| < pointwise |b| + relative * (the leaf's largest |b|) + absolute: equal
  up to the rounding of reductions whose order depends on the device count."""
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    scale = float(np.max(np.abs(y))) if y.size else 0.0
    np.testing.assert_array_less(np.abs(x - y),
                                 pointwise * np.abs(y) + relative * scale + absolute,
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
  mesh = parallel.make_mesh()
  components, state, _ = loop.restore_run(config, workdir, mesh, step=step)
  return state, components, mesh


def test_one_device_steps_agree_with_eight_devices(trained, initial):
  """Each step of the 8-device loop, redone on one device (no sharding at all) from the same
  state with the same global batch, writes the same memory and reports the same losses.

  The parameters are compared in float64 (next test): in float32 a pre-activation within
  rounding of zero can flip a ReLU between device counts, which moves a few gradient entries
  by ~1% (measured on this batch), and Adam's first, sign-like steps carry that on.
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
    for name in ("loss/inpaint", "loss/ratio", "loss/inter", "loss/intra"):
      np.testing.assert_allclose(metrics[name], logged[name][step], rtol=1e-5, err_msg=name)
    before = eight


def test_one_and_eight_devices_agree_to_float64_rounding(trained, initial):
  """The whole train step (memory, parameters, optimizer and discriminator state) in float64:
  two steps on one device and on 8 devices agree to ~1e-14 of each leaf's scale."""
  config, _, _ = trained
  task = tasks.get(config)
  step_fn = functools.partial(task.train_step, task.create_components(config), config)
  batches = pipeline.create_train_iterator(config, start_step=0)
  batches = [next(batches) for _ in range(2)]
  mesh = parallel.make_mesh()
  with jax.enable_x64(True):
    to_f64 = lambda tree: jax.tree.map(
        lambda x: np.asarray(x, np.float64) if np.asarray(x).dtype == np.float32 else x, tree)
    one = eight = to_f64(initial)
    eight = jax.device_put(eight, parallel.replicated(mesh))
    step_one = jax.jit(step_fn)
    step_eight = jax.jit(step_fn, out_shardings=(parallel.replicated(mesh), None))
    for batch in map(to_f64, batches):
      one, _ = step_one(one, batch)
      eight, _ = step_eight(eight, parallel.global_batch(batch, mesh))
    one, eight = jax.device_get((one, eight))
  assert jax.tree.leaves(one.g_params)[0].dtype == np.float64
  assert _memory(one)["features"].dtype == np.float64
  _assert_close(one, eight, "float64, 1 vs 8 devices", relative=1e-12, pointwise=0.0,
                absolute=1e-30)


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
      to_unit(predict({"params": restored.g_params, **g_state}, batch["image"],
                      batch["mask"])),
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
  # The project's one multi-process job (the loop is shared by every family; this one also
  # carries state updated outside the gradients): 2 processes x 4 devices vs 1 x 8.
  workdir, results = two_processes.run_two_processes(tiny_data_dir, tmp_path, "unet_cicm:tiny")
  assert [r["process_count"] for r in results] == [2, 2]
  assert [r["device_count"] for r in results] == [8, 8]
  assert results[0]["leaves"] == results[1]["leaves"]  # Bit-identical across processes.
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "2"))  # Saved by both together.
  flat = jax.tree_util.tree_flatten_with_path(jax.device_get(single))[0]
  assert any("memory" in jax.tree_util.keystr(path) for path, _ in flat)
  two = jax.tree.unflatten(jax.tree.structure(single),
                           [np.asarray(results[0]["leaves"][jax.tree_util.keystr(path)])
                            for path, _ in flat])
  _assert_close(two, jax.device_get(single), "2 processes vs 1")


def test_export_carries_the_memory_and_serves_any_batch_size(trained, tmp_path):
  config, workdir, _ = trained
  state, components, _ = _restore(config, workdir)
  out_dir = export_lib.export(config, workdir, str(tmp_path / "export"), platforms=("cpu",))
  model = export_lib.load(out_dir)
  assert model.step == 2
  for name, value in _memory(state).items():
    np.testing.assert_array_equal(model.variables["memory"]["cicm"][name], value, err_msg=name)

  serve = export_lib.load_serving(out_dir)
  predict = jax.jit(functools.partial(step_lib.predict, components))
  batch = next(iter(pipeline.create_eval_iterator(config, mask_spec=("bin", "40-60"),
                                                  num_images=8)))
  for size in (3, 8):  # The serialized function's batch dimension is symbolic.
    image, mask = batch["image"][:size], batch["mask"][:size]
    expected = predict(step_lib.inference_variables(config, state), image, mask)
    np.testing.assert_allclose(model(image, mask), expected, atol=1e-5)
    np.testing.assert_allclose(serve(image, mask), expected, atol=1e-5)

  # Serving needs jax and orbax only: the model code is not importable in this process.
  script = (
      "import sys; sys.modules['gmsrm_jax'] = None\n"
      "import jax, numpy as np, orbax.checkpoint as ocp\n"
      f"d = {out_dir!r}\n"
      "fn = jax.export.deserialize(bytearray(open(d + '/inpaint.jax', 'rb').read()))\n"
      "variables = ocp.StandardCheckpointer().restore(d + '/variables')\n"
      "x = np.load(d + '/x.npz')\n"
      "np.save(d + '/y.npy', np.asarray(fn.call(variables, x['image'], x['mask'])))\n")
  np.savez(os.path.join(out_dir, "x.npz"), image=batch["image"][:2], mask=batch["mask"][:2])
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=str(tmp_path))
  np.testing.assert_allclose(np.load(os.path.join(out_dir, "y.npy")),
                             serve(batch["image"][:2], batch["mask"][:2]), atol=1e-6)


def test_loading_a_missing_export_says_how_to_create_one(tmp_path):
  with pytest.raises(FileNotFoundError, match="python export.py"):
    export_lib.load(str(tmp_path))
