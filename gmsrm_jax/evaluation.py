"""Evaluation of a trained checkpoint per hole-ratio bin and for center masks.

For every mask setting (config.eval.mask_bins, config.eval.center_ratios, and whatever the
requested paper tables need) the first `config.eval.num_images` test images are completed,
each with ONE fixed mask per setting, and compared with the ground truth on the composited
output: PSNR, SSIM, NCC, LMSE, L1 (gmsrm_jax/metrics.py), LPIPS v0.1 and FID
(gmsrm_jax/features). LPIPS and FID need converted weights (config.eval.lpips_weights,
config.eval.fid_weights; docs/WEIGHTS.md); without them they are reported as unavailable,
with the reason, never as a number. A weights file that is set but broken is an error.

Writes under `<workdir>/eval/`:
  metrics.{md,csv,json}     every metric x every setting;
  table_<name>.{md,csv,json} one per config.eval.tables entry, in the layout of that paper
                            table (TABLES below; docs/REPRODUCE.md says which command fills it);
  samples_<setting>.png     a sample grid per setting;
  metrics.png               each metric per setting; loss_curves.png, the training losses
                            from the run's TensorBoard events (gmsrm_jax/plots.py);
  fid_real_stats.npz        the test images' Inception statistics ({"mu", "sigma"}, the
                            pytorch-fid format), when FID ran.
"""

import csv
import dataclasses
import functools
import json
import os
from typing import Any, Sequence

from absl import logging
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from gmsrm_jax import baselines as baselines_lib
from gmsrm_jax import config_checks
from gmsrm_jax import metrics as metrics_lib
from gmsrm_jax import plots
from gmsrm_jax import visualize
from gmsrm_jax import weights as weights_lib
from gmsrm_jax.data import pipeline
from gmsrm_jax.features import fid as fid_lib
from gmsrm_jax.features import inception
from gmsrm_jax.features import lpips as lpips_lib
from gmsrm_jax.train import loop
from gmsrm_jax.train import parallel
from gmsrm_jax.train import step as step_lib

# Display name, result key, whether higher is better.
METRICS = (("PSNR", "psnr", True), ("SSIM", "ssim", True), ("NCC", "ncc", True),
           ("LMSE", "lmse", False), ("L1", "l1", False), ("LPIPS", "lpips", False),
           ("FID", "fid", False))
_DISPLAY = {key: (name, higher) for name, key, higher in METRICS}
# Metrics that need pre-trained feature networks (and so may be unavailable).
WEIGHTED_METRICS = ("lpips", "fid")


@dataclasses.dataclass(frozen=True)
class TableLayout:
  """One results table of a paper, for a single method (our row of it).

  Attributes:
    title: what the paper's table reports.
    settings: (column label, mask_spec) in the paper's column order.
    metrics: result keys in the paper's order.
    metric_rows: True -> one row per metric, columns = settings (GM-SRM Tables I and II);
      False -> one row, columns = metric x setting (GM-SRM Table IV, CICM Tables 1-4).
    digits: decimals per metric as the paper prints them.
    scale: per-metric factors (CICM prints L1 in percent).
  """
  title: str
  settings: tuple[tuple[str, tuple[str, Any]], ...]
  metrics: tuple[str, ...]
  metric_rows: bool
  digits: dict[str, int]
  scale: dict[str, float] = dataclasses.field(default_factory=dict)


