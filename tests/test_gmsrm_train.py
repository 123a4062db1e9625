"""GM-SRM stage 2 through the shared loop: the frozen memory is loaded into the state (never
trained, bit-identical after training, checkpointed and exported with the run), the flagship
GM-SRM + CICM trains, resumes exactly, agrees on 1 and 8 devices in float64, evaluates and
exports; every Table IV variant trains; missing pieces fail fast with the fix."""

import functools
import os
import shutil

import jax
import numpy as np
import pytest

from configs import gmsrm as gmsrm_config
from configs import memory_synthetic
from gmsrm_jax import evaluation
from gmsrm_jax import export as export_lib
from gmsrm_jax import weights as weights_lib
from gmsrm_jax.data import pipeline
from gmsrm_jax.stylegan import memory as memory_lib
from gmsrm_jax.train import checkpoint
from gmsrm_jax.train import loop
from gmsrm_jax.train import parallel
from gmsrm_jax.train import step as step_lib
from gmsrm_jax.train import tasks
# Its leafwise comparison (tests/ is on the path under pytest).
from test_cicm_train import _assert_close as assert_close  # pylint: disable=g-bad-import-order


def _paths(tree):
  return {jax.tree_util.keystr(p, simple=True, separator="/"): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]}


@pytest.fixture(scope="module")
def memory_dir(tmp_path_factory):
  """A stage-1 export of configs/memory_synthetic.py:tiny with random weights, built from the
  export's shapes (no compile); non-zero noise strengths, so the noise reaches F_M."""
  architecture = memory_synthetic.get_config("tiny").model
  rng = np.random.default_rng(0)

  def value(path, leaf):
    name = jax.tree_util.keystr(path)
    if "noise_strength" in name:
      return np.full(leaf.shape, 0.1, np.float32)
    if "affine" in name and "bias" in name:
      return np.ones(leaf.shape, np.float32)  # Styles start unmodulated, as at init.
    return rng.standard_normal(leaf.shape).astype(np.float32)

  tree = jax.tree_util.tree_map_with_path(value, memory_lib.abstract_memory(architecture))
  path = str(tmp_path_factory.mktemp("stage1") / "memory")
  return memory_lib.export_memory(path, params=tree["params"], w_avg=tree["w_avg"],
                                  model_config=architecture, step=7)


def _config(data_dir, memory_path, ablation="gmsrm_cicm", steps=2):
  config = gmsrm_config.get_config(f"tiny,{ablation}")
  config.data.data_dir = data_dir
  config.model.memory.path = memory_path
  config.train.num_steps = steps
  config.train.checkpoint_every = 1
  config.train.log_every = 1
  return config


@pytest.fixture(scope="module")
def trained(tiny_data_dir, memory_dir, tmp_path_factory):
  """The flagship (GM-SRM + CICM) through the real loop on 8 devices: 2 steps, checkpointed."""
  config = _config(tiny_data_dir, memory_dir)
  workdir = str(tmp_path_factory.mktemp("gmsrm_cicm"))
  return config, workdir, loop.train_and_evaluate(config, workdir)


def _restore(config, workdir, step=None):
  return loop.restore_run(config, workdir, parallel.make_mesh(), step=step)


def test_frozen_memory_is_carried_bit_identical_and_only_adapters_train(trained, memory_dir):
  config, workdir, state = trained
  exported = memory_lib.load_memory(memory_dir)
  expected = _paths({"synthesis": exported.synthesis_params, "w_avg": exported.w_avg})
  frozen = _paths(state.frozen["backbone"]["generative_memory"])
  assert frozen.keys() == expected.keys()
  for name, value in expected.items():
    np.testing.assert_array_equal(frozen[name], value, err_msg=name)
  # The checkpoint carries it too, and restores it bit-identically.
  _, restored, _ = _restore(config, workdir)
  for name, value in _paths(restored.frozen).items():
    np.testing.assert_array_equal(value, _paths(state.frozen)[name], err_msg=name)

  # Nothing trained or averaged refers to a frozen weight: params, Adam moments, EMA.
  for tree in (state.g_params, state.ema_params, state.g_opt_state):
    assert not [p for p in _paths(tree)
                if "generative_memory" in p and memory_lib.ADAPTER_NAME not in p]
  # The adapters (F_E into the memory, DESIGN M2) are trained: step 1 -> step 2 moves them.
  _, step1, _ = _restore(config, workdir, step=1)
  adapters = lambda s: {p: v for p, v in _paths(s.g_params).items()
                        if memory_lib.ADAPTER_NAME in p}
  assert adapters(state) and any(not np.array_equal(v, adapters(step1)[p])
                                 for p, v in adapters(state).items())


