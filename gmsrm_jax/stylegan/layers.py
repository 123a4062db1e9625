"""StyleGAN2 building blocks (Karras et al. 2020): equalized learning rate, FIR resampling,
modulated convolution with weight demodulation.

Images and features are NHWC. Every weight is stored as N(0, 1) (divided by `lr_mul`) and
scaled at run time by lr_mul / sqrt(fan_in) ("equalized learning rate", StyleGAN §B): Adam's
per-parameter step size is then the same for every layer whatever its fan-in.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from gmsrm_jax import precision

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")
# StyleGAN2's resampling filter [1, 3, 3, 1] (separable, normalised to unit DC gain).
_FIR_TAPS = (0.125, 0.375, 0.375, 0.125)


def lrelu_gain(x: jax.Array) -> jax.Array:
  """Leaky ReLU (0.2) times sqrt(2): keeps unit-variance activations at unit variance."""
  return nn.leaky_relu(x, 0.2) * math.sqrt(2.0)


# The FIR filters are shifted slices and weighted sums, one spatial axis at a time, rather than
# depthwise convolutions: XLA:CPU runs a zero-inserting (lhs-dilated) depthwise conv, which
# upsampling and the gradient of strided downsampling both become, ~100x slower (measured:
# 0.82 s vs 0.006 s for the gradient of one 16x32x32x64 upsampling); slices fuse with their
# neighbours on every backend.

def _pad_axis(x: jax.Array, axis: int, low: int, high: int) -> jax.Array:
  widths = [(0, 0)] * x.ndim
  widths[axis] = (low, high)
  return jnp.pad(x, widths)


def _correlate_axis(x: jax.Array, axis: int, pad: int, stride: int = 1) -> jax.Array:
  """Zero-pad by `pad` on both sides, correlate with the FIR taps, keep every stride-th."""
  padded = _pad_axis(x, axis, pad, pad)
  count = (padded.shape[axis] - len(_FIR_TAPS)) // stride + 1
  return sum(tap * jax.lax.slice_in_dim(padded, k, k + (count - 1) * stride + 1, stride, axis)
             for k, tap in enumerate(_FIR_TAPS))


def _upsample_axis(x: jax.Array, axis: int) -> jax.Array:
  # Zero insertion then the filter with gain 2 has two phases:
  # out[2i] = x[i-1]/4 + 3x[i]/4 and out[2i+1] = 3x[i]/4 + x[i+1]/4 (zero beyond the border).
  size = x.shape[axis]
  before = jax.lax.slice_in_dim(_pad_axis(x, axis, 1, 0), 0, size, axis=axis)
  after = jax.lax.slice_in_dim(_pad_axis(x, axis, 0, 1), 1, size + 1, axis=axis)
  phases = jnp.stack([0.25 * before + 0.75 * x, 0.75 * x + 0.25 * after], axis=axis + 1)
  shape = list(x.shape)
  shape[axis] = 2 * size
  return phases.reshape(shape)


def upsample_2x(x: jax.Array) -> jax.Array:
  """Zero insertion + FIR filter (gain 4), StyleGAN2's upsampling: [B,H,W,C] -> 2H x 2W."""
  return _upsample_axis(_upsample_axis(x, 1), 2)


def downsample_2x(x: jax.Array) -> jax.Array:
  """FIR low-pass then every second pixel: [B,H,W,C] -> H/2 x W/2."""
  return _correlate_axis(_correlate_axis(x, 1, 1, 2), 2, 1, 2)


def blur_for_upsampled(x: jax.Array) -> jax.Array:
  """The FIR filter (gain 4, pads (1, 1)) after a stride-2 transposed 3x3 conv: 2H+1 -> 2H."""
  return 4.0 * _correlate_axis(_correlate_axis(x, 1, 1), 2, 1)


def blur_for_strided_conv(x: jax.Array) -> jax.Array:
  """The FIR low-pass before a 3x3 stride-2 VALID conv: H -> H + 1, so the conv gives H/2."""
  return _correlate_axis(_correlate_axis(x, 1, 2), 2, 2)


