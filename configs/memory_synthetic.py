"""GM-SRM stage 1 on the embedded synthetic scenes: a StyleGAN2 memory that trains on a CPU.

  python -m gmsrm_jax.data.prepare --dataset=synthetic_scenes/64
  python train.py --config=configs/memory_synthetic.py --workdir=runs/memory_synthetic
  python -m gmsrm_jax.train.memory_pretraining --config=configs/memory_synthetic.py \
      --workdir=runs/memory_synthetic   # exports the memory, writes report.{json,png}

Variants (the part after the colon):
  (none)  32x32 crops of synthetic_scenes/64, widths 64-32, batch 16, 3000 steps: ~12 minutes
          on 2 idle CPU cores. Samples reach the data's colour statistics (distance of the
          per-channel mean/std to the data's: 3.24 at initialisation, 0.06 after) and its flat
          regions and textures; docs/MEMORY_PRETRAINING.md has the grids.
  demo    the default architecture trained for 800 steps (~3-4 minutes): stage 1 of the
          two-stage demo (python -m gmsrm_jax.pipeline, configs/gmsrm.py:demo).
  tiny    16x16, a few channels, frequent regularization; used by the tests (seconds).
The architecture and training are those of configs/memory_places2.py, scaled down.
"""

import ml_collections

from configs import base
from configs import memory_places2


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  if variant in (None, "", "demo"):
    config = memory_places2.stage1_config(base.get_config("demo"))
    config.data.builder_config = "64"
    _shrink(config, crop=32, resize=36, z_dim=64, channel_base=1024, channel_max=64, batch=16)
    config.data.num_threads = 2
    config.loss.r1_gamma = 0.05
    config.train.num_steps = 3000
    config.train.ema_half_life_images = 5000
    config.train.ema_rampup = 0.05
    config.train.log_every = 100
    config.train.sample_every = 500
    config.train.checkpoint_every = 500
    if variant == "demo":
      config.train.num_steps = 800
      config.train.sample_every = config.train.checkpoint_every = 400
  elif variant == "tiny":
    config = memory_places2.stage1_config(base.get_config("tiny"))
    _shrink(config, crop=16, resize=18, z_dim=32, channel_base=256, channel_max=32, batch=8)
    config.model.mapping_layers = 2
    config.disc.mbstd_group_size = 4
    config.loss.r1_gamma = 0.05
    config.loss.r1_interval = 2  # R1 on steps 0, 2 and path length on step 0 of a 4-step run.
    config.loss.pl_interval = 4
    config.train.num_steps = 4
    config.train.ema_half_life_images = 500
    config.train.ema_rampup = 0.05
    config.train.log_every = 2
    config.train.sample_every = 2
    config.train.checkpoint_every = 2
    config.sample.num_images = 4
  else:
    raise ValueError(f"Unknown variant {variant!r}; use '', 'demo' or 'tiny'.")
  config.data.name = "synthetic_scenes"
  return config


def _shrink(config, *, crop, resize, z_dim, channel_base, channel_max, batch):
  config.data.crop_size = crop
  config.data.resize_shorter = resize
  config.model.z_dim = config.model.w_dim = z_dim
  config.model.channel_base = config.disc.channel_base = channel_base
  config.model.channel_max = config.disc.channel_max = channel_max
  config.disc.mbstd_group_size = 4
  config.train.batch_size = batch
