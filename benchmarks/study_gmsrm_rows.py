"""Table IV on the synthetic scenes: every GM-SRM row, several seeds, the same test masks.

  python benchmarks/study_gmsrm_rows.py --workdir=runs/gmsrm_study --seeds=0,1,2 \
      --steps=600 [--memory=runs/gmsrm_demo/stage1/memory] [--data_dir=...]

Trains configs/gmsrm.py:demo,<row> for each row and seed (stage 1 once, unless --memory names
an export), evaluates every run's online weights on the same test masks (config.eval.mask_seed,
whatever the training seed), and writes <workdir>/summary.{json,md}: PSNR / SSIM per mask
setting, mean over seeds with the per-seed values. Runs resume, so an interrupted study
continues. Hours of CPU at the defaults; not part of the test suite.
"""

import json
import os
import sys

from absl import app
from absl import flags
import numpy as np
from PIL import Image

sys.path.insert(0, __file__.rsplit("/benchmarks/", 1)[0])
from configs import gmsrm as gmsrm_config  # pylint: disable=g-import-not-at-top
from gmsrm_jax import evaluation  # pylint: disable=g-import-not-at-top
from gmsrm_jax import pipeline  # pylint: disable=g-import-not-at-top
from gmsrm_jax import visualize  # pylint: disable=g-import-not-at-top
from gmsrm_jax.train import loop  # pylint: disable=g-import-not-at-top
from gmsrm_jax.train import memory_pretraining  # pylint: disable=g-import-not-at-top

_WORKDIR = flags.DEFINE_string("workdir", "runs/gmsrm_study", "Where the runs go.")
_ROWS = flags.DEFINE_list("rows", ["base", "gm_bm", "gm_csv", "gm_srm", "gmsrm_cicm"], "Rows.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds.")
_STEPS = flags.DEFINE_integer("steps", 600, "Stage-2 steps per run.")
_MEMORY = flags.DEFINE_string("memory", "", "A stage-1 export to use ('' -> train stage 1).")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "TFDS data_dir ('' -> the TFDS default).")
_VARIANT = flags.DEFINE_string("variant", "demo", "configs/gmsrm.py variant.")


def _config(row: str, seed: int, memory: str):
  config = gmsrm_config.get_config(f"{_VARIANT.value},{row}")
  config.seed = seed
  config.data.data_dir = _DATA_DIR.value
  config.model.memory.path = memory
  config.train.num_steps = _STEPS.value
  config.train.checkpoint_every = config.train.sample_every = _STEPS.value
  # After a few hundred steps an EMA of decay 0.999 is still mostly the initialisation
  # (0.999^600 = 55%): compare the trained weights themselves.
  config.eval.use_ema = False
  return config


def main(argv):
  del argv
  workdir = os.path.abspath(_WORKDIR.value)
  memory = _MEMORY.value
  if not memory:
    stage1 = pipeline.stage1_config(_config("gm_srm", 0, ""))
    stage1_dir = os.path.join(workdir, "stage1")
    loop.train_and_evaluate(stage1, stage1_dir)
    memory = memory_pretraining.export_and_report(stage1, stage1_dir, report_images=64)[
        "memory_dir"]
  results = {}
  for seed in map(int, _SEEDS.value):
    for row in _ROWS.value:
      config = _config(row, seed, memory)
      run_dir = os.path.join(workdir, f"{row}_seed{seed}")
      loop.train_and_evaluate(config, run_dir)
      results.setdefault(row, {})[seed] = evaluation.evaluate(config, run_dir)["results"]
      with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump({"steps": _STEPS.value, "memory": memory, "results": results}, f, indent=2)
  _write_markdown(results, os.path.join(workdir, "summary.md"))
  for setting in ("40-50", "center_50"):
    comparison_grid(workdir, list(results), int(_SEEDS.value[0]), setting,
                    _config("base", 0, memory).data.crop_size)
  print(open(os.path.join(workdir, "summary.md")).read())


def comparison_grid(workdir: str, rows: list[str], seed: int, setting: str, size: int,
                    images: int = 4, pad: int = 2) -> str:
  """<workdir>/rows_<setting>.png: per test image (a line), the masked input, each row's
  output (left to right in `rows` order) and the ground truth, cut from the runs' evaluation
  grids (visualize.inpainting_grid: columns masked, output, truth)."""
  tile = lambda grid, line, column: visualize.grid_tile(grid, line, column, size)
  grids = {row: np.asarray(Image.open(os.path.join(workdir, f"{row}_seed{seed}", "eval",
                                                   f"samples_{setting}.png")).convert("RGB"))
           for row in rows}
  first = grids[rows[0]]
  columns = [lambda line: tile(first, line, 0)]
  columns += [lambda line, row=row: tile(grids[row], line, 1) for row in rows]
  columns += [lambda line: tile(first, line, 2)]
  out = np.full((images * (size + pad), len(columns) * (size + pad), 3), 255, np.uint8)
  for line in range(images):
    for c, column in enumerate(columns):
      out[line * (size + pad):line * (size + pad) + size,
          c * (size + pad):c * (size + pad) + size] = column(line)
  path = os.path.join(workdir, f"rows_{setting}.png")
  Image.fromarray(out).save(path)
  return path


def _write_markdown(results, path):
  rows = list(results)
  columns = list(next(iter(next(iter(results.values())).values())))
  lines = []
  for metric, digits in (("psnr", 2), ("ssim", 3)):
    lines += [f"### {metric.upper()} (mean over seeds; per seed in brackets)", "",
              "| row | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for row in rows:
      cells = []
      for column in columns:
        values = [results[row][seed][column][metric] for seed in sorted(results[row])]
        per_seed = " / ".join(f"{v:.{digits}f}" for v in values)
        cells.append(f"{np.mean(values):.{digits}f} ({per_seed})")
      lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines.append("")
  with open(path, "w") as f:
    f.write("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
