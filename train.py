"""Trains a config: python train.py --config=configs/base.py:demo --workdir=/tmp/run."""

from absl import app

from gmsrm_jax import cli
from gmsrm_jax.train import loop


def main(argv):
  del argv
  config, workdir = cli.setup()
  loop.train_and_evaluate(config, workdir)


if __name__ == "__main__":
  app.run(main)
