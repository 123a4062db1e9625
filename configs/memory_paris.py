"""GM-SRM stage 1 on Paris Street View at 256x256: configs/memory_places2.py with Paris data.

  python train.py --config=configs/memory_paris.py --workdir=runs/memory_paris
  python -m gmsrm_jax.train.memory_pretraining --config=configs/memory_paris.py \
      --workdir=runs/memory_paris

The dataset (14,900 train / 100 test, §IV-A) comes from the issue #5 builders and must be
prepared first; an unprepared dataset fails at once with the command to run.
"""

import ml_collections

from configs import memory_places2


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  config = memory_places2.get_config(variant)
  config.data.name = "paris_street_view"
  return config
