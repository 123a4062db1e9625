"""Why the demo models lost to classical inpainting: controlled runs on a validation split.

  python benchmarks/study_quality.py --workdir=runs/quality_study \
      --variants=r0,r1,r2,r3,r4,r5,r6,r8,r7 [--seeds=0,1,2] [--parallel=2] [--data_dir=...]

Each variant is configs/<config> (default configs/base.py:demo) with the overrides in
VARIANTS, trained with one seed on train[:3744] of synthetic_scenes/64 and evaluated on the
256 held-out images train[3744:] (never the test split) by benchmarks/bench_quality.py: EMA
and online weights beside Telea, Navier-Stokes and biharmonic on the same images and masks.
Runs go to <workdir>/<variant>_seed<k>; each writes quality.json, and <workdir>/summary.md
collects PSNR / SSIM per setting and each variant's margin over the best classical method.
Finished runs are not retrained. ~8 min per run on 2 idle cores (two in parallel ~2x each).
docs/QUALITY.md records the results.
"""

import json
import os
import subprocess
import sys

from absl import app
from absl import flags

ROOT = __file__.rsplit("/benchmarks/", 1)[0]
sys.path.insert(0, ROOT)
from gmsrm_jax import baselines  # pylint: disable=g-import-not-at-top

# The validation protocol: the last 256 training images are held out for choosing settings.
SPLITS = ("--config.data.train_split=train[:3744]", "--config.data.eval_split=train[3744:]")
# The demo before issue #12 (configs/base.py:demo without short_run_recipe, 1,500 steps).
_OLD_DEMO = ["--config.model.hole_fill=zero", "--config.model.residual_output=False",
             "--config.masks.ratio_sampling=natural", "--config.optim.learning_rate=2e-4",
             "--config.optim.d_learning_rate=2e-4", "--config.optim.schedule=constant",
             "--config.optim.warmup_steps=0", "--config.loss.adv_weight=0.01",
             "--config.train.ema_warmup=False", "--config.train.num_steps=1500"]
_RECIPE_1500 = ["--config.train.num_steps=1500"]  # short_run_recipe at r6's budget.
# Variant -> overrides of the config (docs/QUALITY.md's rows; the demo itself when empty).
VARIANTS = {
    "r0": _OLD_DEMO,
    "r1": _OLD_DEMO + ["--config.optim.learning_rate=1e-3", "--config.optim.d_learning_rate=1e-3"],
    "r2": _OLD_DEMO + ["--config.model.output_skip=False"],
    "r3": _OLD_DEMO + ["--config.optim.learning_rate=2e-3", "--config.optim.d_learning_rate=2e-3",
                       "--config.optim.schedule=cosine", "--config.optim.warmup_steps=100",
                       "--config.masks.ratio_sampling=overlay", "--config.train.ema_warmup=True"],
    "r4": _RECIPE_1500 + ["--config.model.fill_iterations=0", "--config.loss.adv_weight=0.01"],
    "r5": _RECIPE_1500 + ["--config.model.fill_iterations=8", "--config.loss.adv_weight=0.01"],
    "r6": _RECIPE_1500,
    "r8": _RECIPE_1500 + ["--config.loss.adv_weight=0.01"],
    "r7": [],  # The base demo as it is: short_run_recipe, 3,000 steps.
}

