"""Evaluates a run's checkpoint (the latest, or --step): python evaluate.py --workdir=RUN.

The config is the one saved with the checkpoint; --config.* flags override its fields (a
change to the data or the model is refused unless --allow_config_change names it). Writes
eval/metrics.{md,csv,json}, eval/samples_*.png and the plots under --workdir.
"""

from gmsrm_jax import commands

if __name__ == "__main__":
  commands.evaluate()
