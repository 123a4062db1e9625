"""The GM-SRM base encoder-decoder ("Base model", GM-SRM Table IV).

Encoder: a full-resolution stem, then one stride-2 residual block (eq. 2) per entry of
`encoder_channels`. Decoder: one upsampling block (eq. 6 without the memory term) per encoder
block, each fed with the encoder features of the resolution it upsamples from (U-Net style skip).
The output conv maps to RGB in [-1, 1]; compositing with the known pixels is done by the caller
(`composite`), so the raw prediction stays available for the reconstruction loss.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from gmsrm_jax.models import layers


def composite(prediction: jax.Array, image: jax.Array, mask: jax.Array) -> jax.Array:
  """Known pixels from `image`, holes (mask == 1) from `prediction`."""
  return mask * prediction + (1.0 - mask) * image


def masked_input(image: jax.Array, mask: jax.Array) -> jax.Array:
  """Eq. 1 / Algorithm 1 line 2: the encoder sees Concat[I_in, M_in] with holes zeroed."""
  return jnp.concatenate([image * (1.0 - mask), mask], axis=-1)


class Encoder(nn.Module):
  """Returns the feature pyramid [stem (full res), 1/2, 1/4, ...] (F_E^i of eq. 2)."""

  encoder_channels: Sequence[int]
  stem_channels: int
  ca_reduction: int = 16

  @nn.compact
  def __call__(self, x: jax.Array) -> list[jax.Array]:
    features = [layers.ConvNormReLU(self.stem_channels, kernel_size=7, name="stem")(x)]
    for i, channels in enumerate(self.encoder_channels):
      features.append(layers.ResidualBlock(channels, strides=2, ca_reduction=self.ca_reduction,
                                           name=f"block_{i}")(features[-1]))
    return features


class Decoder(nn.Module):
  """Upsamples the bottleneck back to full resolution (eq. 6).

  `extra` optionally maps a pyramid level to more features to concatenate before that level's
  upsampling block. A model whose extra features depend on the decoder's own outputs (GM-SRM's
  progressive reasoning, eq. 7) runs the blocks one at a time with `level` and `inputs`.
  """

  encoder_channels: Sequence[int]
  stem_channels: int
  ca_reduction: int = 16

  def setup(self):
    widths = (self.stem_channels, *self.encoder_channels)
    self.blocks = [layers.DecoderBlock(widths[level], ca_reduction=self.ca_reduction,
                                       name=f"block_{level}")
                   for level in range(len(self.encoder_channels))]

  def __call__(self, features: Sequence[jax.Array],
               extra: dict[int, jax.Array] | None = None) -> jax.Array:
    extra = extra or {}
    num_levels = len(self.encoder_channels)
    decoded = features[num_levels]
    for level in reversed(range(num_levels)):
      inputs = self.inputs(features, level, decoded)
      if level + 1 in extra:
        inputs.append(extra[level + 1])
      decoded = self.level(level, inputs)
    return jnp.concatenate([decoded, features[0]], axis=-1)

  def inputs(self, features: Sequence[jax.Array], level: int, decoded: jax.Array
             ) -> list[jax.Array]:
    """[F_D, F_E] read by the block that upsamples to `level` (from level + 1)."""
    source = level + 1
    # The bottleneck is `decoded` itself: no duplicate skip.
    return [decoded] if source == len(self.encoder_channels) else [decoded, features[source]]

  def level(self, level: int, inputs: Sequence[jax.Array]) -> jax.Array:
    """The block from resolution level `level + 1` to `level` on the concatenated `inputs`."""
    return self.blocks[level](inputs)


class BaseInpaintingNet(nn.Module):
  """Predicts the full image from the masked image and the mask (1 = hole)."""

  encoder_channels: Sequence[int]
  stem_channels: int
  ca_reduction: int = 16

  @nn.compact
  def __call__(self, image: jax.Array, mask: jax.Array, *, train: bool = False
               ) -> tuple[jax.Array, dict[str, Any]]:
    del train  # No train/eval difference in the base model (instance norm, no dropout).
    features = Encoder(self.encoder_channels, self.stem_channels, self.ca_reduction,
                       name="encoder")(masked_input(image, mask))
    decoded = Decoder(self.encoder_channels, self.stem_channels, self.ca_reduction,
                      name="decoder")(features)
    prediction = jnp.tanh(layers.Conv(3, (3, 3), padding="SAME", name="out_conv")(decoded))
    return prediction, {}
