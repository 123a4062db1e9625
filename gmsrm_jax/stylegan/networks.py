"""The generative memory M of GM-SRM (§III-B, Fig. 3) as a StyleGAN2 generator, and the
StyleGAN2 residual discriminator used to pre-train it (stage 1).

Generator = MappingNetwork (z -> w) + SynthesisNetwork (one latent per MemoryBlock -> image).
Stage 1 trains both as a GAN. Stage 2 freezes the synthesis network and drives it block by
block (Algorithm 1 line 19, F_M = M(F_E, c, noise)) with the encoder's embeddings c_i in
place of w, the encoder features F_E of each block's resolution and (conditional) noise; see
`SynthesisNetwork.block` and docs/DESIGN.md, "Generative memory".
"""

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gmsrm_jax import config_checks
from gmsrm_jax.stylegan import layers

# Noise per block: one [B, r, r, 1] (or [B, r, r, C]) tensor per synthesis layer of the block.
BlockNoise = Sequence[jax.Array] | None
# How a block's first conv doubles the resolution (`model.upsample`, DESIGN M5): StyleGAN2's
# transposed conv + FIR, the conv at the input resolution ("transposed"), or FIR upsampling
# followed by a 3x3 conv at the output resolution ("fir_then_conv", the form before issue #13).
UPSAMPLE_FORMS = ("transposed", "fir_then_conv")


def upsample_form(model: ml_collections.ConfigDict) -> str:
  """`model.upsample`; architectures saved before the field existed lack it and were made with
  the form config_checks.ADDED_FIELDS names ("fir_then_conv")."""
  return config_checks.added_field(model, "model.upsample")