def test_gradients_never_reach_the_frozen_memory(trained):
  """jax.grad of the generator loss is taken w.r.t. g_params only; its tree has no frozen
  leaf, and the frozen leaves are not an input of the differentiated function."""
  config, workdir, _ = trained
  components, state, _ = _restore(config, workdir)
  batch = next(pipeline.create_train_iterator(config, start_step=0))

  def loss(g_params):
    variables = step_lib.generator_variables(g_params, state.g_state, state.frozen)
    prediction, aux, _, _ = step_lib.generator_forward(components, variables, batch["image"],
                                                       batch["mask"], train=True,
                                                       rng=jax.random.key(0))
    return np.float32(0) + jax.numpy.mean(prediction) + aux["kl"]

  grads = jax.jit(jax.grad(loss))(state.g_params)
  assert jax.tree.structure(grads) == jax.tree.structure(state.g_params)
  assert set(_paths(grads)).isdisjoint(
      f"backbone/{p}" for p in _paths(state.frozen["backbone"]))


def test_resume_is_identical_to_an_uninterrupted_run(trained, tmp_path):
  config, workdir, state = trained
  resumed_dir = str(tmp_path / "resumed")
  shutil.copytree(workdir, resumed_dir)
  shutil.rmtree(os.path.join(checkpoint.checkpoint_dir(resumed_dir), "2"))
  resumed = loop.train_and_evaluate(config, resumed_dir)
  assert_close(jax.device_get(resumed), jax.device_get(state), "resumed vs uninterrupted",
               relative=1e-6, pointwise=1e-6)


def test_one_and_eight_devices_agree_to_float64_rounding(trained):
  """One GM-SRM + CICM step (memory, CICM memory, params, Adam, D) in float64."""
  config, workdir, _ = trained
  components, state, _ = _restore(config, workdir, step=1)
  step_fn = functools.partial(tasks.get(config).train_step, components, config)
  batch = next(pipeline.create_train_iterator(config, start_step=1))
  mesh = parallel.make_mesh()
  with jax.enable_x64(True):
    to_f64 = lambda tree: jax.tree.map(
        lambda x: np.asarray(x, np.float64) if np.asarray(x).dtype == np.float32 else x, tree)
    state, batch = to_f64(jax.device_get(state)), to_f64(batch)
    one, _ = jax.jit(step_fn)(state, batch)
    eight, _ = jax.jit(step_fn, out_shardings=(parallel.replicated(mesh), None))(
        jax.device_put(state, parallel.replicated(mesh)), parallel.global_batch(batch, mesh))
    one, eight = jax.device_get((one, eight))
  assert jax.tree.leaves(one.g_params)[0].dtype == np.float64
  assert_close(one, eight, "float64, 1 vs 8 devices", relative=1e-12, pointwise=0.0,
               absolute=1e-30)


def test_evaluate_and_export_carry_the_frozen_memory(trained, memory_dir, tmp_path):
  config, workdir, _ = trained
  results = evaluation.evaluate(config, workdir)
  assert results["step"] == 2
  for column in results["results"].values():
    assert np.isfinite(column["psnr"])

  components, state, _ = _restore(config, workdir)
  out_dir = export_lib.export(config, workdir, str(tmp_path / "export"), platforms=("cpu",))
  model = export_lib.load(out_dir)
  exported_memory = _paths(memory_lib.load_memory(memory_dir).synthesis_params)
  in_export = _paths(model.variables["params"]["backbone"]["generative_memory"]["synthesis"])
  for name, value in exported_memory.items():
    np.testing.assert_array_equal(in_export[name], value, err_msg=name)
  batch = next(iter(pipeline.create_eval_iterator(config, mask_spec=("bin", "50-60"),
                                                  num_images=8)))
  expected = jax.jit(functools.partial(step_lib.predict, components))(
      step_lib.inference_variables(config, state), batch["image"], batch["mask"])
  np.testing.assert_allclose(export_lib.load_serving(out_dir)(batch["image"], batch["mask"]),
                             expected, atol=1e-5)


