"""The real loop on the tiny config over 8 virtual devices: train -> checkpoint -> stop ->
resume -> identical state to an uninterrupted run -> evaluate."""

import functools
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import tiny_run
from gmsrm_jax import evaluation
from gmsrm_jax import export as export_lib
from gmsrm_jax.data import pipeline
from gmsrm_jax.train import checkpoint
from gmsrm_jax.train import loop
from gmsrm_jax.train import step as step_lib
from gmsrm_jax.train import tasks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _assert_same_state(a, b):
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(jax.device_get(a))[0],
                          jax.tree.leaves(jax.device_get(b))):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(name="uninterrupted")
def _uninterrupted(finished_tiny_run):
  return finished_tiny_run


def test_resume_matches_uninterrupted_run_then_evaluate(tiny_data_dir, tmp_path, uninterrupted):
  assert jax.device_count() == 8
  _, full = uninterrupted
  workdir = str(tmp_path)
  first = loop.train_and_evaluate(tiny_run.config(tiny_data_dir, 2), workdir)
  assert int(first.step) == 2
  del first  # The "killed" run is gone; only its checkpoint remains.
  resumed = loop.train_and_evaluate(tiny_run.config(tiny_data_dir, 4), workdir)
  assert int(resumed.step) == 4
  _assert_same_state(full, resumed)

  out = evaluation.evaluate(tiny_run.config(tiny_data_dir, 4), workdir)
  assert out["step"] == 4
  assert list(out["results"]) == ["20-30%", "50-60%", "center 25%"]
  for column in out["results"].values():
    assert column["images"] == 8
    for key in ("psnr", "ssim", "ncc", "lmse", "l1"):
      assert np.isfinite(column[key]), key
  eval_dir = os.path.join(workdir, "eval")
  with open(os.path.join(eval_dir, "metrics.json")) as f:
    assert json.load(f)["results"] == out["results"]
  table = open(os.path.join(eval_dir, "metrics.md")).read()
  assert "| PSNR ↑ |" in table and "center 25%" in table
  assert os.path.exists(os.path.join(eval_dir, "metrics.csv"))
  assert os.path.exists(os.path.join(eval_dir, "samples_center_25.png"))
  assert os.path.exists(os.path.join(workdir, "samples", "step_00000004.png"))


def test_restore_into_a_different_model_is_a_clear_error(tiny_data_dir, uninterrupted):
  workdir, _ = uninterrupted
  config = tiny_run.config(tiny_data_dir, 6)
  config.model.encoder_channels = (8, 24)
  with pytest.raises(checkpoint.CheckpointMismatchError, match="encoder/block_1"):
    loop.train_and_evaluate(config, workdir)


def test_evaluate_without_checkpoint_explains(tiny_data_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match="Train first"):
    evaluation.evaluate(tiny_run.config(tiny_data_dir, 1), str(tmp_path))


def test_command_line_rejects_unknown_config_keys(tiny_data_dir, tmp_path):
  result = subprocess.run(
      [sys.executable, "train.py", "--config=configs/base.py:tiny", f"--workdir={tmp_path}",
       f"--config.data.data_dir={tiny_data_dir}", "--config.train.no_such_key=3"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert "--config.train.no_such_key: the config has no field" in result.stderr


def test_export_command_serves_the_ema_generator(tiny_data_dir, tmp_path, uninterrupted):
  """export.py on the finished run (default platforms cpu, cuda, tpu): the served completion
  is the EMA generator's composited output, as evaluation scores it."""
  workdir, state = uninterrupted
  out_dir = str(tmp_path / "export")
  subprocess.run([sys.executable, "export.py", "--config=configs/base.py:tiny",
                  f"--workdir={workdir}", f"--config.data.data_dir={tiny_data_dir}",
                  f"--output={out_dir}"], cwd=REPO, check=True, capture_output=True,
                 timeout=300)
  with open(os.path.join(out_dir, "manifest.json")) as f:
    manifest = json.load(f)
  assert manifest["step"] == 4 and manifest["params"] == "ema"
  assert manifest["platforms"] == ["cpu", "cuda", "tpu"]
  config = tiny_run.config(tiny_data_dir, 4)
  batch = next(iter(pipeline.create_eval_iterator(config, mask_spec=("bin", "20-30"),
                                                  num_images=4)))
  predict = jax.jit(functools.partial(step_lib.predict,
                                      tasks.get(config).create_components(config)))
  expected = predict({"params": state.ema_params, **state.g_state}, batch["image"],
                     batch["mask"])
  served = export_lib.load_serving(out_dir)(batch["image"], batch["mask"])
  np.testing.assert_allclose(served, expected, atol=1e-5)
  assert not np.allclose(served, predict({"params": state.g_params, **state.g_state},
                                         batch["image"], batch["mask"]), atol=1e-5)
