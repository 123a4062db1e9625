"""Trains a config: python train.py --config=configs/base.py:demo --workdir=/tmp/run.

Exit status: 0 finished; 75 stopped by SIGTERM/SIGINT after saving (rerun to resume);
1 an error (e.g. a non-finite loss or state: nothing from that step on was saved).
"""

from gmsrm_jax import cli
from gmsrm_jax.train import loop


def main(argv):
  del argv
  config, workdir = cli.setup()
  loop.train_and_evaluate(config, workdir, step=cli.STEP.value,
                          allow_config_change=cli.ALLOW_CONFIG_CHANGE.value)


if __name__ == "__main__":
  cli.run(main)