_WORKDIR = flags.DEFINE_string("workdir", "runs/quality_study", "Where the runs go.")
_CONFIG = flags.DEFINE_string("config", "configs/base.py:demo", "The config the variants edit.")
_VARIANTS = flags.DEFINE_list("variants", list(VARIANTS), "Variants to run, in order.")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Training seeds (test masks stay those of seed 0).")
_PARALLEL = flags.DEFINE_integer("parallel", 2, "Runs trained at once.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "TFDS data_dir ('' -> the TFDS default).")


def _commands(variant: str, seed: str, run_dir: str) -> list[list[str]]:
  common = [f"--config={_CONFIG.value}", f"--workdir={run_dir}", *SPLITS,
            f"--config.data.data_dir={_DATA_DIR.value}", *VARIANTS[variant]]
  train = [sys.executable, os.path.join(ROOT, "train.py"), *common, f"--config.seed={seed}",
           "--config.train.sample_every=100000", "--config.train.checkpoint_every=100000"]
  # Every run is measured on the same test masks (config.eval.mask_seed, whatever the seed).
  quality = [sys.executable, os.path.join(ROOT, "benchmarks", "bench_quality.py"), *common,
             f"--json={os.path.join(run_dir, 'quality.json')}"]
  return [train, quality]


def _run_all(jobs: list[tuple[str, list[list[str]]]]) -> None:
  """Runs each job's commands in order, `--parallel` jobs at a time; logs beside each run."""
  pending, running = list(jobs), []
  while pending or running:
    while pending and len(running) < _PARALLEL.value:
      run_dir, commands = pending.pop(0)
      os.makedirs(run_dir, exist_ok=True)
      script = " && ".join(subprocess.list2cmdline(c) for c in commands)
      log = open(os.path.join(run_dir, "study.log"), "a")
      running.append((run_dir, subprocess.Popen(script, shell=True, stdout=log,
                                                 stderr=subprocess.STDOUT, cwd=ROOT)))
    run_dir, process = running.pop(0)
    if process.wait() != 0:
      print(f"FAILED: {run_dir} (see {run_dir}/study.log)", flush=True)
    else:
      print(f"done: {run_dir}", flush=True)


def summary(workdir: str, names: list[str]) -> list[str]:
  """Markdown: per run, the online and EMA weights' PSNR / SSIM per setting, and the margin of
  the better of the two over the best classical method."""
  lines, classical_row = [], None
  for name in names:
    path = os.path.join(workdir, name, "quality.json")
    if not os.path.exists(path):
      continue
    rows = json.load(open(path))["rows"]
    columns = list(next(iter(rows.values())))
    if not lines:
      lines = ["| run | weights | " + " | ".join(columns) + " |",
               "|---|---|" + "---|" * len(columns)]
    classical = [rows[baselines.DISPLAY_NAMES[m]] for m in baselines.METHODS]
    for label in ("online", "ema"):
      results = rows[f"model ({label} weights)"]
      lines.append(f"| {name} | {label} | " + " | ".join(
          f"{results[c]['psnr']:.2f} / {results[c]['ssim']:.3f} "
          f"({results[c]['psnr'] - max(r[c]['psnr'] for r in classical):+.2f} dB)"
          for c in columns) + " |")
    classical_row = classical_row or [
        f"| {baselines.DISPLAY_NAMES[m]} | — | " + " | ".join(
            f"{rows[baselines.DISPLAY_NAMES[m]][c]['psnr']:.2f} / "
            f"{rows[baselines.DISPLAY_NAMES[m]][c]['ssim']:.3f}" for c in columns) + " |"
        for m in baselines.METHODS]
  return lines + (classical_row or [])


def main(argv):
  del argv
  workdir = os.path.abspath(_WORKDIR.value)
  unknown = [v for v in _VARIANTS.value if v not in VARIANTS]
  if unknown:
    raise app.UsageError(f"Unknown variants {unknown}; known: {sorted(VARIANTS)}.")
  names, jobs = [], []
  for variant in _VARIANTS.value:
    for seed in _SEEDS.value:
      name = f"{variant}_seed{seed}"
      names.append(name)
      run_dir = os.path.join(workdir, name)
      if not os.path.exists(os.path.join(run_dir, "quality.json")):
        jobs.append((run_dir, _commands(variant, seed, run_dir)))
  _run_all(jobs)
  lines = ["Validation split train[3744:], PSNR / SSIM (margin over the best classical "
           "method):", "", *summary(workdir, names)]
  with open(os.path.join(workdir, "summary.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
