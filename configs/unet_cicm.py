"""UNet-CICM (Feng et al., NeurIPS 2022): a 15-conv UNet with Cross-Image Context Memory.

Run (CPU demo on the embedded synthetic dataset, 64x64):
  python -m gmsrm_jax.data.prepare --dataset=synthetic_scenes/64
  python train.py --config=configs/unet_cicm.py:demo --workdir=/tmp/unet_cicm_demo
  python evaluate.py --config=configs/unet_cicm.py:demo --workdir=/tmp/unet_cicm_demo
The same run without CICM (the "UNet" row of Table 3): --config=configs/unet_cicm.py:demo,unet.
Measured results of that pair: docs/CICM_RESULTS.md.

The argument is "<variant>[,<ablation>]".
Variants:
  (none)   paper setting (§5): 256x256, UNet widths 64-128-256-512 (32x32x512 bottleneck, the
           regions), L = 13 sets of K = 40 features, batch 8, Adam 2e-4; synthetic scenes.
  places2  the same on Places2 (TFDS places365_small, prepared from the user's download by the
           issue-#5 builders; loading fails at once with the command when not prepared).
  celeba   the same on CelebA (TFDS celeb_a, same remark).
  demo     64x64 synthetic scenes, small widths, the paper's memory size, plus a 1 - SSIM
           loss term and a finer prior (DESIGN Q15); 1,500 steps.
  tiny     32x32, a few channels, a small memory; used by the tests, seconds.
Ablations (Tables 1-3 of the paper; each row is one override of the full model):
  w_o_intra, w_o_inter         Table 1, context generalization without L_intra / L_inter
  top1_update, top50_update    Table 1, eq. 2 injects into the top-1 / top-50% features only
  w_o_ratio, w_gt              Table 1, eq. 4 with gamma = 1 / with the ground-truth ratio
  top1_aug, top50_aug          Table 1, eq. 4 mixes the top-1 / top-50% features only
  anchor_only, kmeans          Table 2, single-image context: the anchors as cluster centres /
                               per-image k-means from the anchors
  merged_sets                  Table 2, cross-image context without the anchors
  unet                         Table 3, the same UNet without CICM
  base_cicm                    Table 3's point on the GM-SRM base encoder-decoder + CICM
  paper_exact                  eqs. 1-4 and 8 literally (no normalization; DESIGN.md)
Rows "intra & inter", "100% update", "w/ ratio", "100% aug" and "CICM" are the full model.
"""

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant, _, ablation = (arg or "").partition(",")
  if variant not in ("", "places2", "celeba", "demo", "tiny"):
    raise ValueError(f"Unknown variant {variant!r}; use '', 'places2', 'celeba', 'demo' or "
                     "'tiny' (optionally followed by ',<ablation>').")
  config = base.get_config(variant if variant in ("demo", "tiny") else "")

  if variant in ("", "places2", "celeba"):
    # §5: 256x256 inputs; shorter side resized to 256 first (Places2 ships 256x256 images).
    config.data.resize_shorter = 256
    config.data.crop_size = 256
  if variant == "places2":
    config.data.name = "places365_small"
    config.data.eval_split = "validation"  # Places365's labelled test images (docs/REPRODUCE.md).
  elif variant == "celeba":
    config.data.name = "celeb_a"

  config.model.name = "unet_cicm"
  if variant == "demo":
    # docs/CICM_RESULTS.md's budget. The base demo's structure_recipe (DESIGN Q15): with
    # short_run_recipe's 32:64 prior and eq. 5 alone the UNet stayed below biharmonic
    # inpainting's SSIM; the SSIM term and the prior's finer relaxation lift it.
    config.train.num_steps = 1500
  config.model.unet_channels = {"demo": (16, 32, 64, 64), "tiny": (8, 8, 16, 16)}.get(
      variant, (64, 128, 256, 512))
  config.model.cicm = memory_config(tiny=variant == "tiny")

  config.disc.logit_bias = False  # Cancels in eq. 6 (see models/discriminator.py).

  # Eq. 9 with λ1..λ5 = 1.0, 0.1, 1.0, 20, 0.5.
  config.loss.objective = "cicm"
  del config.loss.rec_weight
  config.loss.inpaint_weight = 1.0
  config.loss.inpaint_form = "l2"  # Eq. 5; "hole_weighted_l1" weighs hole pixels by loss.gamma.
  # The demo keeps short_run_recipe's 0: at its learning rate (2e-3) λ2 = 0.1 cost 6-8 dB at
  # 0-20% holes, with coloured streaks in the fills (docs/CICM_RESULTS.md, issue #12).
  config.loss.adv_weight = 0.0 if variant == "demo" else 0.1
  set_memory_loss_weights(config.loss)

  # The memory is built from the online weights' features, so evaluate those weights (the paper
  # has no EMA); the EMA is still kept in the state.
  config.eval.use_ema = False
  config.eval.mask_bins = ("0-20", "20-40", "40-60")  # The CICM tables' columns.
  config.eval.center_ratios = ()
  config.eval.tables = ("cicm",)  # Also writes the paper's row layout (evaluation.TABLES).

  if ablation:
    if ablation not in ABLATIONS:
      raise ValueError(f"Unknown ablation {ablation!r}; known: {sorted(ABLATIONS)}.")
    ABLATIONS[ablation](config)
  return config


