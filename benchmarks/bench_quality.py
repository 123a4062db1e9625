"""Quality against the classical floor: a trained run vs OpenCV / scikit-image inpainting.

  python benchmarks/bench_quality.py --config=configs/base.py:demo --workdir=runs/demo
  # a validation split held out from train (choose settings here, never on the test split):
  python benchmarks/bench_quality.py --config=configs/base.py:demo --workdir=RUN \
      --config.data.eval_split='train[3744:]'

Trains nothing. Restores the run's checkpoint and completes the evaluation images with the EMA
weights, the online weights, and each classical method (Telea, Navier-Stokes, biharmonic) on
the same images and the same masks (evaluation.evaluate with config.eval.baselines), then
prints PSNR / SSIM per mask setting and each model's margin over the best classical method.
Files go to <workdir>/quality/{ema,online}/ (metrics, sample grids with a column per method),
never over the run's own eval/.
"""

import json
import os
import sys

from absl import flags

sys.path.insert(0, __file__.rsplit("/benchmarks/", 1)[0])
from gmsrm_jax import baselines  # pylint: disable=g-import-not-at-top
from gmsrm_jax import cli  # pylint: disable=g-import-not-at-top
from gmsrm_jax import evaluation  # pylint: disable=g-import-not-at-top

_JSON = flags.DEFINE_string("json", "", "Also write the table's numbers to this JSON file.")


def quality_table(rows: dict[str, dict[str, dict]], baseline_names) -> list[str]:
  """Markdown: one row per method (PSNR / SSIM per setting), then each model's PSNR and SSIM
  margins over the best classical method at that setting."""
  columns = list(next(iter(rows.values())))
  lines = ["| method | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
  for label, results in rows.items():
    lines.append(f"| {label} | " + " | ".join(
        f"{results[c]['psnr']:.2f} / {results[c]['ssim']:.3f}" for c in columns) + " |")
  classical = [rows[baselines.DISPLAY_NAMES[m]] for m in baseline_names]
  for label, results in rows.items():
    if label.startswith("model"):
      lines.append(f"| {label} − best classical | " + " | ".join(
          f"{results[c]['psnr'] - max(r[c]['psnr'] for r in classical):+.2f} / "
          f"{results[c]['ssim'] - max(r[c]['ssim'] for r in classical):+.3f}"
          for c in columns) + " |")
  return lines


def main(argv):
  del argv
  config, workdir = cli.setup()
  names = tuple(config.eval.baselines) or tuple(baselines.METHODS)
  rows, step = {}, None
  for use_ema, label in ((True, "ema"), (False, "online")):
    with config.unlocked():
      config.eval.use_ema = use_ema
      # The classical methods do not depend on the weights: computed once, with the EMA pass.
      config.eval.baselines = names if use_ema else ()
    out = evaluation.evaluate(config, workdir, step=cli.STEP.value,
                              allow_config_change=cli.ALLOW_CONFIG_CHANGE.value,
                              out_dir=os.path.join(workdir, "quality", label))
    step = out["step"]
    rows[f"model ({label} weights)"] = out["results"]
    if use_ema:
      classical = {baselines.DISPLAY_NAMES[m]: out["baselines"][m] for m in names}
  rows.update(classical)
  print(f"{config.model.name} at step {step}, {config.data.name}/{config.data.builder_config} "
        f"split {config.data.eval_split!r}, {config.eval.num_images} images per setting, "
        f"PSNR / SSIM (composited):")
  print("\n".join(quality_table(rows, names)))
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump({"step": step, "split": config.data.eval_split, "rows": rows}, f, indent=2)


if __name__ == "__main__":
  cli.run(main)