_GMSRM_METRICS = ("psnr", "ssim", "ncc", "lmse", "lpips")
_GMSRM_DIGITS = {"psnr": 2, "ssim": 3, "ncc": 3, "lmse": 3, "lpips": 3}
TABLES = {
    "gmsrm_table1": TableLayout(
        title="GM-SRM Table I: irregular masks (PConv test masks), by hole ratio",
        settings=tuple((f"{b}%", ("bin", b)) for b in ("20-30", "30-40", "40-50", "50-60")),
        metrics=_GMSRM_METRICS, metric_rows=True, digits=_GMSRM_DIGITS),
    "gmsrm_table2": TableLayout(
        title="GM-SRM Table II: center masks",
        settings=(("25%", ("center", 0.25)), ("50%", ("center", 0.5))),
        metrics=_GMSRM_METRICS, metric_rows=True, digits=_GMSRM_DIGITS),
    "gmsrm_table4": TableLayout(
        title="GM-SRM Table IV: ablation at 50% (center) corruption",
        settings=(("50%", ("center", 0.5)),),
        metrics=_GMSRM_METRICS, metric_rows=False, digits=_GMSRM_DIGITS),
    "cicm": TableLayout(
        title="CICM Tables 1-4: irregular masks by hole ratio (L1 in %)",
        settings=tuple((f"{b}%", ("bin", b)) for b in ("0-20", "20-40", "40-60")),
        metrics=("psnr", "ssim", "l1", "lpips", "fid"), metric_rows=False,
        digits={"psnr": 3, "ssim": 4, "l1": 3, "lpips": 4, "fid": 2}, scale={"l1": 100.0}),
}


def _column(mask_spec: tuple[str, Any]) -> str:
  kind, value = mask_spec
  return f"{value}%" if kind == "bin" else f"center {round(float(value) * 100)}%"


def mask_settings(eval_config: ml_collections.ConfigDict) -> list[tuple[str, tuple]]:
  """(column name, mask_spec) pairs: configured bins, center masks, then what tables add."""
  specs = [("bin", name) for name in eval_config.mask_bins]
  specs += [("center", float(r)) for r in eval_config.center_ratios]
  for table in eval_config.tables:
    if table not in TABLES:
      raise ValueError(f"Unknown config.eval.tables entry {table!r}; known: {sorted(TABLES)}.")
    specs += [spec for _, spec in TABLES[table].settings if spec not in specs]
  return [(_column(spec), spec) for spec in specs]


@dataclasses.dataclass
class FeatureNetworks:
  """Frozen LPIPS / FID parameters on the mesh, or why a metric is unavailable."""
  lpips_params: Any = None
  fid_params: Any = None
  unavailable: dict[str, str] = dataclasses.field(default_factory=dict)


def load_feature_networks(eval_config: ml_collections.ConfigDict, mesh) -> FeatureNetworks:
  """Loads the configured weights (replicated on the mesh); an unset path -> unavailable.

  Raises:
    weights.WeightsError: a path is set but the file is missing or does not fit (the message
      says how to make a good one).
  """
  networks = FeatureNetworks()
  replicated = parallel.replicated(mesh)
  model = f"lpips_{eval_config.lpips_net}"
  if eval_config.lpips_weights:
    networks.lpips_params = jax.device_put(
        weights_lib.load(model, eval_config.lpips_weights), replicated)
  else:
    networks.unavailable["lpips"] = (
        f"no LPIPS weights: set --config.eval.lpips_weights to a file made by "
        f"`{weights_lib.convert_command(model)}` ({weights_lib.DOCS})")
  if eval_config.fid_weights:
    networks.fid_params = jax.device_put(
        weights_lib.load("inception_fid", eval_config.fid_weights), replicated)
  else:
    networks.unavailable["fid"] = (
        f"no FID Inception weights: set --config.eval.fid_weights to a file made by "
        f"`{weights_lib.convert_command('inception_fid')}` ({weights_lib.DOCS})")
  return networks


def output_metrics(lpips_net, fid_size, lpips_params, fid_params, output, batch):
  """Per-metric sums over the real rows of a completed batch, their count, FID features."""
  output_unit = metrics_lib.to_unit(output)
  values = metrics_lib.compute_all(output_unit, metrics_lib.to_unit(batch["image"]))
  if lpips_params is not None:
    # LPIPS takes [-1, 1] images; the output is clipped to that range like the metrics' inputs.
    values["lpips"] = lpips_lib.lpips_distance(
        lpips_params, 2.0 * output_unit - 1.0, batch["image"], lpips_net)
  weight = batch["weight"]
  sums = {k: jnp.sum(jnp.where(weight > 0, v, 0.0)) for k, v in values.items()}
  features = None
  if fid_params is not None:
    features = inception.fid_features(fid_params, 2.0 * output_unit - 1.0, fid_size)
  return sums, jnp.sum(weight), features


