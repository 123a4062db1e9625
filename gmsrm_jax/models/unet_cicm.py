"""The UNet backbone of CICM (§5.2: "a UNet with 15 convolutional layers") and UNet-CICM.

15 convolutions for four resolution levels (channels c0..c3, image size / 1, 2, 4, 8):
  encoder   enc_0 (c0), then per lower level: down_i (stride 2) + enc_i          1 + 3*2 = 7
  bottleneck conv at 1/8 resolution (its output is CICM's regional feature map)  1
  decoder   per level: bilinear x2 upsampling, concat the encoder skip, up_i + dec_i  3*2 = 6
  output    3x3 conv to RGB, tanh                                               1
At 256x256 with c3 = 512 the bottleneck is the 32x32x512 map of the paper-size benchmark.
Every conv but the bottleneck and the output one is conv + instance norm + ReLU
(`layers.ConvNormReLU`), the unit of the foundation network; the bottleneck has no ReLU.
UNet-CICM is this backbone wrapped by `cicm_module.WithCICM` at "bottleneck"
(`models.create_generator` with model.name "unet_cicm").
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from gmsrm_jax.models import layers
from gmsrm_jax.models.base import in_compute_dtype, network_input, output_head

FEATURE_MODULE = "bottleneck"  # Where CICM reads and replaces the features.


class Bottleneck(nn.Module):
  """Conv + instance norm, no ReLU: the regional features F_n of CICM.

  Zero-mean channels let dot products be negative, so different sets can point in opposite
  directions (eq. 8's L_inter cannot fall below that of non-negative vectors otherwise).
  """

  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    # No bias: instance norm removes it (see layers.ConvNormReLU).
    x = layers.Conv(self.features, (3, 3), padding="SAME", use_bias=False, name="conv")(x)
    return nn.InstanceNorm(name="norm")(x)


class UNet(nn.Module):
  """Predicts the full image from the masked image and the mask (1 = hole); no memory."""

  channels: Sequence[int] = (64, 128, 256, 512)
  hole_fill: str = "zero"  # base.network_input
  fill_iterations: int = 8  # base.pyramid_fill's smoothing_iterations
  fill_biharmonic_iterations: int = 0  # base.pyramid_fill's biharmonic_iterations
  residual_output: bool = False  # base.output_head

  @nn.compact
  def __call__(self, image: jax.Array, mask: jax.Array, *, train: bool = False,
               compute_dtype: Any | None = None) -> tuple[jax.Array, dict[str, Any]]:
    del train  # Instance norm, no dropout: nothing differs between training and inference.
    encoder_input, prior = network_input(
        image, mask, self.hole_fill, self.fill_iterations, self.fill_biharmonic_iterations)
    x = layers.ConvNormReLU(self.channels[0], name="enc_0")(
        in_compute_dtype(encoder_input, compute_dtype))
    skips = [x]
    for level, width in enumerate(self.channels[1:], start=1):
      x = layers.ConvNormReLU(width, strides=2, name=f"down_{level}")(x)
      x = layers.ConvNormReLU(width, name=f"enc_{level}")(x)
      skips.append(x)
    x = Bottleneck(self.channels[-1], name=FEATURE_MODULE)(x)
    for level in reversed(range(len(self.channels) - 1)):
      x = jnp.concatenate([layers.upsample_bilinear(x), skips[level]], axis=-1)
      x = layers.ConvNormReLU(self.channels[level], name=f"up_{level}")(x)
      x = layers.ConvNormReLU(self.channels[level], name=f"dec_{level}")(x)
    return output_head(x, prior, self.residual_output), {}

