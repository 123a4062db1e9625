"""LPIPS v0.1 (Zhang et al. 2018, [52] in GM-SRM, [46] in CICM): the learned perceptual metric.

The same computation as `lpips.LPIPS(net=..., version="0.1")` of the reference package:

  1. inputs in [-1, 1] go through the ScalingLayer, (x - shift) / scale with
     shift = (-0.030, -0.088, -0.188) and scale = (0.458, 0.448, 0.450);
  2. a frozen ImageNet backbone gives five activations: AlexNet relu1..relu5 (torchvision
     `features[0:2]`, `[2:5]`, `[5:8]`, `[8:10]`, `[10:12]`) or VGG-16 relu1_2, relu2_2,
     relu3_3, relu4_3, relu5_3;
  3. each activation is unit-normalised over channels, x / (||x||_2 + 1e-10), per pixel;
  4. the squared difference of the two images' normalised activations goes through the
     learned linear head of that layer (a 1x1 conv to one channel, no bias, non-negative
     weights; dropout is inactive at evaluation) and is averaged over the spatial positions;
  5. the five layer values are summed: one distance per image pair.

AlexNet ("alex") is the package's default and the backbone its authors recommend as a
forward metric; neither paper names its backbone, so it is ours too (docs/DESIGN.md).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from gmsrm_jax.features import vgg19

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
NORMALIZE_EPS = 1e-10
# The backbone activations of each LPIPS variant, in head order lin0 ... lin4.
ALEXNET_OUTPUTS = ("relu1", "relu2", "relu3", "relu4", "relu5")
VGG16_OUTPUTS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
NETS = ("alex", "vgg")

# Metrics must not depend on the backend's default conv precision (TF32 / bf16 passes).
_PRECISION = jax.lax.Precision.HIGHEST


class AlexNet(nn.Module):
  """torchvision AlexNet `features` up to relu5, returning relu1 ... relu5.

  conv1 11x11/4 pad 2 (64) | maxpool 3/2 | conv2 5x5 pad 2 (192) | maxpool 3/2 |
  conv3 3x3 pad 1 (384) | conv4 3x3 pad 1 (256) | conv5 3x3 pad 1 (256), ReLU after each conv.
  """

  precision: jax.lax.Precision | None = _PRECISION

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    def conv(features, kernel, stride, pad, name):
      return nn.Conv(features, (kernel, kernel), strides=stride, padding=((pad, pad),) * 2,
                     precision=self.precision, name=name)

    out = {}
    x = out["relu1"] = nn.relu(conv(64, 11, 4, 2, "conv1")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2))
    x = out["relu2"] = nn.relu(conv(192, 5, 1, 2, "conv2")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2))
    x = out["relu3"] = nn.relu(conv(384, 3, 1, 1, "conv3")(x))
    x = out["relu4"] = nn.relu(conv(256, 3, 1, 1, "conv4")(x))
    out["relu5"] = nn.relu(conv(256, 3, 1, 1, "conv5")(x))
    return out


def _unit_normalize(x: jax.Array) -> jax.Array:
  return x / (jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True)) + NORMALIZE_EPS)


class LPIPS(nn.Module):
  """LPIPS distance between two batches of [-1, 1] images [B, H, W, 3]; returns [B].

  Parameters: {"net": backbone convs, "lin0" ... "lin4": 1x1 heads}, from
  `gmsrm_jax.weights.load("lpips_alex" | "lpips_vgg", path)`.
  """

  net: str = "alex"

  @nn.compact
  def __call__(self, images0: jax.Array, images1: jax.Array) -> jax.Array:
    if self.net == "alex":
      backbone, outputs = AlexNet(name="net"), ALEXNET_OUTPUTS
    elif self.net == "vgg":
      backbone = vgg19.VGG(vgg19.VGG16_BLOCKS, VGG16_OUTPUTS, precision=_PRECISION, name="net")
      outputs = VGG16_OUTPUTS
    else:
      raise ValueError(f"Unknown LPIPS net {self.net!r}; one of {NETS}.")
    scaled = (jnp.concatenate([images0, images1]) - jnp.asarray(SHIFT)) / jnp.asarray(SCALE)
    # One backbone call on both batches: half the launches, same result per image.
    features = backbone(scaled)
    distance = 0.0
    for k, name in enumerate(outputs):
      f0, f1 = jnp.split(features[name], 2)
      diff = jnp.square(_unit_normalize(f0) - _unit_normalize(f1))
      head = nn.Conv(1, (1, 1), use_bias=False, precision=_PRECISION, name=f"lin{k}")
      distance = distance + jnp.mean(head(diff), axis=(1, 2, 3))
    return distance


def lpips_distance(params, images0: jax.Array, images1: jax.Array, net: str = "alex"
                   ) -> jax.Array:
  """LPIPS per image pair ([-1, 1] images [B, H, W, 3]) -> [B]."""
  return LPIPS(net).apply({"params": params}, images0, images1)

