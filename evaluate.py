"""Evaluates a run's checkpoint (the latest, or --step): same flags as train.py.

Writes eval/metrics.{md,csv,json} and eval/samples_*.png under --workdir.
"""

from gmsrm_jax import cli
from gmsrm_jax import evaluation


def main(argv):
  del argv
  config, workdir = cli.setup()
  evaluation.evaluate(config, workdir, step=cli.STEP.value,
                      allow_config_change=cli.ALLOW_CONFIG_CHANGE.value)


if __name__ == "__main__":
  cli.run(main, saved_config=True)
