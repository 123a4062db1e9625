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


def conv2d(x: jax.Array, kernel: jax.Array, *, stride: int = 1,
           padding: int | tuple[tuple[int, int], tuple[int, int]] | None = None,
           groups: int = 1) -> jax.Array:
  """Cross-correlation with an HWIO kernel; padding (one int for all four sides, or per-axis
  (low, high) pairs) defaults to 'same' for odd kernels."""
  pad = kernel.shape[0] // 2 if padding is None else padding
  pads = ((pad, pad), (pad, pad)) if isinstance(pad, int) else pad
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), pads,
                                      dimension_numbers=_DIMENSIONS, feature_group_count=groups)


def upsample_conv2d(x: jax.Array, kernel: jax.Array, *, groups: int = 1) -> jax.Array:
  """StyleGAN2's upsampling conv: 3x3 transposed conv with stride 2, then the FIR filter with
  gain 4 and pads (1, 1), [B,H,W,I] -> [B,2H,2W,O], the conv's work done at the INPUT resolution.

  The transposed conv (StyleGAN2 flips the kernel for it) is the 'full' cross-correlation of
  the zero-inserted input with `kernel`, size 2H+1. Output row 2p+a only meets the kernel rows
  of parity a: rows 0 and 2 on input rows p-1, p (a = 0) and row 1 on input row p (a = 1);
  likewise for columns. So it is four small convs at input resolution (2x2, 2x1, 1x2 and 1x1
  taps: 9 multiply-adds per input pixel, against 36 per input pixel for a 3x3 conv after
  upsampling) interleaved depth-to-space; each is padded to (H+1) x (W+1), the odd phases' last
  row/column reading only zero padding, so the interleaved map is the 2H+1 result plus one
  zero row and column, cropped. Away from the border this equals `conv2d(upsample_2x(x),
  kernel)` (both are the 6-tap composition of the two filters); the 1-pixel border differs,
  as that form zero-pads the cropped 2H upsampled map instead of filtering the full 2H+1 one.
  Only ordinary stride-1 convs, forward and backward: nothing lhs-dilated (see above).
  """
  if kernel.shape[:2] != (3, 3):
    raise ValueError(f"The upsampling conv takes 3x3 kernels, got {kernel.shape[:2]}.")
  batch, height, width, _ = x.shape
  # The filter's gain (zero insertion keeps a quarter of the pixels) goes on the small kernel.
  kernel = 4.0 * kernel
  phases = [[conv2d(x, kernel[a::2, b::2], padding=((1 - a, 1), (1 - b, 1)), groups=groups)
             for b in (0, 1)] for a in (0, 1)]
  interleaved = jnp.stack([jnp.stack(row, axis=3) for row in phases], axis=2)
  full = interleaved.reshape(batch, 2 * height + 2, 2 * width + 2, -1)
  full = full[:, :2 * height + 1, :2 * width + 1]
  return _correlate_axis(_correlate_axis(full, 1, 1), 2, 1)


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
  return jax.lax.rsqrt(jnp.square(styles) @ jnp.sum(jnp.square(kernel), axis=(0, 1)) + eps)


def modulated_conv(x: jax.Array, kernel: jax.Array, styles: jax.Array, *,
                   demodulate: bool = True, fused: bool = False, up: bool = False) -> jax.Array:
  """Modulated convolution (StyleGAN2 §2.2): per-sample weights w'_{b} = s_b[i] w d_b[o].

  x [B,H,W,I], kernel [k,k,I,O] (already scaled for equalized lr), styles [B,I].
  `fused=False` scales the activations instead of the weights (x * s, one shared conv, then
  * d): the cheap form for training. `fused=True` builds the per-sample weights and runs them
  as one grouped convolution with B groups, StyleGAN2's inference form. Both compute the same
  function (tests/test_stylegan.py). `up=True` makes the conv StyleGAN2's upsampling one
  (`upsample_conv2d`, 3x3 kernels only): the output is 2H x 2W.
  """
  conv = upsample_conv2d if up else conv2d
  coefficients = demodulation(kernel, styles) if demodulate else None
  if not fused:
    y = conv(x * styles[:, None, None, :], kernel)
    return y if coefficients is None else y * coefficients[:, None, None, :]
  batch, height, width, channels = x.shape
  weights = kernel[None] * styles[:, None, None, :, None]  # [B, k, k, I, O]
  if coefficients is not None:
    weights = weights * coefficients[:, None, None, None, :]
  k, out = kernel.shape[0], kernel.shape[-1]
  # Groups are sample-major on both sides: input channel b*I + i, output channel b*O + o.
  grouped = jnp.transpose(weights, (1, 2, 3, 0, 4)).reshape(k, k, channels, batch * out)
  stacked = jnp.transpose(x, (1, 2, 0, 3)).reshape(1, height, width, batch * channels)
  y = conv(stacked, grouped, groups=batch)
  return jnp.transpose(y.reshape(*y.shape[1:3], batch, out), (2, 0, 1, 3))
