"""Evaluates the latest checkpoint of a run: same flags as train.py.

Writes eval/metrics.{md,csv,json} and eval/samples_*.png under --workdir.
"""

from absl import app

from gmsrm_jax import cli
from gmsrm_jax import evaluation


def main(argv):
  del argv
  config, workdir = cli.setup()
  evaluation.evaluate(config, workdir)


if __name__ == "__main__":
  app.run(main)
