"""GM-SRM stage 1 on CelebA-HQ at 256x256: configs/memory_places2.py with the CelebA-HQ data.

  python train.py --config=configs/memory_celebahq.py --workdir=runs/memory_celebahq
  python -m gmsrm_jax.train.memory_pretraining --config=configs/memory_celebahq.py \
      --workdir=runs/memory_celebahq

The dataset (27,000 train / 3,000 test, §IV-A) comes from the issue #5 builders and must be
prepared first; an unprepared dataset fails at once with the command to run.
"""

import ml_collections

from configs import memory_places2


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  config = memory_places2.get_config(variant)
  config.data.name = "celeb_a_hq"
  return config