def memory_config(tiny: bool = False) -> ml_collections.ConfigDict:
  """`config.model.cicm`: the paper's memory (§5), or a small one for the tests."""
  cicm = ml_collections.ConfigDict()
  cicm.num_sets = 5 if tiny else 13  # L (§5.1, Figure 3).
  cicm.set_size = 8 if tiny else 40  # K.
  cicm.momentum = 0.5  # beta, eq. 3.
  cicm.normalized = True  # False: paper-exact eqs. 1-4 and 8 (unbounded memory; DESIGN.md).
  cicm.temperature = 0.1  # Normalized mode only: softmax over cosine / temperature.
  cicm.update_features = "all"  # Eq. 2: "all" | "top50" | "top1" features of the chosen set.
  cicm.augment_features = "all"  # Eq. 4: "all" | "top50" | "top1".
  cicm.context = "cross_image"  # | "merged_sets" | "anchor_only" | "kmeans" (Table 2).
  cicm.kmeans_iterations = 10  # "kmeans" only: Lloyd iterations per image.
  cicm.ratio = "predicted"  # gamma in eq. 4: "predicted" | "one" | "ground_truth".
  cicm.eq4_as_printed = False  # True: eq. 4 exactly as printed (gamma weighs F_m).
  cicm.feature_module = ""  # "" -> the backbone's lowest-resolution feature map.
  return cicm


def set_memory_loss_weights(loss: ml_collections.ConfigDict) -> None:
  """λ3, λ4, λ5 of CICM eq. 9: ratio (eq. 7), inter and intra (eq. 8); eq. 9 subtracts
  λ5·L_intra, so intra_weight = -λ5."""
  loss.ratio_weight = 1.0
  loss.inter_weight = 20.0
  loss.intra_weight = -0.5


def _set(**fields):
  """An override that sets dotted fields: _set(**{"model.cicm.update_features": "top1"})."""

  def apply(config):
    for dotted, value in fields.items():
      *parents, leaf = dotted.split(".")
      node = config
      for parent in parents:
        node = node[parent]
      node[leaf] = value

  return apply


def _without_cicm(config):
  config.model.name = "unet"
  for name in ("ratio_weight", "inter_weight", "intra_weight"):
    del config.loss[name]


def _base_cicm(config):
  # The GM-SRM base network's widths, bottleneck at the same resolution as the UNet's.
  config.model.name = "base_cicm"
  config.model.encoder_channels = tuple(config.model.unet_channels[1:])


ABLATIONS = {
    "w_o_intra": _set(**{"loss.intra_weight": 0.0}),
    "w_o_inter": _set(**{"loss.inter_weight": 0.0}),
    "top1_update": _set(**{"model.cicm.update_features": "top1"}),
    "top50_update": _set(**{"model.cicm.update_features": "top50"}),
    # gamma no longer comes from the ratio head, so its loss would only perturb the encoder.
    "w_o_ratio": _set(**{"model.cicm.ratio": "one", "loss.ratio_weight": 0.0}),
    "w_gt": _set(**{"model.cicm.ratio": "ground_truth", "loss.ratio_weight": 0.0}),
    "top1_aug": _set(**{"model.cicm.augment_features": "top1"}),
    "top50_aug": _set(**{"model.cicm.augment_features": "top50"}),
    "anchor_only": _set(**{"model.cicm.context": "anchor_only"}),
    "kmeans": _set(**{"model.cicm.context": "kmeans"}),
    "merged_sets": _set(**{"model.cicm.context": "merged_sets"}),
    "unet": _without_cicm,
    "base_cicm": _base_cicm,
    "paper_exact": _set(**{"model.cicm.normalized": False}),
}
