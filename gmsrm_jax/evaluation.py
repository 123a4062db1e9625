"""Evaluation of a trained checkpoint per hole-ratio bin and for center masks.

Reports PSNR, SSIM, NCC, LMSE and L1 on the composited output (GM-SRM Tables I/II layout) as
Markdown, CSV and JSON under `<workdir>/eval/`, plus a sample grid per mask setting.
"""

import csv
import functools
import json
import os
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from gmsrm_jax import metrics as metrics_lib
from gmsrm_jax import visualize
from gmsrm_jax.data import pipeline
from gmsrm_jax.train import checkpoint
from gmsrm_jax.train import loop
from gmsrm_jax.train import parallel
from gmsrm_jax.train import tasks
from gmsrm_jax.train import step as step_lib

# Display name, key in metrics_lib.compute_all, whether higher is better.
METRICS = (("PSNR", "psnr", True), ("SSIM", "ssim", True), ("NCC", "ncc", True),
           ("LMSE", "lmse", False), ("L1", "l1", False))


def mask_settings(eval_config: ml_collections.ConfigDict) -> list[tuple[str, tuple]]:
  """(column name, mask_spec) pairs in table order: irregular bins, then center masks."""
  settings = [(f"{name}%", ("bin", name)) for name in eval_config.mask_bins]
  settings += [(f"center {round(r * 100)}%", ("center", float(r)))
               for r in eval_config.center_ratios]
  return settings


def _per_image_metrics(components, params, g_state, batch):
  output = step_lib.predict(components, params, g_state, batch["image"], batch["mask"])
  to_unit = lambda x: jnp.clip((x + 1.0) / 2.0, 0.0, 1.0)
  values = metrics_lib.compute_all(to_unit(output), to_unit(batch["image"]))
  weight = batch["weight"]
  sums = {k: jnp.sum(jnp.where(weight > 0, v, 0.0)) for k, v in values.items()}
  return output, sums, jnp.sum(weight)


def evaluate(config: ml_collections.ConfigDict, workdir: str, *, step: int | None = None
             ) -> dict[str, Any]:
  """Restores the checkpoint (latest by default) and evaluates it; returns the results."""
  workdir = os.path.abspath(workdir)
  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.eval.batch_size, mesh)
  task = tasks.get(config)
  components = task.create_components(config)
  manager = checkpoint.create_manager(workdir, read_only=True)
  _, abstract = loop.abstract_train_state(config, task, components, mesh)
  restored = checkpoint.restore(manager, abstract, step)
  if restored is None:
    raise FileNotFoundError(
        f"No checkpoint in {checkpoint.checkpoint_dir(workdir)}. Train first: python train.py "
        f"--config=<the same config> --workdir={workdir}")
  state, step = restored
  params = state.ema_params if config.eval.use_ema else state.g_params
  replicated = parallel.replicated(mesh)
  evaluate_batch = jax.jit(functools.partial(_per_image_metrics, components),
                           out_shardings=replicated)

  results: dict[str, dict[str, float]] = {}
  out_dir = os.path.join(workdir, "eval")
  for column, mask_spec in mask_settings(config.eval):
    sums, count, first = None, 0.0, None
    for local_batch in pipeline.create_eval_iterator(config, mask_spec=mask_spec,
                                                     num_images=config.eval.num_images):
      batch = parallel.global_batch(local_batch, mesh)
      output, batch_sums, batch_count = evaluate_batch(params, state.g_state, batch)
      batch_sums = jax.device_get(batch_sums)
      sums = batch_sums if sums is None else {k: sums[k] + batch_sums[k] for k in sums}
      count += float(batch_count)
      if first is None:
        first = {k: np.asarray(multihost_utils.process_allgather(v, tiled=True))
                 for k, v in {"image": batch["image"], "mask": batch["mask"],
                              "output": output}.items()}
    results[column] = {key: float(sums[key] / count) for _, key, _ in METRICS}
    results[column]["images"] = int(count)
    if jax.process_index() == 0:
      grid = visualize.inpainting_grid(first["image"], first["mask"], first["output"])
      slug = column.replace("%", "").replace(" ", "_")
      visualize.save_png(grid, os.path.join(out_dir, f"samples_{slug}.png"))
    logging.info("Eval %s: %s", column, results[column])

  if jax.process_index() == 0:
    write_tables(results, step, out_dir, weights="EMA" if config.eval.use_ema else "raw")
  return {"step": step, "results": results}


def write_tables(results: dict[str, dict[str, float]], step: int, out_dir: str,
                 weights: str) -> None:
  os.makedirs(out_dir, exist_ok=True)
  columns = list(results)
  with open(os.path.join(out_dir, "metrics.json"), "w") as f:
    json.dump({"step": step, "weights": weights, "results": results}, f, indent=2)
  with open(os.path.join(out_dir, "metrics.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["metric", *columns])
    for name, key, _ in METRICS:
      writer.writerow([name, *(f"{results[c][key]:.6f}" for c in columns)])
    writer.writerow(["images", *(results[c]["images"] for c in columns)])
  lines = [f"Evaluation at step {step} ({weights} weights); composited outputs.", "",
           "| Metric | " + " | ".join(columns) + " |",
           "|---|" + "---|" * len(columns)]
  for name, key, higher in METRICS:
    arrow = "↑" if higher else "↓"
    lines.append(f"| {name} {arrow} | " + " | ".join(_fmt(key, results[c][key]) for c in columns)
                 + " |")
  lines.append("| images | " + " | ".join(str(results[c]["images"]) for c in columns) + " |")
  with open(os.path.join(out_dir, "metrics.md"), "w") as f:
    f.write("\n".join(lines) + "\n")


def _fmt(key: str, value: float) -> str:
  return f"{value:.2f}" if key == "psnr" else f"{value:.3f}"
