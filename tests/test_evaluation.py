"""evaluate(): LPIPS/FID per setting, unavailable metrics, and the paper table layouts.

A checkpoint of the tiny model is written once; evaluation then runs without weights (LPIPS and FID
must be reported unavailable, never as numbers) and with random weights in the project format
(FID at image_size 75, the smallest the Inception accepts; the networks themselves are checked
against numpy references in tests/test_features.py).
"""

import csv
import json
import os

from flax import traverse_util
import jax
import numpy as np
from PIL import Image
import pytest

from configs import base as base_config
from gmsrm_jax import baselines
from gmsrm_jax import evaluation
from gmsrm_jax import metrics
from gmsrm_jax import visualize
from gmsrm_jax.data import preprocess
from gmsrm_jax import weights
from gmsrm_jax.data import pipeline
from gmsrm_jax.features import fid
from gmsrm_jax.features import inception
from gmsrm_jax.train import checkpoint
from gmsrm_jax.train import loop
from gmsrm_jax.train import parallel
from gmsrm_jax.train import tasks


def _config(data_dir, **eval_overrides):
  config = base_config.get_config("tiny")
  config.data.data_dir = data_dir
  config.eval.num_images = 6  # Not a multiple of the batch: padded rows must not count.
  for key, value in eval_overrides.items():
    config.eval[key] = value
  return config


def _random_weights(model, path, seed):
  """A project-format file for `model` with random values (the plumbing, not the numbers)."""
  flat = traverse_util.flatten_dict(weights.random_params(model, seed), sep="/")
  weights.save(model, flat, path)
  return path


@pytest.fixture(scope="module")
def checkpointed(tiny_data_dir, tmp_path_factory):
  """A checkpoint of the freshly initialised tiny model (step 0): evaluation needs a
  checkpoint, not a good model, and this skips compiling the train step."""
  workdir = str(tmp_path_factory.mktemp("eval_run"))
  config = _config(tiny_data_dir)
  task = tasks.get(config)
  manager = checkpoint.create_manager(workdir)
  state = loop.restore_or_init(config, task, task.create_components(config),
                               parallel.make_mesh(), manager)
  checkpoint.save(manager, 0, state, config, force=True)
  manager.wait_until_finished()
  return workdir


def test_without_weights_lpips_and_fid_are_unavailable(tiny_data_dir, checkpointed):
  out = evaluation.evaluate(_config(tiny_data_dir), checkpointed)
  assert set(out["unavailable"]) == {"lpips", "fid"}
  assert "--config.eval.lpips_weights" in out["unavailable"]["lpips"]
  assert "convert --model=inception_fid" in out["unavailable"]["fid"]
  for column in out["results"].values():
    assert column["images"] == 6
    assert column["lpips"] is None and column["fid"] is None
    assert np.isfinite(column["psnr"])
  table = open(os.path.join(checkpointed, "eval", "metrics.md")).read()
  assert "| LPIPS ↓ | n/a | n/a | n/a |" in table
  assert "- FID: unavailable, no FID Inception weights" in table
  rows = {row[0]: row[1:] for row in csv.reader(open(os.path.join(checkpointed, "eval",
                                                                   "metrics.csv")))}
  assert rows["LPIPS"] == ["", "", ""]  # Empty, not 0.


def test_broken_weights_path_is_an_error(tiny_data_dir, checkpointed, tmp_path):
  config = _config(tiny_data_dir, lpips_weights=str(tmp_path / "missing.npz"))
  with pytest.raises(weights.WeightsError, match="convert --model=lpips_alex"):
    evaluation.evaluate(config, checkpointed)
  with pytest.raises(ValueError, match="Unknown config.eval.tables entry 'table9'"):
    evaluation.evaluate(_config(tiny_data_dir, tables=("table9",)), checkpointed)


