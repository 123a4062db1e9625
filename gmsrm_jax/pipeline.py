"""GM-SRM from one command: stage 1 (generative memory), its export, stage 2, evaluation.

  python -m gmsrm_jax.pipeline --config=configs/gmsrm.py:demo --workdir=runs/gmsrm_demo

  <workdir>/stage1/          stage-1 run of `config.model.memory.stage1_config`, its export
                             (stage1/memory/) and report (stage1/report.{json,png})
  <workdir>/                 the stage-2 run (checkpoints, TensorBoard, samples/) and eval/
  <workdir>/<row>/           with --compare=<ablation>: that Table IV row trained and
                             evaluated with the same settings (e.g. --compare=base)

Every step resumes: a finished stage is not trained again, so re-running the command after an
interruption continues where it stopped. Stage-1 and stage-2 data come from
`config.data.data_dir`; `--config.*` overrides apply to stage 2 (and its comparison rows).
"""

import os
from typing import Any

from absl import logging
import ml_collections

from gmsrm_jax import evaluation
from gmsrm_jax.train import loop
from gmsrm_jax.train import memory_pretraining


def stage1_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The stage-1 config a stage-2 config names, reading the same prepared data."""
  from configs import gmsrm as gmsrm_configs  # pylint: disable=g-import-not-at-top
  stage1 = gmsrm_configs.stage1_config(config.model.memory.stage1_config)
  stage1.data.data_dir = config.data.data_dir
  return stage1


def run(config: ml_collections.ConfigDict, workdir: str, compare: tuple[str, ...] = (),
        report_images: int = 64, allow_config_change: tuple[str, ...] = ()
        ) -> dict[str, Any]:
  """Runs both stages and the evaluation; returns {row name: (run directory, evaluation
  results)}. `allow_config_change` applies to the stage-2 runs (loop.restore_or_init)."""
  workdir = os.path.abspath(workdir)
  stage1_dir = os.path.join(workdir, "stage1")
  stage1 = stage1_config(config)
  logging.info("Stage 1: %s in %s", config.model.memory.stage1_config, stage1_dir)
  loop.train_and_evaluate(stage1, stage1_dir)
  report = memory_pretraining.export_and_report(stage1, stage1_dir, report_images=report_images)
  with config.unlocked():
    config.model.memory.path = report["memory_dir"]

  rows = {config.eval.method_name or config.model.name: (config, workdir)}
  from configs import gmsrm as gmsrm_configs  # pylint: disable=g-import-not-at-top
  for ablation in compare:
    row = ml_collections.ConfigDict(config.to_dict())
    gmsrm_configs.ABLATIONS[ablation](row)
    row.eval.method_name = ablation
    rows[ablation] = (row, os.path.join(workdir, ablation))
  results = {}
  for name, (row, row_dir) in rows.items():
    logging.info("Stage 2 (%s) in %s", name, row_dir)
    loop.train_and_evaluate(row, row_dir, allow_config_change=allow_config_change)
    results[name] = (row_dir, evaluation.evaluate(row, row_dir,
                                                  allow_config_change=allow_config_change))
  return results


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from gmsrm_jax import cli  # pylint: disable=g-import-not-at-top

  _COMPARE = flags.DEFINE_list(
      "compare", [], "Table IV rows (configs/gmsrm.py ablations, e.g. base,gm_bm) to train and "
      "evaluate beside the config, with the same settings.")

  def main(argv):
    del argv
    if cli.STEP.value is not None:
      raise app.UsageError("--step is for train.py, evaluate.py and export.py; the pipeline "
                           "always continues each stage from its newest checkpoint.")
    config, workdir = cli.setup()
    results = run(config, workdir, tuple(_COMPARE.value),
                  allow_config_change=tuple(cli.ALLOW_CONFIG_CHANGE.value))
    for name, (row_dir, _) in results.items():
      table = os.path.join(row_dir, "eval", "metrics.md")
      print(f"\n## {name} ({table})\n")
      with open(table) as f:
        print(f.read())

  cli.run(main)