def standard_normal(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
  """N(0, 1) of any shape, drawn as a flat vector and reshaped.

  Same distribution as `jax.random.normal(key, shape)`, but XLA compiles threefry for a 1-D
  shape in ~0.1 s on CPU, versus 1-3 s for a 4-D conv-kernel shape (measured, jax 0.10 with
  partitionable threefry): this keeps every init and step compile of the memory short.
  """
  return jax.random.normal(key, (math.prod(shape),), dtype).reshape(shape)


def normal_init(stddev: float = 1.0):
  """Flax initializer: stddev * `standard_normal`."""
  return lambda key, shape, dtype=jnp.float32: stddev * standard_normal(key, shape, dtype)


def conv2d(x: jax.Array, kernel: jax.Array, *, stride: int = 1, padding: int | None = None,
           groups: int = 1) -> jax.Array:
  """Cross-correlation with an HWIO kernel; padding defaults to 'same' for odd kernels."""
  pad = kernel.shape[0] // 2 if padding is None else padding
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                      dimension_numbers=_DIMENSIONS, feature_group_count=groups)


def _overlap_add_axis(taps: jax.Array, axis: int, tap_axis: int) -> jax.Array:
  """Places tap i (of 3, on `tap_axis`, which is dropped) of input p at 2p + i along `axis`:
  the stride-2 transposed conv along one axis, H -> 2H + 1."""
  size = taps.shape[axis]
  tap = lambda i: jax.lax.index_in_dim(taps, i, tap_axis, keepdims=False)
  # Output 2p (p = 0..H) gets tap 0 of input p and tap 2 of input p - 1; 2p + 1 gets tap 1 of p.
  even = _pad_axis(tap(0), axis, 0, 1) + _pad_axis(tap(2), axis, 1, 0)
  odd = _pad_axis(tap(1), axis, 0, 1)
  shape = list(even.shape)
  shape[axis] = 2 * size + 2
  interleaved = jnp.stack([even, odd], axis=axis + 1).reshape(shape)
  return jax.lax.slice_in_dim(interleaved, 0, 2 * size + 1, axis=axis)


