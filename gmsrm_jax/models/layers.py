"""Building blocks shared by the inpainting networks (GM-SRM eqs. 2 and 6)."""

import functools
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def lecun_normal_flat(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
  """flax's default kernel init (LeCun truncated normal, fan-in over all but the last axis),
  drawn as one flat vector and reshaped.

  With jax's partitionable threefry (the default) the values are bit-identical to flax's
  (tested); XLA:CPU compiles a 1-D draw ~7x faster than a 4-D one (0.10 s vs 0.72 s for a
  3x3x8x16 kernel), and every run's init compiles one draw per kernel.
  """
  fan_in = math.prod(shape[:-1])
  # 0.8796... = std of the standard normal truncated to [-2, 2] (flax's variance_scaling).
  stddev = jnp.sqrt(1.0 / fan_in) / jnp.array(0.87962566103423978, dtype)
  flat = jax.random.truncated_normal(key, -2, 2, (math.prod(shape),), dtype)
  return flat.reshape(shape) * stddev


# nn.Conv / nn.Dense with the cheaper-to-compile (same-valued) initializer.
Conv = functools.partial(nn.Conv, kernel_init=lecun_normal_flat)
Dense = functools.partial(nn.Dense, kernel_init=lecun_normal_flat)


class ChannelAttention(nn.Module):
  """Squeeze-and-excitation channel attention (CA in GM-SRM eq. 2, ref. [41])."""

  reduction: int = 16

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    hidden = max(channels // self.reduction, 1)
    squeezed = jnp.mean(x, axis=(1, 2))
    excited = nn.relu(Dense(hidden, name="squeeze")(squeezed))
    scale = nn.sigmoid(Dense(channels, name="excite")(excited))
    return x * scale[:, None, None, :]


class ConvNormReLU(nn.Module):
  """ReLU(IN(Conv(x))): the unit every residual block of eqs. 2 and 6 repeats."""

  features: int
  strides: int = 1
  kernel_size: int = 3

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    # No conv bias: instance norm subtracts the per-channel mean right after, so a bias would
    # get an exactly-zero gradient (in practice rounding noise that Adam amplifies).
    x = Conv(self.features, (self.kernel_size,) * 2, strides=self.strides,
                padding="SAME", use_bias=False, name="conv")(x)
    return nn.relu(nn.InstanceNorm(name="norm")(x))


class ResidualBlock(nn.Module):
  """F' = ReLU(IN(Conv(x))); out = F' + CA(ReLU(IN(Conv(F')))).

  With strides=2 this is the encoder block of eq. 2. The decoder block of eq. 6 is the same block
  applied after bilinear upsampling of the concatenated inputs (see `DecoderBlock`).
  """

  features: int
  strides: int = 1
  ca_reduction: int = 16

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    head = ConvNormReLU(self.features, strides=self.strides, name="head")(x)
    body = ConvNormReLU(self.features, name="body")(head)
    return head + ChannelAttention(self.ca_reduction, name="ca")(body)


def upsample_bilinear(x: jax.Array, factor: int = 2) -> jax.Array:
  b, h, w, c = x.shape
  return jax.image.resize(x, (b, h * factor, w * factor, c), method="bilinear")


class DecoderBlock(nn.Module):
  """Eq. 6: Conv(f_interp(Concat[F_M, F_E, F_D])) -> IN -> ReLU, then the CA residual.

  `inputs` are concatenated on channels before the upsampling, so the memory features F_M (GM-SRM)
  plug in as one more entry without changing this block.
  """

  features: int
  ca_reduction: int = 16

  @nn.compact
  def __call__(self, inputs: Sequence[jax.Array]) -> jax.Array:
    x = jnp.concatenate(list(inputs), axis=-1)
    return ResidualBlock(self.features, ca_reduction=self.ca_reduction,
                         name="block")(upsample_bilinear(x))