def batch_metrics(components, lpips_net, fid_size, variables, lpips_params, fid_params, batch):
  """The model's composited output, then `output_metrics` of it (and the batch's weights)."""
  output = step_lib.predict(components, variables, batch["image"], batch["mask"])
  sums, count, features = output_metrics(lpips_net, fid_size, lpips_params, fid_params,
                                         output, batch)
  return output, sums, count, features, batch["weight"]


class _Totals:
  """One method's running metric sums, FID statistics and first batch over one setting."""

  def __init__(self, with_fid: bool):
    self.sums, self.count, self.first_output = None, 0.0, None
    self.fake_stats = fid_lib.FeatureStatistics(inception.FEATURE_DIM) if with_fid else None

  def add(self, output, sums, count, features, weight) -> None:
    sums = jax.device_get(sums)
    self.sums = sums if self.sums is None else {k: self.sums[k] + sums[k] for k in sums}
    self.count += float(count)
    if self.fake_stats is not None:
      self.fake_stats.update(jax.device_get(features), jax.device_get(weight))
    if self.first_output is None:
      self.first_output = np.asarray(multihost_utils.process_allgather(output, tiled=True))

  def results(self, real_stats, unavailable: dict[str, str]) -> dict[str, Any]:
    column_results = {key: float(self.sums[key] / self.count) if key in self.sums else None
                      for _, key, _ in METRICS}
    if self.fake_stats is not None:
      if self.fake_stats.count < 2:
        unavailable["fid"] = (f"FID needs at least 2 images per setting, have "
                              f"{self.fake_stats.count}")
      else:
        column_results["fid"] = fid_lib.fid_from_statistics(real_stats, self.fake_stats)
    column_results["images"] = int(self.count)
    return column_results


