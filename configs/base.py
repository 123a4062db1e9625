"""GM-SRM "Base model" (Table IV): encoder-decoder with channel attention, no memory.

Run (CPU demo on the embedded synthetic dataset, 64x64, ~11 minutes on 2 cores):
  python train.py --config=configs/base.py:demo --workdir=/tmp/base_demo
  python evaluate.py --config=configs/base.py:demo --workdir=/tmp/base_demo

Variants (the part after the colon):
  (none)  paper setting: 256x256 crops from images resized to shorter side 320, batch 8,
          Adam 2e-4 (GM-SRM §IV-A). Meant for a GPU/TPU job on a real dataset, e.g.
          --config.data.name=image_folder --config.data.manual_dir=/path/to/images.
  demo    64x64 synthetic scenes, small widths, 2,000 steps of short_run_recipe and
          structure_recipe; ~11 minutes on 2 CPU cores with the evaluation, ahead of the
          classical methods at every setting (docs/QUALITY.md, docs/PERFORMANCE.md).
  tiny    32x32, a few channels; used by the tests, seconds per run.
"""

import ml_collections


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.task = "inpainting"  # gmsrm_jax/train/tasks.py

  # Data (GM-SRM §IV-A: resize shorter side to 320, random crop 256, random flip).
  config.data = ml_collections.ConfigDict()
  config.data.name = "synthetic_scenes"  # or "image_folder" for a user's own images.
  config.data.builder_config = ""  # TFDS builder config, e.g. "64" for synthetic_scenes/64.
  config.data.data_dir = ""  # TFDS data_dir; "" -> $TFDS_DATA_DIR or ~/tensorflow_datasets.
  config.data.manual_dir = ""  # image_folder only: the directory of the user's images.
  config.data.train_split = "train"
  config.data.eval_split = "test"
  config.data.resize_shorter = 320
  config.data.crop_size = 256
  config.data.random_flip = True
  config.data.num_threads = 8  # Host threads that decode/augment/mask ahead of the step.
  config.data.prefetch = 4  # Batches prepared ahead.

  # Masks (1 = hole, 0 = known). Training mixes irregular (free-form) and regular (rectangles).
  config.masks = ml_collections.ConfigDict()
  config.masks.irregular_prob = 0.5
  config.masks.hole_ratio_range = (0.0, 0.6)  # Rejection-sample masks into this range.
  # "natural": one draw, rejected until in range (mean ratio ~0.17, none above 0.5);
  # "overlay": draws overlaid up to a target ratio drawn uniformly in the range (mean ~0.38).
  # gmsrm_jax/masks/sampling.py training_mask.
  config.masks.ratio_sampling = "natural"
  config.masks.free_form = ml_collections.ConfigDict()
  config.masks.free_form.max_strokes = 8
  config.masks.free_form.max_vertices = 12
  config.masks.free_form.max_width_frac = 0.08  # Brush width as a fraction of image side.
  config.masks.free_form.max_boxes = 3
  config.masks.rect = ml_collections.ConfigDict()
  config.masks.rect.max_boxes = 3
  config.masks.rect.min_frac = 0.1  # Box side as a fraction of image side.
  config.masks.rect.max_frac = 0.5

  # Model: the base encoder-decoder (eqs. 2 and 6 without the memory term).
  config.model = ml_collections.ConfigDict()
  config.model.name = "base"
  config.model.encoder_channels = (64, 128, 256, 512)  # One stride-2 residual block each.
  config.model.stem_channels = 32
  config.model.ca_reduction = 16  # Squeeze-excitation reduction of the channel attention.
  # The stem's full-resolution features beside the decoder's at the output conv.
  config.model.output_skip = True
  # "zero": holes zeroed in the input (eq. 1); "pyramid": filled by a smooth push-pull
  # completion first (models/base.py network_input). residual_output: predict a correction
  # of that fill instead of the image (needs "pyramid"). docs/QUALITY.md measures both.
  config.model.hole_fill = "zero"
  config.model.fill_iterations = 8  # Jacobi steps per pyramid level of the "pyramid" fill.
  # Then Richardson steps per level towards biharmonic inpainting (base.pyramid_fill).
  config.model.fill_biharmonic_iterations = 0
  config.model.residual_output = False

  # Discriminator: spectral-normalised conditional PatchGAN (eqs. 12-13).
  config.disc = ml_collections.ConfigDict()
  config.disc.channels = (64, 128, 256, 256)

  # Losses (eq. 14): lambda_1 * L_rec + lambda_3 * L_adv; gamma from eq. 10.
  config.loss = ml_collections.ConfigDict()
  config.loss.objective = "gmsrm"  # gmsrm_jax/objectives.py
  config.loss.gamma = 10.0
  config.loss.rec_weight = 1.0
  config.loss.adv_weight = 0.01
  # Weight of 1 - SSIM of the composited output (losses.structural_loss), added to any
  # objective; neither paper has it (DESIGN Q14).
  config.loss.ssim_weight = 0.0

  config.optim = ml_collections.ConfigDict()
  config.optim.learning_rate = 2e-4
  config.optim.b1 = 0.9  # Paper says only "Adam": PyTorch defaults (DESIGN.md).
  config.optim.b2 = 0.999
  config.optim.d_learning_rate = 2e-4
  # "constant" (the papers) or "cosine": warm-up, then decay to final_lr_fraction x the rate at
  # train.num_steps, for both G and D (train/state.py learning_rate).
  config.optim.schedule = "constant"
  config.optim.warmup_steps = 0
  config.optim.final_lr_fraction = 0.0

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 8  # Global batch, split over all devices of all processes.
  config.train.num_steps = 1_000_000
  config.train.ema_decay = 0.999
  # Decay min(ema_decay, (1 + t) / (10 + t)) at step t (train/step.py ema_decay_at), so a short
  # run's EMA is not mostly its random initialisation (docs/QUALITY.md).
  config.train.ema_warmup = True
  # "bfloat16": convolutions and activations in bf16, params, optimizer state, EMA, carried
  # statistics and loss reductions in float32 (gmsrm_jax/precision.py, DESIGN P1).
  config.train.compute_dtype = "float32"
  config.train.log_every = 100
  config.train.sample_every = 5000
  config.train.checkpoint_every = 5000
  config.train.max_to_keep = 3
  config.train.eval_every = 0  # 0: only evaluate.py evaluates.
  # JAX's persistent compilation cache ("" = off): a rerun, resume or second job with the
  # same programs loads the compiled step instead of compiling it (docs/TRAINING.md).
  config.train.compilation_cache_dir = ""
  # JAX transfer guard level for device-to-host reads in the body of every step ("allow",
  # "log", "disallow", "log_explicit", "disallow_explicit"): the loop reads device values only
  # at log and checkpoint steps, and "log" names any read that creeps in.
  config.train.device_to_host_guard = "allow"

  config.eval = ml_collections.ConfigDict()
  config.eval.num_images = 1000  # Test images per mask bin.
  config.eval.batch_size = 8
  config.eval.mask_dir = ""  # Optional external test masks (e.g. PConv); "" -> generated masks.
  config.eval.mask_invert = False  # Set when the folder's masks mark holes with 0.
  # Seeds the generated test masks apart from config.seed, so runs trained with different seeds
  # are measured on the same masks; -1 follows config.seed (what runs saved before it did).
  config.eval.mask_seed = 0
  config.eval.use_ema = True
  # GM-SRM Table I (irregular, 10% bins) and Table II (center masks). CICM's tables use the
  # bins "0-20", "20-40", "40-60" instead.
  config.eval.mask_bins = ("20-30", "30-40", "40-50", "50-60")
  config.eval.center_ratios = (0.25, 0.5)
  # Paper table layouts to write (gmsrm_jax/evaluation.py TABLES; docs/REPRODUCE.md); their
  # mask settings are evaluated in addition to the ones above.
  config.eval.tables = ()
  config.eval.method_name = ""  # Row label in those tables; "" -> config.model.name.
  # Classical inpainting run on the same images and masks, as rows beside the model
  # (gmsrm_jax/baselines.py: "telea", "navier_stokes", "biharmonic"). Off here: biharmonic
  # costs ~1 s per 256x256 image on one core, hours for 1000 images x 7 mask settings.
  config.eval.baselines = ()
  # Converted weights (docs/WEIGHTS.md). "" -> LPIPS / FID reported as unavailable.
  config.eval.lpips_weights = ""
  config.eval.lpips_net = "alex"  # LPIPS backbone: "alex" (the LPIPS default) or "vgg".
  config.eval.fid_weights = ""
  config.eval.fid_image_size = 299  # FID's definition; smaller sizes are not FID (tests only).

  if variant in (None, ""):
    config.eval.tables = ("gmsrm_table1", "gmsrm_table2", "gmsrm_table4")
  elif variant == "demo":
    # 2,000 steps with short_run_recipe and structure_recipe: ahead of biharmonic inpainting's
    # PSNR and SSIM at every setting of the validation split, three seeds, by more than 3,000
    # steps with short_run_recipe alone were (DESIGN Q16, docs/QUALITY.md).
    _shrink(config, image=64, resize=72, widths=(32, 64, 128), stem=16,
            disc=(32, 64, 128), steps=2000, batch=16)
    config.data.builder_config = "64"
    config.data.num_threads = 2  # More threads than cores measured slower on 2-core hosts.
    config.train.log_every = 100
    config.train.sample_every = 1000
    config.train.checkpoint_every = 1000
    config.eval.num_images = 64
    config.eval.baselines = ("telea", "navier_stokes", "biharmonic")  # ~30 s in all.
    short_run_recipe(config)
    structure_recipe(config)
  elif variant == "tiny":
    _shrink(config, image=32, resize=36, widths=(8, 16), stem=8, disc=(8, 16),
            steps=4, batch=8)
    config.data.builder_config = "tiny"
    config.data.num_threads = 2
    config.model.ca_reduction = 4
    config.train.log_every = 2
    config.train.sample_every = 2
    config.train.checkpoint_every = 2
    config.eval.num_images = 8
    config.eval.batch_size = 8
    config.eval.mask_bins = ("20-30", "50-60")
    config.eval.center_ratios = (0.25,)
  else:
    raise ValueError(f"Unknown variant {variant!r}; use one of '', 'demo', 'tiny'.")
  return config