def test_lpips_fid_and_paper_tables(tiny_data_dir, checkpointed, tmp_path):
  config = _config(
      tiny_data_dir, tables=("gmsrm_table4", "cicm"), method_name="Base model",
      lpips_weights=_random_weights("lpips_alex", str(tmp_path / "lpips.npz"), 0),
      fid_weights=_random_weights("inception_fid", str(tmp_path / "fid.npz"), 1),
      fid_image_size=inception.MIN_IMAGE_SIZE)
  out = evaluation.evaluate(config, checkpointed)
  # The tiny config's settings, then what the two tables add, in table order.
  assert list(out["results"]) == ["20-30%", "50-60%", "center 25%", "center 50%", "0-20%",
                                  "20-40%", "40-60%"]
  assert out["unavailable"] == {}
  for column in out["results"].values():
    assert column["images"] == 6
    assert 0.0 < column["lpips"] < 10.0 and np.isfinite(column["fid"])

  # The real images' statistics: the ground truth of the 6 test images, padding excluded.
  params = weights.load("inception_fid", config.eval.fid_weights)
  images = np.concatenate([b["image"][b["weight"] > 0] for b in pipeline.create_eval_iterator(
      config, mask_spec=("center", 0.25), num_images=6)])
  direct = fid.FeatureStatistics(inception.FEATURE_DIM)
  features = jax.jit(inception.fid_features, static_argnums=2)(params, images,
                                                              inception.MIN_IMAGE_SIZE)
  direct.update(np.asarray(features))
  with np.load(os.path.join(checkpointed, "eval", "fid_real_stats.npz")) as saved:
    assert int(saved["count"]) == 6
    np.testing.assert_allclose(saved["mu"], direct.mean, rtol=1e-4, atol=1e-6)

  eval_dir = os.path.join(checkpointed, "eval")
  table = json.load(open(os.path.join(eval_dir, "table_cicm.json")))
  np.testing.assert_allclose(table["values"]["l1"]["20-40%"],
                             100 * out["results"]["20-40%"]["l1"])  # CICM prints L1 in %.
  assert table["values"]["fid"]["0-20%"] == out["results"]["0-20%"]["fid"]
  header = next(csv.reader(open(os.path.join(eval_dir, "table_cicm.csv"))))
  assert header[:4] == ["Method", "PSNR ↑ 0-20%", "PSNR ↑ 20-40%", "PSNR ↑ 40-60%"]
  assert header[7:10] == ["L1 (%) ↓ 0-20%", "L1 (%) ↓ 20-40%", "L1 (%) ↓ 40-60%"]
  lines = open(out["tables"]["gmsrm_table4"]).read().splitlines()
  assert lines[2] == "| Method | PSNR ↑ | SSIM ↑ | NCC ↑ | LMSE ↓ | LPIPS ↓ |"
  psnr = out["results"]["center 50%"]["psnr"]
  assert lines[4].startswith(f"| Base model | {psnr:.2f} |")
  assert os.path.exists(os.path.join(eval_dir, "samples_0-20.png"))
  assert "- FID: computed on 75x75 Inception inputs" in open(os.path.join(eval_dir,
                                                                      "table_cicm.md")).read()
  assert "FID" not in open(out["tables"]["gmsrm_table4"]).read()  # No FID column, no note.


def _fake_results(lpips_value):
  columns = [column for column, _ in evaluation.mask_settings(
      base_config.get_config().eval)]
  return {c: {"psnr": 20.0 + i, "ssim": 0.5, "ncc": 0.9, "lmse": 0.02, "l1": 0.031,
              "lpips": lpips_value, "fid": None, "images": 10}
          for i, c in enumerate(columns)}


def test_gmsrm_table_layouts():
  # The paper config evaluates GM-SRM's bins and center masks and writes Tables I, II, IV.
  config = base_config.get_config()
  assert config.eval.tables == ("gmsrm_table1", "gmsrm_table2", "gmsrm_table4")
  assert [c for c, _ in evaluation.mask_settings(config.eval)] == [
      "20-30%", "30-40%", "40-50%", "50-60%", "center 25%", "center 50%"]
  header, rows, _ = evaluation.paper_table("gmsrm_table1", _fake_results(0.1234), "GM-SRM")
  assert header == ["Metric", "Method", "20-30%", "30-40%", "40-50%", "50-60%"]
  assert rows[0] == ["PSNR ↑", "GM-SRM", "20.00", "21.00", "22.00", "23.00"]
  assert rows[4] == ["LPIPS ↓", "GM-SRM", "0.123", "0.123", "0.123", "0.123"]
  header, rows, _ = evaluation.paper_table("gmsrm_table2", _fake_results(None), "GM-SRM")
  assert header[2:] == ["25%", "50%"] and rows[0][2:] == ["24.00", "25.00"]
  assert rows[4] == ["LPIPS ↓", "GM-SRM", "n/a", "n/a"]


def test_paper_tables_never_show_unavailable_as_zero(tmp_path):
  results = _fake_results(None)
  path = evaluation.write_paper_table(
      "gmsrm_table1", results, 7, str(tmp_path), method="ours",
      unavailable={"lpips": "no LPIPS weights", "fid": "no FID weights"})
  text = open(path).read()
  assert "| LPIPS ↓ | ours | n/a | n/a | n/a | n/a |" in text
  assert "- LPIPS: unavailable, no LPIPS weights." in text
  assert "FID" not in text  # Table I has no FID column, so no note either.
  saved = json.load(open(tmp_path / "table_gmsrm_table1.json"))
  assert saved["values"]["lpips"]["20-30%"] is None
  assert saved["unavailable"] == {"lpips": "no LPIPS weights"}