class Evaluator:
  """Every mask setting of `config.eval` on given inference variables (big_vision's evaluator
  shape): evaluate.py runs it once on a restored checkpoint, the training loop every
  `config.train.eval_every` steps, so TensorBoard shows the numbers evaluate.py writes.

  Construction checks the settings and loads the feature networks (errors come before any
  model work); the jitted functions are built on the first `run`.
  """

  def __init__(self, config: ml_collections.ConfigDict, mesh, *, with_baselines: bool = True):
    self.config, self.mesh = config, mesh
    parallel.check_batch_size(config.eval.batch_size, mesh)
    self.settings = mask_settings(config.eval)
    # Configs saved before classical baselines existed have no such field.
    self.baseline_names = tuple(config.eval.get("baselines", ()))
    baselines_lib.check_names(self.baseline_names)
    if not with_baselines:
      self.baseline_names = ()
    self.networks = load_feature_networks(config.eval, mesh)
    self._jitted = None

  def _functions(self, components):
    if self._jitted is None or self._jitted[0] is not components:
      config, replicated = self.config, parallel.replicated(self.mesh)
      evaluate_batch = jax.jit(
          functools.partial(batch_metrics, components, config.eval.lpips_net,
                            config.eval.fid_image_size), out_shardings=replicated)
      real_features = jax.jit(
          functools.partial(inception.fid_features, image_size=config.eval.fid_image_size),
          out_shardings=replicated)
      evaluate_output = jax.jit(
          functools.partial(output_metrics, config.eval.lpips_net, config.eval.fid_image_size),
          out_shardings=replicated)
      self._jitted = (components, evaluate_batch, real_features, evaluate_output)
    return self._jitted[1:]

  def run(self, components, variables, *, samples_dir: str | None = None
          ) -> tuple[dict[str, dict[str, Any]], dict[str, str], Any,
                     dict[str, dict[str, dict[str, Any]]]]:
    """(results {column: {metric: value or None, "images": n}}, unavailable {metric: reason},
    the real images' FID statistics or None, the classical baselines' results {method:
    {column: ...}} on the same images and masks); sample grids go to `samples_dir` if given."""
    config, mesh, networks = self.config, self.mesh, self.networks
    evaluate_batch, real_features, evaluate_output = self._functions(components)
    names = ("model", *self.baseline_names)
    results: dict[str, dict[str, Any]] = {}
    baseline_results: dict[str, dict[str, dict[str, Any]]] = {m: {} for m in self.baseline_names}
    unavailable = dict(networks.unavailable)
    with_fid = networks.fid_params is not None
    # Every setting completes the same test images (only the masks differ), so the real
    # images' statistics are gathered once, during the first setting.
    real_stats = None
    for column, mask_spec in self.settings:
      totals = {name: _Totals(with_fid) for name in names}
      collect_real = None
      if with_fid and real_stats is None:
        real_stats = collect_real = fid_lib.FeatureStatistics(inception.FEATURE_DIM)
      first = None
      for local_batch in pipeline.create_eval_iterator(config, mask_spec=mask_spec,
                                                       num_images=config.eval.num_images):
        batch = parallel.global_batch(local_batch, mesh)
        totals["model"].add(*evaluate_batch(variables, networks.lpips_params,
                                            networks.fid_params, batch))
        for name in self.baseline_names:
          # Each process completes its own rows on the host; the metrics run as for the model.
          output = parallel.global_batch(
              {"output": baselines_lib.inpaint(name, local_batch["image"],
                                               local_batch["mask"])}, mesh)["output"]
          totals[name].add(output, *evaluate_output(networks.lpips_params,
                                                    networks.fid_params, output, batch),
                           batch["weight"])
        if collect_real is not None:
          collect_real.update(jax.device_get(real_features(networks.fid_params,
                                                           batch["image"])),
                              jax.device_get(batch["weight"]))
        if first is None:
          first = {k: np.asarray(multihost_utils.process_allgather(batch[k], tiled=True))
                   for k in ("image", "mask", "weight")}
      results[column] = totals["model"].results(real_stats, unavailable)
      for name in self.baseline_names:
        baseline_results[name][column] = totals[name].results(real_stats, unavailable)
      if samples_dir is not None and jax.process_index() == 0:
        real = first["weight"] > 0  # Padding rows repeat an image: never shown.
        grid = visualize.inpainting_grid(
            first["image"][real], first["mask"][real],
            *(totals[name].first_output[real] for name in names),
            output_labels=("model", *(baselines_lib.SHORT_NAMES[m]
                                      for m in self.baseline_names)))
        visualize.save_png(grid, os.path.join(samples_dir, f"samples_{_slug(column)}.png"))
      logging.info("Eval %s: %s", column, results[column])
    # A metric is unavailable everywhere or nowhere.
    for key in unavailable:
      for method_results in (results, *baseline_results.values()):
        for column_results in method_results.values():
          column_results[key] = None
    return results, unavailable, real_stats, baseline_results


def scalars(results: dict[str, dict[str, Any]]) -> dict[str, float]:
  """{"eval/<setting>/<metric>": value} of the available metrics, for a metric writer."""
  return {f"eval/{_slug(column)}/{key}": value for column, values in results.items()
          for key, value in values.items() if key != "images" and value is not None}