def channels_at(resolution: int, channel_base: int, channel_max: int) -> int:
  """StyleGAN2's width rule: channels halve as resolution doubles, capped at channel_max."""
  return max(1, min(channel_base // resolution, channel_max))


def block_resolutions(start_resolution: int, resolution: int) -> tuple[int, ...]:
  log_start, log_end = math.log2(start_resolution), math.log2(resolution)
  if not (log_start.is_integer() and log_end.is_integer() and log_end >= log_start):
    raise ValueError(f"Resolutions must be powers of two with start_resolution "
                     f"({start_resolution}) <= resolution ({resolution}).")
  return tuple(2**i for i in range(int(log_start), int(log_end) + 1))


def noise_shapes(resolutions: Sequence[int], batch_size: int,
                 channels: Sequence[int] | None = None) -> list[list[tuple[int, ...]]]:
  """Per memory block, the shape of each of its layers' noise inputs.

  The first block has one synthesis layer, every later block two (upsampling conv + conv).
  Noise has one channel (StyleGAN's, broadcast over the features) unless `channels` gives
  each block's width (per-channel noise, GM-SRM's conditional stochastic variation).
  """
  widths = channels or [1] * len(resolutions)
  return [[(batch_size, r, r, c)] * (1 if i == 0 else 2)
          for i, (r, c) in enumerate(zip(resolutions, widths))]


def sample_noise(key: jax.Array, resolutions: Sequence[int], batch_size: int,
                 channels: Sequence[int] | None = None) -> list[list[jax.Array]]:
  """Standard-normal noise for every layer: StyleGAN's unconditional stochastic variation.

  One draw for the whole network, then split: each random draw is a separate threefry kernel
  for XLA to compile (seconds on CPU for a dozen), while the values are as independent.
  """
  shapes = noise_shapes(resolutions, batch_size, channels)
  sizes = [math.prod(shape) for block in shapes for shape in block]
  flat = iter(jnp.split(jax.random.normal(key, (sum(sizes),)), np.cumsum(sizes)[:-1]))
  return [[next(flat).reshape(shape) for shape in block] for block in shapes]


def truncate(latents: jax.Array, w_avg: jax.Array, psi: float | jax.Array,
             cutoff: int | None = None) -> jax.Array:
  """Truncation trick: w' = w_avg + psi (w - w_avg) on the first `cutoff` blocks (all if None).

  latents [B, num_blocks, w_dim]; psi = 1 returns the latents unchanged, psi = 0 the average.
  """
  truncated = w_avg + psi * (latents - w_avg)
  if cutoff is None:
    return truncated
  blocks = jnp.arange(latents.shape[1])[None, :, None]
  return jnp.where(blocks < cutoff, truncated, latents)


class MappingNetwork(nn.Module):
  """z -> w: pixel-norm of z, then `num_layers` equalized FC + leaky ReLU at lr_mul 0.01."""

  w_dim: int
  num_layers: int = 8
  lr_mul: float = 0.01

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    x = z * jax.lax.rsqrt(jnp.mean(jnp.square(z), axis=-1, keepdims=True) + 1e-8)
    for i in range(self.num_layers):
      x = layers.lrelu_gain(layers.EqualDense(self.w_dim, lr_mul=self.lr_mul, name=f"fc{i}")(x))
    return x


class SynthesisLayer(nn.Module):
  """Modulated 3x3 conv -> + noise * per-channel strength -> + bias -> leaky ReLU.

  `up=True`: the conv is StyleGAN2's upsampling one (output 2H x 2W, `layers.upsample_conv2d`).
  """

  features: int
  up: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, latent: jax.Array, noise: jax.Array | None, *,
               fused: bool) -> jax.Array:
    in_channels = x.shape[-1]
    # Style affine starts at bias 1, so every layer begins unmodulated (s = 1 + small).
    styles = layers.EqualDense(in_channels, bias_init=1.0, name="affine")(latent)
    kernel = self.param("kernel", layers.normal_init(), (3, 3, in_channels, self.features))
    x = layers.modulated_conv(x, kernel / math.sqrt(9 * in_channels), styles, fused=fused,
                              up=self.up)
    if noise is None:
      noise = layers.standard_normal(self.make_rng("noise"), (*x.shape[:3], 1), x.dtype)
    strength = self.param("noise_strength", nn.initializers.zeros, (self.features,))
    x = x + noise.astype(x.dtype) * strength  # Float32 noise must not promote bfloat16 x.
    return layers.lrelu_gain(x + self.param("bias", nn.initializers.zeros, (self.features,)))


class ToRGB(nn.Module):
  """Modulated 1x1 conv to RGB without demodulation (StyleGAN2's tRGB), linear output."""

  @nn.compact
  def __call__(self, x: jax.Array, latent: jax.Array, *, fused: bool) -> jax.Array:
    in_channels = x.shape[-1]
    styles = layers.EqualDense(in_channels, bias_init=1.0, name="affine")(latent)
    kernel = self.param("kernel", layers.normal_init(), (1, 1, in_channels, 3))
    y = layers.modulated_conv(x, kernel / math.sqrt(in_channels), styles, demodulate=False,
                              fused=fused)
    return y + self.param("bias", nn.initializers.zeros, (3,))


def _identity_on_first(channels: int):
  """3x3 kernel init: centre tap = identity from the first `channels` inputs, zero elsewhere."""

  def init(key, shape, dtype=jnp.float32):
    del key
    kernel = np.zeros(shape, np.float32)
    kernel[shape[0] // 2, shape[1] // 2, np.arange(channels), np.arange(channels)] = 1.0
    return jnp.asarray(kernel, dtype)

  return init


class EncoderFusion(nn.Module):
  """Concat[F, F_E] -> 3x3 conv back to F's width (GM-SRM Fig. 3, the "©" of each block).

  Initialised to the identity on F and zero on F_E, so a memory block with encoder features
  computes exactly what the pre-trained block computes without them until stage 2 trains this
  adapter. It is the only part of a memory block stage 2 trains; it never exists in stage 1.
  """

  @nn.compact
  def __call__(self, x: jax.Array, encoder_features: jax.Array) -> jax.Array:
    if encoder_features.shape[:3] != x.shape[:3]:
      raise ValueError(f"Encoder features {encoder_features.shape} do not match the memory "
                       f"features {x.shape} in batch and resolution.")
    channels = x.shape[-1]
    conv = nn.Conv(channels, (3, 3), padding="SAME", kernel_init=_identity_on_first(channels),
                   name="conv")
    return conv(jnp.concatenate([x, encoder_features.astype(x.dtype)], axis=-1))


class MemoryBlock(nn.Module):
  """One resolution of the memory: (F_{i-1}, c_i, noise_i, F_E^i) -> (F_M^i, RGB skip).

  The first block starts from a learned constant at `resolution`; later blocks double F_{i-1}'s
  resolution in their first conv (StyleGAN2's upsampling conv), or with `upsample`
  "fir_then_conv" FIR-upsample F_{i-1} before it. Encoder features, when given, are fused into
  the block's first map at `resolution` (after the upsampling conv; before the first conv in
  the first block and in "fir_then_conv"), so the memory's own layers after it reason over them.
  """

  features: int
  resolution: int
  is_first: bool
  upsample: str = "transposed"  # One of UPSAMPLE_FORMS.

  @nn.compact
  def __call__(self, previous: jax.Array | None, rgb: jax.Array | None, latent: jax.Array,
               noise: BlockNoise = None, encoder_features: jax.Array | None = None, *,
               fused: bool = False) -> tuple[jax.Array, jax.Array]:
    if self.upsample not in UPSAMPLE_FORMS:
      raise ValueError(f"Unknown upsample form {self.upsample!r}; known: {UPSAMPLE_FORMS}.")
    up_conv = not self.is_first and self.upsample == "transposed"
    if self.is_first:
      const = self.param("const", layers.normal_init(),
                         (self.resolution, self.resolution, self.features))
      x = jnp.broadcast_to(const, (latent.shape[0], *const.shape)).astype(latent.dtype)
      convs = [SynthesisLayer(self.features, name="conv1")]
    else:
      x = previous if up_conv else layers.upsample_2x(previous)
      convs = [SynthesisLayer(self.features, up=up_conv, name="conv0"),
               SynthesisLayer(self.features, name="conv1")]
    if noise is not None and len(noise) != len(convs):
      raise ValueError(f"Block at {self.resolution}^2 has {len(convs)} noise inputs, got "
                       f"{len(noise)}.")
    fusion_before = 1 if up_conv else 0  # The first conv whose input is at `resolution`.
    for j, conv in enumerate(convs):
      if j == fusion_before and encoder_features is not None:
        x = EncoderFusion(name="encoder_fusion")(x, encoder_features)
      x = conv(x, latent, None if noise is None else noise[j], fused=fused)
    skip = ToRGB(name="to_rgb")(x, latent, fused=fused)
    if rgb is not None:
      skip = skip + layers.upsample_2x(rgb)
    return x, skip


class SynthesisNetwork(nn.Module):
  """The memory's synthesis network: MemoryBlocks from `start_resolution` to `resolution`.

  Exposes every block's output F_M^r (before toRGB) per resolution, and runs either whole
  (`__call__`, stage 1 and sampling) or one block at a time (`block`, stage 2's progressive
  reasoning interleaved with the decoder, Algorithm 1 lines 13-21).
  """

  resolution: int
  start_resolution: int = 4
  channel_base: int = 16384
  channel_max: int = 512
  upsample: str = "transposed"  # One of UPSAMPLE_FORMS (MemoryBlock).

  @property
  def resolutions(self) -> tuple[int, ...]:
    return block_resolutions(self.start_resolution, self.resolution)

  @property
  def num_blocks(self) -> int:
    return len(self.resolutions)

  def channels(self, resolution: int) -> int:
    return channels_at(resolution, self.channel_base, self.channel_max)

  def setup(self):
    self.blocks = [MemoryBlock(self.channels(r), r, is_first=i == 0, upsample=self.upsample,
                               name=f"b{r}")
                   for i, r in enumerate(self.resolutions)]

  def __call__(self, latents: jax.Array, *, noise: Sequence[BlockNoise] | None = None,
               encoder_features: dict[int, jax.Array] | None = None, fused: bool = False
               ) -> tuple[jax.Array, dict[int, jax.Array]]:
    """latents [B, num_blocks, w_dim] -> (RGB image [B, R, R, 3], {resolution: F_M^r}).

    `noise[i]` is block i's list of per-layer noise (None: all drawn from the 'noise' RNG);
    `encoder_features` maps a resolution to F_E at that resolution (absent in stage 1).
    """
    if latents.shape[1] != self.num_blocks:
      raise ValueError(f"Expected {self.num_blocks} latents per sample (one per block), got "
                       f"{latents.shape[1]}.")
    encoder_features = encoder_features or {}
    if noise is None:
      noise = sample_noise(self.make_rng("noise"), self.resolutions, latents.shape[0])
    features, x, rgb = {}, None, None
    for i, r in enumerate(self.resolutions):
      x, rgb = self.block(i, x, rgb, latents[:, i], noise[i], encoder_features.get(r),
                          fused=fused)
      features[r] = x
    return rgb, features

  def block(self, index: int, previous: jax.Array | None, rgb: jax.Array | None,
            latent: jax.Array, noise: BlockNoise = None,
            encoder_features: jax.Array | None = None, *, fused: bool = False
            ) -> tuple[jax.Array, jax.Array]:
    """Block `index` alone: M(F_E, c, noise) of Algorithm 1 line 19 -> (F_M, RGB skip).

    `previous`/`rgb` are the outputs of block index - 1 (None for block 0).
    """
    return self.blocks[index](previous, rgb, latent, noise, encoder_features, fused=fused)


class Generator(nn.Module):
  """Stage-1 generator: mapping + synthesis. Parameters: {'mapping': ..., 'synthesis': ...}."""

  z_dim: int
  w_dim: int
  resolution: int
  start_resolution: int = 4
  channel_base: int = 16384
  channel_max: int = 512
  mapping_layers: int = 8
  mapping_lr_mul: float = 0.01
  upsample: str = "transposed"  # One of UPSAMPLE_FORMS (MemoryBlock).

  def setup(self):
    self.mapping = MappingNetwork(self.w_dim, self.mapping_layers, self.mapping_lr_mul)
    self.synthesis = SynthesisNetwork(self.resolution, self.start_resolution,
                                      self.channel_base, self.channel_max, self.upsample)

  @property
  def num_blocks(self) -> int:
    return len(block_resolutions(self.start_resolution, self.resolution))

  def latents(self, z: jax.Array) -> jax.Array:
    """z [B, z_dim] -> the same w for every block, [B, num_blocks, w_dim]."""
    w = self.mapping(z)
    return jnp.broadcast_to(w[:, None], (w.shape[0], self.num_blocks, w.shape[-1]))

  def synthesize(self, latents: jax.Array, *, noise: Sequence[BlockNoise] | None = None,
                 fused: bool = False) -> jax.Array:
    return self.synthesis(latents, noise=noise, fused=fused)[0]

  def __call__(self, z: jax.Array, *, w_avg: jax.Array | None = None, psi: float = 1.0,
               noise: Sequence[BlockNoise] | None = None, fused: bool = False) -> jax.Array:
    """Samples images from z; with `w_avg`, applies the truncation trick with `psi`."""
    latents = self.latents(z)
    if w_avg is not None:
      latents = truncate(latents, w_avg, psi)
    return self.synthesize(latents, noise=noise, fused=fused)


def minibatch_stddev(x: jax.Array, group_size: int, num_channels: int = 1) -> jax.Array:
  """StyleGAN's minibatch standard deviation layer: appends `num_channels` feature maps.

  Samples m, m + N/G, m + 2N/G, ... form group m (StyleGAN2's grouping). Under jit with the
  batch sharded, N is the GLOBAL batch, so groups and results do not depend on the number of
  devices.
  """
  n, h, w, c = x.shape
  group = min(group_size, n)
  if n % group or c % num_channels:
    raise ValueError(f"Batch {n} must be divisible by the group size {group} and channels {c} "
                     f"by num_channels {num_channels}.")
  y = x.reshape(group, n // group, h, w, num_channels, c // num_channels)
  y = jnp.sqrt(jnp.var(y, axis=0) + 1e-8)  # Population std over each group.
  y = jnp.mean(y, axis=(1, 2, 4))  # [N/G, num_channels]
  y = jnp.broadcast_to(y[None, :, None, None, :], (group, n // group, h, w, num_channels))
  return jnp.concatenate([x, y.reshape(n, h, w, num_channels).astype(x.dtype)], axis=-1)


class DiscriminatorBlock(nn.Module):
  """Residual block: (conv3x3, conv3x3 down) + (1x1 down skip), summed with gain sqrt(1/2)."""

  features: int
  out_features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    gain = math.sqrt(0.5)
    skip = layers.EqualConv(self.out_features, 1, down=True, use_bias=False, name="skip")(x)
    y = layers.lrelu_gain(layers.EqualConv(self.features, 3, name="conv0")(x))
    y = layers.lrelu_gain(layers.EqualConv(self.out_features, 3, down=True, name="conv1")(y))
    return skip * gain + y * gain


class Discriminator(nn.Module):
  """StyleGAN2 residual discriminator: fromRGB, residual blocks down to 4x4, minibatch std,
  conv, FC, FC -> one logit per image."""

  resolution: int
  channel_base: int = 16384
  channel_max: int = 512
  mbstd_group_size: int = 4
  mbstd_num_channels: int = 1

  @nn.compact
  def __call__(self, image: jax.Array) -> jax.Array:
    if image.shape[1:3] != (self.resolution, self.resolution):
      raise ValueError(f"Discriminator built for {self.resolution}^2, got {image.shape}.")
    width = lambda r: channels_at(r, self.channel_base, self.channel_max)
    x = layers.lrelu_gain(layers.EqualConv(width(self.resolution), 1, name="from_rgb")(image))
    for r in block_resolutions(8, self.resolution)[::-1] if self.resolution > 4 else ():
      x = DiscriminatorBlock(width(r), width(r // 2), name=f"b{r}")(x)
    x = minibatch_stddev(x, self.mbstd_group_size, self.mbstd_num_channels)
    x = layers.lrelu_gain(layers.EqualConv(width(4), 3, name="conv")(x))
    x = layers.lrelu_gain(layers.EqualDense(width(4), name="fc")(x.reshape(x.shape[0], -1)))
    return layers.EqualDense(1, name="out")(x)[:, 0]


def create_generator(model: ml_collections.ConfigDict) -> Generator:
  return Generator(z_dim=model.z_dim, w_dim=model.w_dim, resolution=model.resolution,
                   start_resolution=model.start_resolution, channel_base=model.channel_base,
                   channel_max=model.channel_max, mapping_layers=model.mapping_layers,
                   mapping_lr_mul=model.mapping_lr_mul, upsample=upsample_form(model))


def create_discriminator(disc: ml_collections.ConfigDict, resolution: int) -> Discriminator:
  return Discriminator(resolution=resolution, channel_base=disc.channel_base,
                       channel_max=disc.channel_max, mbstd_group_size=disc.mbstd_group_size,
                       mbstd_num_channels=disc.mbstd_num_channels)
