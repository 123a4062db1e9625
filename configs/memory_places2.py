"""GM-SRM stage 1 (§III-B, §III-D): pre-train the generative memory on Places2 at 256x256.

The memory is a StyleGAN2 generator trained "in the similar training way as plain StyleGAN";
hyperparameters are StyleGAN2-ADA's `paper256` setting (Karras et al. 2020), the one tuned for
256x256 data. Images are preprocessed as for the inpainting model (§IV-A: shorter side 320,
random 256 crop, flip), so the memory learns the distribution stage 2 later queries.

Run (GPU/TPU job; ~25M images as in paper256):
  python train.py --config=configs/memory_places2.py --workdir=runs/memory_places2
  python -m gmsrm_jax.train.memory_pretraining --config=configs/memory_places2.py \
      --workdir=runs/memory_places2      # exports runs/memory_places2/memory for stage 2

The dataset comes from the paper-dataset builders of issue #5 and must be prepared first;
loading an unprepared or unknown dataset fails at once with the command to run.
configs/memory_celebahq.py and configs/memory_paris.py import this file and change the data.
"""

import ml_collections

from configs import base


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  if variant not in (None, ""):
    raise ValueError(f"Unknown variant {variant!r}; this config has only the default.")
  config = stage1_config(base.get_config())
  config.data.name = "places2_two_categories"
  return config


def stage1_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Turns a base config (data, masks, train, eval) into a StyleGAN2 stage-1 config."""
  config.task = "memory_pretraining"  # gmsrm_jax/train/memory_pretraining.py

  # The generative memory M (gmsrm_jax/stylegan/networks.py). These fields are the
  # architecture an export records; stage 2 must ask for the same.
  config.model = ml_collections.ConfigDict()
  config.model.z_dim = 512
  config.model.w_dim = 512  # Also the size of GM-SRM's embeddings c_i (eq. 3).
  config.model.mapping_layers = 8
  config.model.mapping_lr_mul = 0.01
  config.model.resolution = config.data.get_ref("crop_size")
  config.model.start_resolution = 4  # The learned constant's size.
  config.model.channel_base = 16384  # channels(r) = min(channel_base // r, channel_max)
  config.model.channel_max = 512
  # StyleGAN2's upsampling conv, at the input resolution; "fir_then_conv" is the form before
  # issue #13 (3x3 conv after FIR upsampling, ~2x the FLOPs; DESIGN M5), which exports and
  # checkpoints made without this field were trained with.
  config.model.upsample = "transposed"

  config.disc = ml_collections.ConfigDict()
  config.disc.channel_base = 16384
  config.disc.channel_max = 512
  config.disc.mbstd_group_size = 8
  config.disc.mbstd_num_channels = 1

  config.loss = ml_collections.ConfigDict()
  config.loss.r1_gamma = 1.0
  config.loss.r1_interval = 16  # Lazy regularization: R1 every 16 steps, weighted by 16.
  config.loss.pl_weight = 2.0  # 0 disables path-length regularization.
  config.loss.pl_interval = 4
  config.loss.pl_batch_shrink = 2
  config.loss.pl_decay = 0.01
  config.loss.style_mixing_prob = 0.9

  config.optim = ml_collections.ConfigDict()
  config.optim.learning_rate = 0.0025
  config.optim.d_learning_rate = 0.0025
  config.optim.b1 = 0.0  # StyleGAN2's Adam betas.
  config.optim.b2 = 0.99
  config.optim.eps = 1e-8

  train = config.train
  del train.ema_decay  # The EMA is set by its half-life in images instead.
  train.batch_size = 64
  train.num_steps = 25_000_000 // 64
  train.ema_half_life_images = 20_000
  train.ema_rampup = 0.0  # 0: off. > 0 caps the half-life at rampup * images seen.
  train.w_avg_beta = 0.995  # Tracked average of w (truncation trick, export).
  train.log_every = 100
  train.sample_every = 5000
  train.checkpoint_every = 5000

  config.sample = ml_collections.ConfigDict()
  config.sample.num_images = 16  # Sample grid of EMA samples from fixed latents and noise.
  config.sample.truncation_psi = 1.0
  return config