def test_classical_baselines_on_the_same_images_and_masks(tiny_data_dir, checkpointed):
  methods = ("telea", "navier_stokes", "biharmonic")
  config = _config(tiny_data_dir, baselines=methods, tables=("gmsrm_table2",),
                   method_name="Base model")
  out = evaluation.evaluate(config, checkpointed)
  # Recomputed by hand: the pipeline's test images and masks, each method, PSNR of real rows.
  spec = ("center", 0.5)
  batches = list(pipeline.create_eval_iterator(config, mask_spec=spec, num_images=6))
  for method in methods:
    psnrs = []
    for batch in batches:
      completed = baselines.inpaint(method, batch["image"], batch["mask"])
      known = np.broadcast_to(batch["mask"] == 0, completed.shape)
      assert np.array_equal(completed[known], batch["image"][known])  # Composited.
      assert not np.array_equal(completed, batch["image"])  # Something was filled in.
      real = batch["weight"] > 0
      psnrs.append(np.asarray(metrics.psnr((completed[real] + 1) / 2,
                                           (batch["image"][real] + 1) / 2)))
    result = out["baselines"][method]["center 50%"]
    assert result["images"] == 6 and result["lpips"] is None
    np.testing.assert_allclose(result["psnr"], np.mean(np.concatenate(psnrs)), rtol=1e-5)
  eval_dir = os.path.join(checkpointed, "eval")
  text = open(os.path.join(eval_dir, "metrics.md")).read()
  assert "| biharmonic (scikit-image) |" in text and "model − best classical, PSNR" in text
  rows = {row[0]: row[1:] for row in csv.reader(open(os.path.join(eval_dir, "metrics.csv")))}
  assert float(rows["PSNR [telea]"][0]) == pytest.approx(out["baselines"]["telea"]["20-30%"]
                                                         ["psnr"], rel=1e-5)
  # Paper tables: every metric's rows, the model first, then each classical method.
  lines = open(out["tables"]["gmsrm_table2"]).read().splitlines()
  assert [line.split(" | ")[1] for line in lines[4:8]] == [
      "Base model", "Telea (OpenCV)", "Navier-Stokes (OpenCV)", "biharmonic (scikit-image)"]
  # Sample grid columns: masked input, model, the three methods, ground truth (32-px tiles
  # are shown enlarged 2x; each column is a tile and a 2-px gap).
  grid = np.asarray(Image.open(os.path.join(eval_dir, "samples_center_50.png")))
  assert grid.shape[1] == 6 * (2 * config.data.crop_size + 2)
  truth = visualize.grid_tile(grid, 0, 5, config.data.crop_size)
  np.testing.assert_array_equal(truth, preprocess.to_uint8(batches[0]["image"][0]))
  with pytest.raises(ValueError, match="Unknown config.eval.baselines entries \\['opencv'\\]"):
    evaluation.evaluate(_config(tiny_data_dir, baselines=("opencv",)), checkpointed)


def test_per_image_scores_average_to_the_table_and_count_exact_fills(tiny_data_dir,
                                                                      checkpointed):
  from benchmarks import per_image_quality  # pylint: disable=g-import-not-at-top
  config = _config(tiny_data_dir, baselines=("biharmonic",))
  out = evaluation.evaluate(config, checkpointed)
  scores = per_image_quality.per_image_scores(config, checkpointed, ["20-30%"])
  assert list(scores) == ["20-30%"]
  assert list(scores["20-30%"]) == ["model", "biharmonic (scikit-image)"]  # No prior here.
  for metric in ("psnr", "ssim"):
    model, classical = (scores["20-30%"][name][metric]
                        for name in ("model", "biharmonic (scikit-image)"))
    assert len(model) == len(classical) == 6  # Padding rows are not images.
    np.testing.assert_allclose(np.mean(model), out["results"]["20-30%"][metric], rtol=1e-5)
    np.testing.assert_allclose(np.mean(classical),
                               out["baselines"]["biharmonic"]["20-30%"][metric], rtol=1e-5)
  rows = {name: row["psnr"] for name, row in scores["20-30%"].items()}
  # One exact fill (here a stand-in 150 dB) is set aside for every method alike.
  rows["biharmonic (scikit-image)"][0] = 150.0
  table = per_image_quality.summary(scores, exact_db=60.0)
  assert table[0] == "20-30% (6 images; 1 completed exactly by some method):"
  model_row = next(line for line in table if line.startswith("| model |"))
  cells = [cell.strip() for cell in model_row.split("|")[1:-1]]
  assert float(cells[4]) == pytest.approx(np.mean(rows["model"][1:]), abs=0.006)
  wins = np.mean(rows["model"] > rows["biharmonic (scikit-image)"])
  assert cells[5] == f"{wins:.0%}"
  assert float(cells[6]) == pytest.approx(np.mean(scores["20-30%"]["model"]["ssim"]), abs=6e-5)
  with pytest.raises(SystemExit, match="not columns"):
    per_image_quality.per_image_scores(config, checkpointed, ["0-20%"])
