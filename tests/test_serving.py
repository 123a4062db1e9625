"""Runs own their config (export.py and evaluate.py without --config), what evaluation writes
(names of the data, plots, grids) and what the training loop's evaluation writes, the model
card, and serving an export with jax alone at sizes other than the trained one."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
import pytest

from gmsrm_jax import evaluation
from gmsrm_jax import inpaint
from gmsrm_jax import plots
from gmsrm_jax import saved_config
from gmsrm_jax.train import checkpoint
from gmsrm_jax.train import parallel
from gmsrm_jax.train import state as state_lib
from gmsrm_jax.train import step as step_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ENV = {**os.environ, "PYTHONPATH": ROOT}


def _run(*args, timeout=300):
  return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=timeout, env=_ENV)


@pytest.fixture(scope="module")
def evaluated_run(finished_tiny_run, tmp_path_factory):
  """A copy of the finished tiny run, evaluated in-process from its own saved config."""
  workdir = str(tmp_path_factory.mktemp("own_config") / "run")
  shutil.copytree(finished_tiny_run[0], workdir)
  evaluation.evaluate(saved_config.get_config(f":{workdir}"), workdir)
  return workdir


@pytest.fixture(scope="module")
def exported(evaluated_run, tmp_path_factory):
  """export.py from a subprocess with no --config: it must use the run's saved config."""
  out = str(tmp_path_factory.mktemp("export") / "model")
  result = _run("export.py", f"--workdir={evaluated_run}", f"--output={out}",
                "--platforms=cpu")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Config: the one saved with" in result.stderr
  return out


def test_saved_config_is_the_checkpoints(finished_tiny_run):
  stored, step = checkpoint.read_config(finished_tiny_run[0])
  assert step == 4
  assert saved_config.get_config(f"2:{finished_tiny_run[0]}").to_dict() == stored


def test_metrics_files_name_dataset_split_step_and_masks(evaluated_run):
  eval_dir = os.path.join(evaluated_run, "eval")
  with open(os.path.join(eval_dir, "metrics.json")) as f:
    metrics = json.load(f)
  assert (metrics["dataset"], metrics["split"], metrics["step"]) == (
      "synthetic_scenes/tiny", "test", 4)
  assert metrics["masks"].startswith("generated")
  table = open(os.path.join(eval_dir, "metrics.md")).read()
  assert table.startswith("Evaluation of base at step 4 (EMA weights) on synthetic_scenes/tiny, "
                          "split 'test'; masks: generated")
  assert "dataset,synthetic_scenes/tiny" in open(os.path.join(eval_dir, "metrics.csv")).read()


def test_training_loop_evaluation_reaches_tensorboard_with_evaluate_pys_numbers(evaluated_run):
  with open(os.path.join(evaluated_run, "eval", "metrics.json")) as f:
    results = json.load(f)["results"]
  logged = plots.read_scalars(evaluated_run, prefix="eval/")
  assert set(logged) == {f"eval/{column.replace('%', '').replace(' ', '_')}/{metric}"
                         for column in results for metric in ("psnr", "ssim", "ncc", "lmse",
                                                              "l1")}
  steps, psnr = logged["eval/20-30/psnr"]
  assert steps.tolist() == [4]
  np.testing.assert_allclose(psnr[0], results["20-30%"]["psnr"], rtol=1e-5)


def test_evaluation_writes_plots(evaluated_run):
  eval_dir = os.path.join(evaluated_run, "eval")
  metrics = np.asarray(Image.open(os.path.join(eval_dir, "metrics.png")))
  losses = np.asarray(Image.open(os.path.join(eval_dir, "loss_curves.png")))
  assert metrics.shape == (420, 960, 3)  # 5 available metrics: 2 rows of 3 charts.
  assert losses.shape[0] >= 220 and (losses != 255).any(axis=-1).mean() > 0.02


def test_sample_grids_show_each_test_image_once_under_labels(finished_tiny_run, tmp_path):
  workdir, state = finished_tiny_run
  config = saved_config.get_config(f":{workdir}")
  with config.unlocked():  # 2 images in a batch of 8: 6 rows of padding.
    config.eval.num_images, config.eval.mask_bins, config.eval.center_ratios = 2, ("20-30",), ()
  evaluator = evaluation.Evaluator(config, parallel.make_mesh())
  evaluator.run(state_lib.create_components(config),
                step_lib.inference_variables(config, state), samples_dir=str(tmp_path))
  grid = np.asarray(Image.open(tmp_path / "samples_20-30.png"))
  assert grid.shape == (14 + 2 * (64 + 2), 3 * (64 + 2), 3)  # Label row + 2 rows of tiles.
  assert not np.array_equal(grid[14:78], grid[80:144])
  assert (grid[:14] != 255).any()  # The labels.


