"""Trains a config: python train.py --config=configs/base.py:demo --workdir=/tmp/run.

Exit status: 0 finished; 75 stopped by SIGTERM/SIGINT after saving (rerun to resume);
1 an error (e.g. a non-finite loss or state: nothing from that step on was saved).
"""

from gmsrm_jax import commands

if __name__ == "__main__":
  commands.train()