def short_run_recipe(config: ml_collections.ConfigDict) -> None:
  """What a CPU-minutes run needs to beat classical inpainting (docs/QUALITY.md, DESIGN Q3-Q6,
  Q11): the smooth pyramid prior relaxed towards biharmonic inpainting, with a residual output,
  training masks up to the 60% the tables test, a higher learning rate with warm-up and cosine
  decay, and no adversarial term (weight 0.01 measured the same to 0.05 dB, and without it the
  step skips the discriminator: -24% FLOPs). The paper variants keep the papers' settings."""
  config.model.hole_fill = "pyramid"
  config.model.fill_iterations = 32
  config.model.fill_biharmonic_iterations = 64
  config.model.residual_output = True
  config.masks.ratio_sampling = "overlay"
  config.optim.learning_rate = config.optim.d_learning_rate = 2e-3
  config.optim.schedule = "cosine"
  config.optim.warmup_steps = 100
  config.loss.adv_weight = 0.0


def structure_recipe(config: ml_collections.ConfigDict) -> None:
  """short_run_recipe's prior relaxed further towards biharmonic inpainting (64 Jacobi + 256
  Richardson steps per pyramid level) and the 1 - SSIM term at weight 10 (DESIGN Q14-Q16):
  with eq. 5 or eq. 10 alone the UNet-CICM and GM-SRM demos stayed level with biharmonic
  inpainting's SSIM or below it at 30-60% holes on the validation split; with both they are
  ahead at every setting, GM-SRM's in 600 steps instead of 1,500 and the base model's in
  2,000 instead of 3,000 (docs/QUALITY.md). Every demo variant inherits it from this one."""
  config.model.fill_iterations = 64
  config.model.fill_biharmonic_iterations = 256
  config.loss.ssim_weight = 10.0


def _shrink(config, *, image, resize, widths, stem, disc, steps, batch):
  config.data.crop_size = image
  config.data.resize_shorter = resize
  config.model.encoder_channels = widths
  config.model.stem_channels = stem
  config.disc.channels = disc
  config.train.num_steps = steps
  config.train.batch_size = batch