def upsample_conv2d(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """StyleGAN2's upsampling conv, [B,H,W,I] -> [B,2H,2W,O]: the stride-2 transposed conv of the
  flipped 3x3 kernel, (2H+1) x (2W+1), then the FIR filter with gain 4 and pads (1, 1).

  `kernel` is [3,3,I,O], or [B,3,3,I,O] per sample (the fused modulated conv). The transposed
  conv is computed where its work is, at the input resolution: one matmul gives every input
  pixel's 9 taps (9 multiply-adds per input pixel and channel pair, against 36 for a 3x3 conv
  after upsampling); tap (i, j) of the flipped kernel from pixel (p, q) then lands on
  (2p + i, 2q + j), an overlap-add done one axis at a time. No convolution: XLA:CPU runs the
  kernel gradient of a transposed (lhs-dilated) conv, and of the even-sized convs of a
  polyphase split, 8-35x slower than this matmul's (DESIGN M5).

  Away from the border this equals `conv2d(upsample_2x(x), kernel)` (the two filters
  commute); on the 1-pixel border it does not, as that form zero-pads the upsampled map
  cropped to 2H instead of filtering the full 2H+1 one.
  """
  if kernel.shape[-4:-2] != (3, 3):
    raise ValueError(f"The upsampling conv takes 3x3 kernels, got {kernel.shape}.")
  flipped = jnp.flip(kernel, axis=(-4, -3))
  taps = jnp.einsum("bhwi,klio->bhwklo" if kernel.ndim == 4 else "bhwi,bklio->bhwklo",
                    x, flipped)
  rows = _overlap_add_axis(taps, 1, 3)  # [B, 2H+1, W, 3, O]
  return blur_for_upsampled(_overlap_add_axis(rows, 2, 3))


class EqualDense(nn.Module):
  """Fully connected layer with equalized learning rate.

  `lr_mul` < 1 slows a layer down (the mapping network uses 0.01, StyleGAN §2): the stored
  parameters are the effective ones divided by lr_mul, so Adam steps move them lr_mul times
  less in effective terms.
  """

  features: int
  lr_mul: float = 1.0
  bias_init: float = 0.0
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    fan_in = x.shape[-1]
    kernel = self.param("kernel", normal_init(1.0 / self.lr_mul),
                        (fan_in, self.features))
    y = x @ (kernel * (self.lr_mul / math.sqrt(fan_in))).astype(x.dtype)
    if self.use_bias:
      bias = self.param("bias", nn.initializers.constant(self.bias_init / self.lr_mul),
                        (self.features,))
      y = y + (bias * self.lr_mul).astype(x.dtype)
    return y


class EqualConv(nn.Module):
  """Conv with equalized learning rate; `down=True` halves the resolution (discriminator).

  Downsampling follows StyleGAN2: FIR low-pass first, so the stride never aliases. A 1x1
  downsampling conv (the residual skip) low-passes with `downsample_2x` and then mixes channels.
  """

  features: int
  kernel_size: int = 3
  down: bool = False
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, fan_in = self.kernel_size, x.shape[-1] * self.kernel_size**2
    kernel = self.param("kernel", normal_init(),
                        (k, k, x.shape[-1], self.features))
    kernel = (kernel / math.sqrt(fan_in)).astype(x.dtype)
    if not self.down:
      y = conv2d(x, kernel)
    elif k == 1:
      y = conv2d(downsample_2x(x), kernel)
    else:
      y = conv2d(blur_for_strided_conv(x), kernel, stride=2, padding=0)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(x.dtype)
    return y


def demodulation(kernel: jax.Array, styles: jax.Array, eps: float = 1e-8) -> jax.Array:
  """StyleGAN2 eq. 3: 1 / sqrt(sum_{k,k,i} (s_i w_{k,k,i,o})^2 + eps), shape [B, O].

  The sum over i of s_i^2 times sum_{k,k} w^2 is a [B, I] x [I, O] matmul: per-sample weights
  are never materialised for it.
  """
  # In float32 whatever the compute dtype: a bfloat16 sum of squares over k*k*I terms would
  # put its rounding into every output channel's scale (docs/DESIGN.md P1).
  styles32, kernel32 = precision.at_least_float32(styles), precision.at_least_float32(kernel)
  return jax.lax.rsqrt(jnp.square(styles32) @ jnp.sum(jnp.square(kernel32), axis=(0, 1))
                       + eps).astype(styles.dtype)


def modulated_conv(x: jax.Array, kernel: jax.Array, styles: jax.Array, *,
                   demodulate: bool = True, fused: bool = False, up: bool = False) -> jax.Array:
  """Modulated convolution (StyleGAN2 §2.2): per-sample weights w'_{b} = s_b[i] w d_b[o].

  x [B,H,W,I], kernel [k,k,I,O] (already scaled for equalized lr), styles [B,I].
  `fused=False` scales the activations instead of the weights (x * s, one shared conv, then
  * d): the cheap form for training. `fused=True` builds the per-sample weights and runs them
  as one grouped convolution with B groups (a batched matmul with `up`), StyleGAN2's inference
  form. Both compute the same function (tests/test_stylegan.py). `up=True` makes the conv
  StyleGAN2's upsampling one (`upsample_conv2d`, 3x3 kernels only): the output is 2H x 2W.
  """
  coefficients = demodulation(kernel, styles) if demodulate else None
  if not fused:
    x = x * styles[:, None, None, :]
    y = upsample_conv2d(x, kernel) if up else conv2d(x, kernel)
    return y if coefficients is None else y * coefficients[:, None, None, :]
  batch, height, width, channels = x.shape
  weights = kernel[None] * styles[:, None, None, :, None]  # [B, k, k, I, O]
  if coefficients is not None:
    weights = weights * coefficients[:, None, None, None, :]
  if up:  # Per-sample weights are a batched matmul there.
    return upsample_conv2d(x, weights)
  k, out = kernel.shape[0], kernel.shape[-1]
  # Groups are sample-major on both sides: input channel b*I + i, output channel b*O + o.
  grouped = jnp.transpose(weights, (1, 2, 3, 0, 4)).reshape(k, k, channels, batch * out)
  stacked = jnp.transpose(x, (1, 2, 0, 3)).reshape(1, height, width, batch * channels)
  y = conv2d(stacked, grouped, groups=batch)
  return jnp.transpose(y.reshape(height, width, batch, out), (2, 0, 1, 3))
