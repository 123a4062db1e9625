"""GM-SRM stage 2 (§III, Algorithm 1): the encoder-decoder guided by the frozen generative memory.

Both stages and the evaluation from one command (CPU, synthetic scenes, ~9 minutes on 2 cores):
  python -m gmsrm_jax.pipeline --config=configs/gmsrm.py:demo --workdir=runs/gmsrm_demo
Stage 2 alone, given a stage-1 export (docs/TRAINING.md has every dataset's commands):
  python train.py --config=configs/gmsrm.py:demo --workdir=runs/gmsrm_demo \
      --config.model.memory.path=runs/memory_synthetic/memory
  python evaluate.py --config=configs/gmsrm.py:demo --workdir=runs/gmsrm_demo \
      --config.model.memory.path=runs/memory_synthetic/memory

Each config names the stage-1 config whose memory it needs (`model.memory.stage1_config`;
its architecture is copied into `model.memory.architecture` and checked against the export)
and where that export is (`model.memory.path`). A missing export fails at once with the
commands that make it. An export made before issue #13 has the memory's old upsampling form:
load it with --config.model.memory.architecture.upsample=fir_then_conv (DESIGN M5).

The argument is "<variant>[,<ablation>]".
Variants:
  demo (or "")  64x64 synthetic scenes, the base demo's widths, memory from
                configs/memory_synthetic.py (32x32); no perceptual term (λ2 = 0: no VGG-19
                weights on a fresh machine); 600 steps of the base demo's recipes
                (configs/base.py). Results: docs/GMSRM_RESULTS.md, and
                against classical inpainting docs/QUALITY.md.
  tiny          32x32, a few channels, memory_synthetic:tiny (16x16); the tests. λ2 = 0.
  places2, celebahq, paris
                the paper recipe (§IV-A): 256x256 crops from shorter side 320, Adam 2e-4,
                global batch 8, 100 epochs; eq. 14 with λ1..λ4 = 1, 0.1, 0.01, 0.01 (the
                perceptual term needs weights/vgg19.npz, docs/WEIGHTS.md); memory from
                configs/memory_<dataset>.py. GPU/TPU jobs.
Ablations (GM-SRM Table IV rows, and the flagship combination):
  base        the Base model: the same encoder-decoder without memory
  gm_bm       memory queried by c^1 = f_c(F_E) for every block, N(0, 1) noise
  gm_csv      + conditional stochastic variation (eq. 8) and its KL (eq. 9)
  gm_srm      + progressive reasoning (eq. 7): the full model (the default)
  gmsrm_cicm  GM-SRM with CICM's cross-image context memory at the encoder bottleneck
"""

import importlib

import ml_collections

from configs import base
from configs import unet_cicm

# variant -> (stage-1 config, data name, training images: 100 epochs of them, §IV-A)
_PAPER = {
    "places2": ("configs/memory_places2.py", "places2_two_categories", 74_000),
    "celebahq": ("configs/memory_celebahq.py", "celeb_a_hq", 27_000),
    "paris": ("configs/memory_paris.py", "paris_street_view", 14_900),
}
_SYNTHETIC = {"demo": "configs/memory_synthetic.py:demo",
              "tiny": "configs/memory_synthetic.py:tiny"}


def stage1_config(name: str) -> ml_collections.ConfigDict:
  """'configs/memory_x.py[:variant]' -> that config (the configs package, run from the repo)."""
  path, _, variant = name.partition(":")
  module = path.removesuffix(".py").replace("/", ".")
  return importlib.import_module(module).get_config(variant or None)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant, _, ablation = (arg or "").partition(",")
  variant = variant or "demo"
  if variant not in (*_SYNTHETIC, *_PAPER):
    raise ValueError(f"Unknown variant {variant!r}; use one of {sorted([*_SYNTHETIC, *_PAPER])}"
                     " (optionally followed by ',<ablation>').")
  config = base.get_config(variant if variant in _SYNTHETIC else "")
  config.model.name = "gmsrm"
  if variant == "demo":
    # Under a third of the base demo's steps: a GM-SRM step costs ~1.4x a base step and `make
    # demo` also pre-trains the memory (~9 minutes in all). With the base demo's
    # structure_recipe 600 steps are ahead of biharmonic inpainting at every setting of the
    # validation split for three seeds, where 1,500 steps without it were behind its SSIM at
    # 30-40% (DESIGN Q16, docs/QUALITY.md).
    config.train.num_steps = 600

  gmsrm = config.model.gmsrm = ml_collections.ConfigDict()
  gmsrm.conditional_noise = True  # Eq. 8 (False: N(0, 1) noise, GM-BM).
  gmsrm.progressive = True  # Eq. 7 (False: c^1 for every memory block, GM-BM / GM-CSV).
  gmsrm.head_channels = {"tiny": 8, "demo": 32}.get(variant, 64)  # Conv width of f_c, eq. 8.
  gmsrm.kl_layer_weights = ()  # w_i of eq. 9, one per memory noise layer; () -> 1/layers.

  memory = config.model.memory = ml_collections.ConfigDict()
  if variant in _SYNTHETIC:
    memory.stage1_config = _SYNTHETIC[variant]
    memory.path = "runs/memory_synthetic/memory"
  else:
    stage1, data_name, train_images = _PAPER[variant]
    memory.stage1_config = stage1
    memory.path = f"runs/{stage1.split('/')[-1].removesuffix('.py')}/memory"
    config.data.name = data_name
    config.train.num_steps = 100 * train_images // config.train.batch_size  # §IV-A.
  # The architecture the export must have (stage2 refuses any other, naming the field).
  memory.architecture = ml_collections.ConfigDict(
      stage1_config(memory.stage1_config).model.to_dict())

  # Eq. 14: λ1 L_rec + λ2 L_perc + λ3 L_adv + λ4 L_KL (λ1 = rec_weight, λ3 = adv_weight).
  config.loss.kl_weight = 0.01
  config.loss.perceptual_weight = 0.0 if variant in _SYNTHETIC else 0.1
  config.loss.vgg19_weights = "weights/vgg19.npz"  # Converted VGG-19 (docs/WEIGHTS.md).
  config.eval.method_name = ablation or "gm_srm"

  if ablation:
    if ablation not in ABLATIONS:
      raise ValueError(f"Unknown ablation {ablation!r}; known: {sorted(ABLATIONS)}.")
    ABLATIONS[ablation](config)
  return config


def _base_model(config):
  config.model.name = "base"


def _gm_bm(config):
  config.model.gmsrm.conditional_noise = False
  config.model.gmsrm.progressive = False


def _gm_csv(config):
  config.model.gmsrm.progressive = False


def _gmsrm_cicm(config):
  config.model.name = "gmsrm_cicm"
  config.model.cicm = unet_cicm.memory_config(tiny=config.data.crop_size <= 32)
  unet_cicm.set_memory_loss_weights(config.loss)


ABLATIONS = {
    "base": _base_model,
    "gm_bm": _gm_bm,
    "gm_csv": _gm_csv,
    "gm_srm": lambda config: None,
    "gmsrm_cicm": _gmsrm_cicm,
}