def evaluate(config: ml_collections.ConfigDict, workdir: str, *, step: int | None = None,
             allow_config_change: Sequence[str] = (), out_dir: str | None = None
             ) -> dict[str, Any]:
  """Restores the checkpoint (latest by default) and evaluates it; returns the results.

  Files go to `out_dir` (default <workdir>/eval).

  The config's model fields must match the checkpoint's (loop.restore_run); a damaged
  checkpoint is an error naming its step and the others to choose from with `step`.

  Returns:
    {"step", "results": {column: {metric: value or None, "images": n}}, "baselines":
    {method: {column: ...}} (config.eval.baselines), "unavailable": {metric: reason},
    "tables": {name: markdown path}}.
  """
  config_checks.validate(config)
  workdir = os.path.abspath(workdir)
  mesh = parallel.make_mesh()
  # Unknown table names and broken weights fail before the checkpoint is read.
  evaluator = Evaluator(config, mesh)
  components, state, step = loop.restore_run(config, workdir, mesh, step=step,
                                             allow_config_change=allow_config_change)
  out_dir = out_dir or os.path.join(workdir, "eval")
  results, unavailable, real_stats, baseline_results = evaluator.run(
      components, step_lib.inference_variables(config, state), samples_dir=out_dir)

  notes = {}  # metric -> a caveat printed under every table that shows it.
  if "fid" not in unavailable and config.eval.fid_image_size != inception.FID_IMAGE_SIZE:
    notes["fid"] = (f"computed on {config.eval.fid_image_size}x{config.eval.fid_image_size} "
                    f"Inception inputs, not FID's {inception.FID_IMAGE_SIZE}: not comparable "
                    "with published FIDs")
  tables = {}
  if jax.process_index() == 0:
    label = "EMA" if config.eval.use_ema else "raw"
    source = provenance(config, step)
    write_tables(results, step, out_dir, weights=label, unavailable=unavailable, notes=notes,
                 source=source, baselines=baseline_results)
    method = config.eval.method_name or config.model.name
    for name in config.eval.tables:
      tables[name] = write_paper_table(name, results, step, out_dir, method=method,
                                       unavailable=unavailable, notes=notes, source=source,
                                       baselines=baseline_results)
    if real_stats is not None and real_stats.count >= 2:
      real_stats.save(os.path.join(out_dir, "fid_real_stats.npz"))
    write_plots(results, step, workdir, out_dir)
  return {"step": step, "results": results, "baselines": baseline_results,
          "unavailable": unavailable, "tables": tables}


def write_plots(results: dict[str, dict[str, Any]], step: int, workdir: str,
                out_dir: str) -> list[str]:
  """metrics.png (each metric per setting) and, when the run has TensorBoard events,
  loss_curves.png; returns the paths written."""
  # The default bitmap font has no arrows.
  panels = {f"{name} ({'higher' if higher else 'lower'} is better)": {column: values[key]
                                                        for column, values in results.items()}
            for name, key, higher in METRICS
            if any(values[key] is not None for values in results.values())}
  written = [os.path.join(out_dir, "metrics.png")]
  visualize.save_png(plots.bar_panels(panels, f"Evaluation at step {step}"), written[0])
  curves = plots.read_scalars(workdir, prefix="loss/")
  if curves:
    written.append(os.path.join(out_dir, "loss_curves.png"))
    visualize.save_png(plots.line_panels(curves, "Training losses (TensorBoard events)"),
                       written[1])
  return written


def provenance(config: ml_collections.ConfigDict, step: int) -> dict[str, Any]:
  """What a results file describes: the dataset, split, step and where the masks came from."""
  data, eval_config = config.data, config.eval
  if eval_config.mask_dir:
    masks = (f"mask folder {eval_config.mask_dir}"
             + (" (inverted: black = hole)" if eval_config.mask_invert else ""))
  else:
    masks = (f"generated, one per image and bin (seed {pipeline.eval_mask_seed(config)}); "
             "center masks for center settings")
  return {"dataset": f"{data.name}/{data.builder_config}" if data.builder_config else data.name,
          "split": data.eval_split, "step": int(step), "model": config.model.name,
          "weights": "EMA" if eval_config.use_ema else "raw", "masks": masks,
          "images_requested": eval_config.num_images}


def _describe(source: dict[str, Any]) -> str:
  return (f"{source['model']} at step {source['step']} ({source['weights']} weights) on "
          f"{source['dataset']}, split {source['split']!r}; masks: {source['masks']}")


def _slug(column: str) -> str:
  return column.replace("%", "").replace(" ", "_")


