"""Which images decide a setting's mean PSNR: per-image PSNR of a run's model, its input prior
and the classical methods, on the evaluation's own images and masks.

  python benchmarks/per_image_quality.py --workdir=RUN [--settings=0-20%,20-40%]
  # on the validation split a study chose its settings on:
  python benchmarks/per_image_quality.py --workdir=RUN --config.data.eval_split='train[3744:]'

The evaluation tables report the mean of per-image PSNR, as the papers do. Per-image PSNR is
unbounded: a hole that lies on flat colour is completed exactly by the classical methods (to
float rounding, 100+ dB), and one such image moves a 64-image mean by more than a dB. For each
setting this prints, per method: the mean and the median, how many images it completes
"exactly" (above --exact_db), the mean over the images no method completes exactly, and the
share of images on which the model beats every classical method, then the mean SSIM (whether
the network improves on its prior's structure, not only its squared error). The prior row is
the parameter-free fill the network starts from (model.hole_fill = "pyramid"; DESIGN Q6, Q11).
Trains nothing and writes nothing; the config is the run's own (docs/QUALITY.md).
"""

import functools
import sys

from absl import flags

sys.path.insert(0, __file__.rsplit("/benchmarks/", 1)[0])
from gmsrm_jax import cli  # pylint: disable=g-import-not-at-top

_SETTINGS = flags.DEFINE_list("settings", [], "Columns of the evaluation table, e.g. 0-20% or "
                              "'center 25%' (default: all of the run's settings).")
_EXACT_DB = flags.DEFINE_float("exact_db", 60.0, "PSNR above which a completion counts as "
                               "exact (an error of one 8-bit level at every pixel is 48 dB).")


def per_image_scores(config, workdir, settings, allow_config_change=()):
  """{column: {method: {"psnr": [N], "ssim": [N]} per real image}} for the run's model, its
  prior (when it has one) and config.eval.baselines; the columns of evaluation.mask_settings."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from gmsrm_jax import baselines  # pylint: disable=g-import-not-at-top
  from gmsrm_jax import evaluation  # pylint: disable=g-import-not-at-top
  from gmsrm_jax import metrics  # pylint: disable=g-import-not-at-top
  from gmsrm_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from gmsrm_jax.models import base  # pylint: disable=g-import-not-at-top
  from gmsrm_jax.train import loop  # pylint: disable=g-import-not-at-top
  from gmsrm_jax.train import parallel  # pylint: disable=g-import-not-at-top
  from gmsrm_jax.train import step as step_lib  # pylint: disable=g-import-not-at-top

  if jax.process_count() != 1:
    raise SystemExit("per_image_quality.py runs in one process.")
  mask_settings = evaluation.mask_settings(config.eval)
  columns = [column for column, _ in mask_settings]
  unknown = sorted(set(settings) - set(columns))
  if unknown:
    raise SystemExit(f"--settings {unknown} are not columns of this run's evaluation; it has "
                     f"{columns}.")
  mesh = parallel.make_mesh()
  components, state, _ = loop.restore_run(config, workdir, mesh,
                                          allow_config_change=allow_config_change)
  variables = step_lib.inference_variables(config, state)
  methods = {"model": jax.jit(functools.partial(step_lib.predict, components, variables))}
  options = base.input_and_output_options(config.model)
  if options["hole_fill"] == "pyramid":
    def prior(image, mask):  # network_input's prior keeps the known pixels (composited).
      return base.network_input(image, mask, options["hole_fill"], options["fill_iterations"],
                                options["fill_biharmonic_iterations"])[1]
    methods["prior"] = jax.jit(prior)
  for name in config.eval.get("baselines", ()):
    methods[baselines.DISPLAY_NAMES[name]] = functools.partial(baselines.inpaint, name)
  def per_image(output, image):
    output, image = metrics.to_unit(output), metrics.to_unit(image)
    return {"psnr": metrics.psnr(output, image), "ssim": metrics.ssim(output, image)}
  per_image = jax.jit(per_image)

  scores = {}
  for column, mask_spec in mask_settings:
    if settings and column not in settings:
      continue
    rows = {name: {"psnr": [], "ssim": []} for name in methods}
    for batch in pipeline.create_eval_iterator(config, mask_spec=mask_spec,
                                               num_images=config.eval.num_images):
      real = np.asarray(batch["weight"]) > 0  # Padding rows repeat an image.
      for name, complete in methods.items():
        output = complete(batch["image"], batch["mask"])
        for metric, values in per_image(output, batch["image"]).items():
          rows[name][metric].append(np.asarray(values, np.float64)[real])
    scores[column] = {name: {metric: np.concatenate(values) for metric, values in row.items()}
                      for name, row in rows.items()}
  return scores


def summary(scores, exact_db):
  """Markdown lines: one table per setting (see the module docstring)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  lines = []
  for column, by_method in scores.items():
    psnr = {name: row["psnr"] for name, row in by_method.items()}
    classical = [v for name, v in psnr.items() if name not in ("model", "prior")]
    exact = np.any([v > exact_db for v in psnr.values()], axis=0)
    best_classical = np.max(classical, axis=0) if classical else None
    lines += [f"{column} ({len(exact)} images; {int(exact.sum())} completed exactly by some "
              "method):", "",
              f"| method | mean | median | images > {exact_db:g} dB | mean without those "
              f"{int(exact.sum())} | beats every classical method on | mean SSIM |",
              "|---|---|---|---|---|---|---|"]
    for name, values in psnr.items():
      wins = (f"{np.mean(values > best_classical):.0%}"
              if best_classical is not None and name in ("model", "prior") else "")
      lines.append(f"| {name} | {np.mean(values):.2f} | {np.median(values):.2f} | "
                   f"{int(np.sum(values > exact_db))} | {np.mean(values[~exact]):.2f} | "
                   f"{wins} | {np.mean(by_method[name]['ssim']):.4f} |")
    lines.append("")
  return lines


def main(argv):
  del argv
  config, workdir = cli.setup()
  scores = per_image_scores(config, workdir, _SETTINGS.value, cli.ALLOW_CONFIG_CHANGE.value)
  print("\n".join(summary(scores, _EXACT_DB.value)))


if __name__ == "__main__":
  cli.run(main, saved_config=True)
