"""VGG feature extractors in the torchvision layer layout (no batch norm).

VGG-19 feeds the perceptual loss of GM-SRM eq. 11 ("the pretrained VGG-19 network [44]");
VGG-16 is the LPIPS "vgg" backbone. Both are torchvision's `features` stacks: 3x3 convs
(padding 1, bias) with ReLU, 2x2 max pooling (stride 2, floor) after each block. Layers are
named after the papers' convention, `conv{block}_{index}` (conv3_2 is the second conv of
block 3), and activations `relu{block}_{index}`; weights.py maps torchvision's
`features.{i}` indices onto these names.

Frozen networks: parameters are passed in (never in an optimizer) and loaded with
`gmsrm_jax.weights.load`; nothing is downloaded.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# Convs per block: torchvision cfg "D" (VGG-16) and "E" (VGG-19).
VGG16_BLOCKS = (2, 2, 3, 3, 3)
VGG19_BLOCKS = (2, 2, 4, 4, 4)

# ImageNet statistics the torchvision weights were trained with (inputs in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Eq. 11 does not name its layers. relu1_1 ... relu5_1 (the first ReLU of every block), each
# normalised by C*H*W and weighted 1, is the VGG-19 perceptual loss of the inpainting
# literature GM-SRM builds on (EdgeConnect, LISK, CTSDG, MEDFE); see docs/DESIGN.md.
PERCEPTUAL_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


class VGG(nn.Module):
  """torchvision VGG `features` up to the deepest requested activation.

  Attributes:
    blocks: convs per block (VGG16_BLOCKS or VGG19_BLOCKS).
    outputs: activation names to return, `relu{b}_{i}` or `pool{b}`. Only the layers up to
      the deepest one are built, so the parameter tree is a prefix of the full network's.
    precision: lax precision of the convs (None: the backend default; HIGHEST for metrics
      that must not depend on TF32/bf16 convolution defaults of GPUs/TPUs).
  """

  blocks: Sequence[int] = VGG19_BLOCKS
  outputs: Sequence[str] = PERCEPTUAL_LAYERS
  precision: jax.lax.Precision | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    """x: [B, H, W, 3], already normalised for the weights. Returns {name: [B, h, w, C]}."""
    order = [name for b, n in enumerate(self.blocks)
             for name in [f"relu{b + 1}_{i + 1}" for i in range(n)] + [f"pool{b + 1}"]]
    unknown = [name for name in self.outputs if name not in order]
    if unknown:
      raise ValueError(f"Unknown VGG activations {unknown}; known: {order}.")
    last = max(order.index(name) for name in self.outputs)
    features = {}
    channels = 64
    for name in order[:last + 1]:
      if name.startswith("pool"):
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        channels = min(channels * 2, 512)
      else:
        x = nn.relu(nn.Conv(channels, (3, 3), padding=((1, 1), (1, 1)),
                            precision=self.precision, name=name.replace("relu", "conv"))(x))
      if name in self.outputs:
        features[name] = x
    return features


def imagenet_normalize(images: jax.Array) -> jax.Array:
  """[-1, 1] images (the project's convention) -> the input the torchvision weights expect."""
  unit = (images + 1.0) / 2.0
  return (unit - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


def vgg19_features(params, images: jax.Array,
                   layers: Sequence[str] = PERCEPTUAL_LAYERS) -> dict[str, jax.Array]:
  """VGG-19 activations of [-1, 1] images [B, H, W, 3], ImageNet-normalised first.

  `params` is the tree `gmsrm_jax.weights.load("vgg19", path)` returns (all 16 convs); only
  the layers up to the deepest requested one run, in the dtype of `params` (bfloat16 when a
  mixed-precision train step cast them, gmsrm_jax/precision.py; float32 everywhere else).
  """
  weights_dtype = jax.tree.leaves(params)[0].dtype
  return VGG(VGG19_BLOCKS, tuple(layers)).apply(
      {"params": params}, imagenet_normalize(images).astype(weights_dtype))