def test_a_flag_that_changes_the_trained_data_is_an_error(evaluated_run):
  result = _run("evaluate.py", f"--workdir={evaluated_run}",
                "--config.data.builder_config=64")
  assert result.returncode == 1
  assert "data.builder_config: 'tiny' -> '64'" in result.stderr
  assert "--allow_config_change=data.builder_config" in result.stderr


def test_model_card_says_what_the_export_is(exported):
  with open(os.path.join(exported, "model_card.json")) as f:
    card = json.load(f)
  assert card["model_family"] == "base" and card["step"] == 4
  assert card["training_data"]["dataset"] == "synthetic_scenes/tiny"
  assert card["evaluation"]["dataset"] == "synthetic_scenes/tiny"
  assert "multiples of 4" in card["input"]["sizes"]
  text = open(os.path.join(exported, "MODEL_CARD.md")).read()
  assert "# Model card: base (step 4, EMA weights)" in text and "| PSNR |" in text
  with open(os.path.join(exported, "manifest.json")) as f:
    assert {"MODEL_CARD.md", "model_card.json"} <= set(json.load(f)["sha256"])


_SERVE = """
import sys
import numpy as np
from gmsrm_jax import export
serve = export.load_serving(sys.argv[1])
image = np.load(sys.argv[2])
mask = (np.arange(image.shape[2]) % 3 == 0).astype(np.float32)[None, None, :, None]
np.save(sys.argv[3], np.asarray(serve(image, np.broadcast_to(mask, image.shape[:3] + (1,)))))
try:
  serve(image[:, :26], np.ones(image[:, :26].shape[:3] + (1,), np.float32))
except ValueError as error:
  print("ERROR", error)
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow"
                or m.startswith("gmsrm_jax.train") or m.startswith("gmsrm_jax.models"))
print("LOADED", loaded)
"""


def test_serving_needs_neither_tensorflow_nor_the_model_code(exported, tmp_path):
  image = np.random.default_rng(0).uniform(-1, 1, (2, 28, 44, 3)).astype(np.float32)
  np.save(tmp_path / "image.npy", image)
  result = _run("-c", _SERVE, exported, str(tmp_path / "image.npy"), str(tmp_path / "out.npy"))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "LOADED []" in result.stdout
  assert "multiples of 4" in result.stdout  # 26 rows: a clear error, not an XLA one.
  served = np.load(tmp_path / "out.npy")
  # The serialized function at 28x44 (not the trained 32x32) is the model's own completion.
  mask = (np.arange(44) % 3 == 0)
  model = inpaint.Inpainter(inpaint.load_variables(exported), bucket=None)
  expected = model.function(model.variables, image, np.broadcast_to(
      mask.astype(np.float32)[None, None, :, None], (2, 28, 44, 1)), inpaint.jax.random.key(0))
  np.testing.assert_allclose(served, expected, atol=1e-5)
  np.testing.assert_array_equal(served[..., ~mask, :], image[..., ~mask, :])


def test_an_export_with_the_pyramid_prior_serves_its_trained_size(finished_tiny_run, tmp_path):
  """The prior's pyramid depth depends on the image size, so its serialized function takes
  the trained size only; inpaint.load(export) still runs it at any size."""
  from gmsrm_jax import export as export_lib  # pylint: disable=g-import-not-at-top
  workdir, _ = finished_tiny_run
  config = saved_config.get_config(f":{workdir}")
  config.model.hole_fill = "pyramid"  # Same parameters: the prior only changes the input.
  out = export_lib.export(config, workdir, str(tmp_path / "export"), platforms=("cpu",),
                          allow_config_change=["model.hole_fill"])
  size = config.data.crop_size
  manifest = json.load(open(os.path.join(out, "manifest.json")))
  assert manifest["fixed_size"] == size and manifest["stride"] == 4
  serve = export_lib.load_serving(out)
  image = np.zeros((2, size, size, 3), np.float32)
  mask = np.zeros((2, size, size, 1), np.float32)
  mask[:, 8:20, 8:20] = 1
  assert serve(image, mask).shape == image.shape
  with pytest.raises(ValueError, match=f"takes {size}x{size} images"):
    serve(np.zeros((1, 2 * size, size, 3), np.float32), np.zeros((1, 2 * size, size, 1),
                                                                 np.float32))
  photo = np.full((37, 53, 3), 100, np.uint8)
  hole = np.zeros((37, 53), bool)
  hole[10:20, 10:30] = True
  filled = inpaint.load(out)(photo, hole)
  assert filled.shape == photo.shape and np.array_equal(filled[~hole], photo[~hole])
  assert "load_serving): 32x32" in open(os.path.join(out, "MODEL_CARD.md")).read()
