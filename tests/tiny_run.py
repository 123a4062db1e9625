"""The tiny training run the loop tests share (not a test module)."""

from configs import base as base_config


def config(data_dir: str, num_steps: int):
  """configs/base.py:tiny reading `data_dir`, trained for `num_steps` (checkpoints every 2)."""
  tiny = base_config.get_config("tiny")
  tiny.data.data_dir = data_dir
  tiny.train.num_steps = num_steps
  return tiny