def _fmt(key: str, value: float | None, digits: int | None = None) -> str:
  if value is None:
    return "n/a"
  if digits is None:
    digits = 2 if key in ("psnr", "fid") else 3
  return f"{value:.{digits}f}"


def _footer(unavailable: dict[str, str], notes: dict[str, str]) -> list[str]:
  """Markdown lines under a table: why a metric is missing, caveats on the ones shown."""
  return ([f"- {_DISPLAY[key][0]}: unavailable, {reason}." for key, reason in unavailable.items()]
          + [f"- {_DISPLAY[key][0]}: {note}." for key, note in notes.items()])


def write_tables(results: dict[str, dict[str, Any]], step: int, out_dir: str, weights: str,
                 unavailable: dict[str, str] | None = None,
                 notes: dict[str, str] | None = None,
                 source: dict[str, Any] | None = None,
                 baselines: dict[str, dict[str, dict[str, Any]]] | None = None) -> None:
  """metrics.{json,csv,md}: every metric (rows) x every evaluated setting (columns), then the
  classical baselines (`baselines[method][column]`) beside the model; `source` (`provenance`)
  names the dataset, split, step and masks in each."""
  unavailable, notes, source = unavailable or {}, notes or {}, source or {}
  baselines = baselines or {}
  os.makedirs(out_dir, exist_ok=True)
  columns = list(results)
  with open(os.path.join(out_dir, "metrics.json"), "w") as f:
    json.dump({"step": step, "weights": weights, **source, "results": results,
               "baselines": baselines, "unavailable": unavailable, "notes": notes}, f,
              indent=2)
  with open(os.path.join(out_dir, "metrics.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["metric", *columns])
    for name, key, _ in METRICS:
      writer.writerow([name, *(_csv(results[c][key]) for c in columns)])
    writer.writerow(["images", *(results[c]["images"] for c in columns)])
    for method, method_results in baselines.items():
      for name, key, _ in METRICS:
        writer.writerow([f"{name} [{method}]", *(_csv(method_results[c][key]) for c in columns)])
    for key in ("dataset", "split", "step", "masks"):
      if key in source:
        writer.writerow([key, source[key]])
  heading = (f"Evaluation of {_describe(source)}; composited outputs." if source else
             f"Evaluation at step {step} ({weights} weights); composited outputs.")
  lines = [heading, "",
           "| Metric | " + " | ".join(columns) + " |",
           "|---|" + "---|" * len(columns)]
  for name, key, higher in METRICS:
    arrow = "↑" if higher else "↓"
    lines.append(f"| {name} {arrow} | " + " | ".join(_fmt(key, results[c][key]) for c in columns)
                 + " |")
  lines.append("| images | " + " | ".join(str(results[c]["images"]) for c in columns) + " |")
  if baselines:
    lines += [""] + comparison_table(results, baselines, f"model ({weights})")
  footer = _footer(unavailable, notes)
  if footer:
    lines += [""] + footer
  with open(os.path.join(out_dir, "metrics.md"), "w") as f:
    f.write("\n".join(lines) + "\n")


def comparison_table(results: dict[str, dict[str, Any]],
                     baselines: dict[str, dict[str, dict[str, Any]]], model_label: str
                     ) -> list[str]:
  """Markdown lines: PSNR / SSIM of the model and each classical method per setting (the best
  in bold), and the model's PSNR margin over the best classical method."""
  columns = list(results)
  rows = {model_label: results,
          **{baselines_lib.DISPLAY_NAMES[m]: r for m, r in baselines.items()}}
  best = {c: {key: max(r[c][key] for r in rows.values()) for key in ("psnr", "ssim")}
          for c in columns}

  def cell(method_results, column):
    return " / ".join(
        (f"**{_fmt(key, v)}**" if v == best[column][key] else _fmt(key, v))
        for key in ("psnr", "ssim") for v in [method_results[column][key]])

  lines = ["Against classical inpainting on the same images and masks (PSNR ↑ / SSIM ↑):", "",
           "| Method | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
  lines += [f"| {label} | " + " | ".join(cell(r, c) for c in columns) + " |"
            for label, r in rows.items()]
  margins = [results[c]["psnr"] - max(r[c]["psnr"] for r in baselines.values())
             for c in columns]
  lines.append("| model − best classical, PSNR (dB) | "
               + " | ".join(f"{m:+.2f}" for m in margins) + " |")
  return lines


def _csv(value: float | None) -> str:
  return "" if value is None else f"{value:.6f}"


def paper_table(name: str, results: dict[str, dict[str, Any]], method: str
                ) -> tuple[list[str], list[list[str]], dict[str, dict[str, float | None]]]:
  """(header, rows, values) of table `name` for one method, values scaled as the paper prints.

  `values[metric][setting label]` is the number (None if unavailable) behind each cell.
  """
  layout = TABLES[name]
  values = {}
  for key in layout.metrics:
    values[key] = {}
    for label, spec in layout.settings:
      value = results[_column(spec)][key]
      values[key][label] = None if value is None else value * layout.scale.get(key, 1.0)

  def cell(key, label):
    return _fmt(key, values[key][label], layout.digits[key])

  def title(key):
    display, higher = _DISPLAY[key]
    unit = " (%)" if key in layout.scale else ""
    return f"{display}{unit} {'↑' if higher else '↓'}"

  labels = [label for label, _ in layout.settings]
  if layout.metric_rows:
    header = ["Metric", "Method", *labels]
    rows = [[title(key), method, *(cell(key, label) for label in labels)]
            for key in layout.metrics]
  elif len(labels) == 1:
    header = ["Method", *(title(key) for key in layout.metrics)]
    rows = [[method, *(cell(key, labels[0]) for key in layout.metrics)]]
  else:
    header = ["Method", *(f"{title(key)} {label}" for key in layout.metrics for label in labels)]
    rows = [[method, *(cell(key, label) for key in layout.metrics for label in labels)]]
  return header, rows, values


def write_paper_table(name: str, results: dict[str, dict[str, Any]], step: int, out_dir: str,
                      *, method: str, unavailable: dict[str, str],
                      notes: dict[str, str] | None = None,
                      source: dict[str, Any] | None = None,
                      baselines: dict[str, dict[str, dict[str, Any]]] | None = None) -> str:
  """table_<name>.{md,csv,json} in the layout of that paper table, the model's row(s) first,
  then the classical baselines' (`baselines[method][column]`); returns the .md path."""
  source = source or {}
  layout = TABLES[name]
  header, rows, values = paper_table(name, results, method)
  baseline_values = {}
  per_method_rows = [rows]
  for baseline, baseline_results in (baselines or {}).items():
    _, baseline_rows, baseline_values[baseline] = paper_table(
        name, baseline_results, baselines_lib.DISPLAY_NAMES[baseline])
    per_method_rows.append(baseline_rows)
  # One row per metric (Tables I, II): each metric's methods together, as the papers print.
  rows = [row for group in zip(*per_method_rows) for row in group]
  base = os.path.join(out_dir, f"table_{name}")
  relevant = {k: v for k, v in unavailable.items() if k in layout.metrics}
  notes = {k: v for k, v in (notes or {}).items() if k in layout.metrics}
  images = {label: results[_column(spec)]["images"] for label, spec in layout.settings}
  with open(base + ".json", "w") as f:
    json.dump({"table": name, "title": layout.title, "step": step, "method": method,
               **{k: v for k, v in source.items() if k != "step"}, "values": values,
               "baselines": baseline_values, "images": images, "unavailable": relevant,
               "notes": notes}, f, indent=2)
  with open(base + ".csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)
  lines = [f"{layout.title} (step {step}; images per column: "
           f"{', '.join(f'{k} {v}' for k, v in images.items())}).", "",
           "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  if source:
    lines += ["", f"Source: {_describe(source)}."]
  footer = _footer(relevant, notes)
  if footer:
    lines += [""] + footer
  with open(base + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")
  return base + ".md"