# Table IV's rows through the loop (CI time budget: each switch is run on and off once).
# Base is the base network (tests/test_end_to_end.py, tests/test_train_step.py); the flagship
# fixture above runs eq. 7 and eq. 8 on (GM-SRM, plus CICM); GM-BM runs both off; GM-CSV is
# eq. 8 on and eq. 7 off, each covered in the loop by one of those two and per equation in
# tests/test_gmsrm_model.py.
def test_gm_bm_trains_through_the_loop_without_eq_7_and_8(tiny_data_dir, memory_dir, tmp_path,
                                                          trained):
  config = _config(tiny_data_dir, memory_dir, "gm_bm", steps=1)
  state = loop.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 1 and jax.tree.leaves(state.frozen)
  for run in (state, trained[2]):
    progressive = any("query_conv_1" in p for p in _paths(run.g_params))  # Eq. 7's queries.
    noise_heads = any("noise_fc_" in p for p in _paths(run.g_params))  # Eq. 8: mu, sigma.
    assert progressive == noise_heads == (run is trained[2])


def test_missing_memory_fails_before_initialisation_with_the_stage1_commands(
    tiny_data_dir, tmp_path, monkeypatch):
  # The memory is read before the state is built: initialising would be a wasted compile.
  monkeypatch.setattr(parallel, "create_sharded", lambda *args: pytest.fail("initialised"))
  for path in ("", str(tmp_path / "nowhere")):
    config = _config(tiny_data_dir, path, "gm_srm", steps=1)
    with pytest.raises(FileNotFoundError, match="memory_pretraining") as error:
      loop.train_and_evaluate(config, str(tmp_path / "run"))
    assert "model.memory.path" in str(error.value)


def test_mismatched_memory_names_the_field(tiny_data_dir, memory_dir, tmp_path):
  config = _config(tiny_data_dir, memory_dir, "gm_srm", steps=1)
  config.model.memory.architecture.channel_max = 64
  with pytest.raises(memory_lib.MemoryMismatchError, match="model.channel_max"):
    loop.train_and_evaluate(config, str(tmp_path))


def test_perceptual_term_needs_converted_vgg19_weights(tiny_data_dir, memory_dir, tmp_path):
  config = _config(tiny_data_dir, memory_dir, "gm_srm", steps=1)
  config.loss.perceptual_weight = 0.1
  config.loss.vgg19_weights = str(tmp_path / "vgg19.npz")
  with pytest.raises(weights_lib.WeightsError, match="python -m gmsrm_jax.weights convert"):
    loop.train_and_evaluate(config, str(tmp_path / "run"))


def test_checkpoints_written_before_the_frozen_field_still_restore(tmp_path):
  """A run checkpointed before TrainState.frozen existed (no model had frozen params then)
  restores into today's state, with frozen = {} and every other leaf as saved."""
  base = _config("", "", "base", steps=1)
  task = tasks.get(base)
  abstract = loop.abstract_train_state(base, task, task.create_components(base),
                                       parallel.make_mesh())[1]
  old_state = jax.tree.map(lambda x: np.full(x.shape, 3, x.dtype), abstract)
  old_layout = {f: getattr(old_state, f) for f in
                ("step", "g_params", "d_params", "g_opt_state", "d_opt_state", "ema_params",
                 "g_state", "d_state", "rng")}  # The fields before issue #9.
  manager = checkpoint.create_manager(str(tmp_path))
  checkpoint.save(manager, 5, old_layout, base)
  manager.wait_until_finished()
  restored = checkpoint.restore(manager, abstract)
  assert restored.step == 5
  restored = restored.state
  assert restored.frozen == {}
  assert _paths(restored).keys() == _paths(old_state).keys()
  for name, value in _paths(restored).items():
    np.testing.assert_array_equal(value, _paths(old_state)[name], err_msg=name)
