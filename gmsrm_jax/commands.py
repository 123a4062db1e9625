"""The commands: train, evaluate and export a run (train.py, evaluate.py and export.py at the
repository root call these; installed, they are the gmsrm-train, gmsrm-evaluate and
gmsrm-export scripts). gmsrm-inpaint is `gmsrm_jax.inpaint.main`."""

from absl import flags

from gmsrm_jax import cli


def train() -> None:
  """Trains a config: gmsrm-train --config=configs/base.py:demo --workdir=/tmp/run.

  Exit status: 0 finished; 75 stopped by SIGTERM/SIGINT after saving (rerun to resume);
  1 an error (e.g. a non-finite loss or state: nothing from that step on was saved).
  """

  def main(argv):
    del argv
    from gmsrm_jax.train import loop  # pylint: disable=g-import-not-at-top
    config, workdir = cli.setup()
    loop.train_and_evaluate(config, workdir, step=cli.STEP.value,
                            allow_config_change=cli.ALLOW_CONFIG_CHANGE.value)

  cli.run(main)


def evaluate() -> None:
  """Evaluates a run's checkpoint (the latest, or --step) with the config saved with it.

  Writes eval/metrics.{md,csv,json}, eval/samples_*.png and the plots under --workdir.
  """

  def main(argv):
    del argv
    from gmsrm_jax import evaluation  # pylint: disable=g-import-not-at-top
    config, workdir = cli.setup()
    evaluation.evaluate(config, workdir, step=cli.STEP.value,
                        allow_config_change=cli.ALLOW_CONFIG_CHANGE.value)

  cli.run(main, saved_config=True)


def export() -> None:
  """Exports a trained run for serving (--output, default <workdir>/export/): variables, the
  serialized completion function, config, model card and manifest (gmsrm_jax/export.py)."""
  from gmsrm_jax import export as export_lib  # pylint: disable=g-import-not-at-top
  output = flags.DEFINE_string("output", None, "Export directory (default <workdir>/export).")
  platforms = flags.DEFINE_list("platforms", list(export_lib.DEFAULT_PLATFORMS),
                                "Platforms the serialized function is lowered for.")

  def main(argv):
    del argv
    config, workdir = cli.setup()
    print(export_lib.export(config, workdir, output.value, step=cli.STEP.value,
                            platforms=platforms.value,
                            allow_config_change=cli.ALLOW_CONFIG_CHANGE.value))

  cli.run(main, saved_config=True)
