"""Full-reference image quality metrics used to evaluate inpainting (GM-SRM §IV-A, CICM §4).

Every function takes a batch of predictions and the matching ground truth, both
`[B, H, W, C]` floats with values in [0, 1], and returns one value per image, shape `[B]`,
so an evaluation step can average per hole-ratio bin and drop padded examples itself.
All functions are pure JAX, jit-able, and treat the batch axis independently (so a batch
sharded along `B` needs no communication until the caller reduces the results).

Exact definitions, conventions for constant/identical images and references are in
docs/METRICS.md. In short:
  psnr  10 log10(R^2 / MSE) over all pixels and channels; +inf for identical images
        (skimage.metrics.peak_signal_noise_ratio).
  ssim  Wang et al. 2004 [49]: 11x11 Gaussian window (sigma 1.5), population covariance,
        mean over the valid region and channels (skimage.metrics.structural_similarity with
        gaussian_weights=True, sigma=1.5, use_sample_covariance=False, channel_axis=-1).
  ncc   Wei et al. 2019 [50] evaluation code: Pearson correlation of the whole H x W x C
        array (one mean over all channels, not per channel).
  lmse  Grosse et al. 2009 [51] local scale-invariant MSE, 20x20 windows every 10 pixels,
        sums over windows and channels before the one division (as in [50]'s code).
  l1    mean absolute error over all pixels and channels (CICM).

Inputs with fewer than 32 bits (bfloat16/float16 network outputs) are promoted to float32:
the sums below run over up to ~2x10^5 terms (256x256x3) and would lose several significant digits.
"""

import jax
import jax.numpy as jnp
import numpy as np

# SSIM constants of Wang et al. 2004 [49].
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03
_SSIM_SIGMA = 1.5
# skimage sets truncate=3.5 for gaussian_weights so that sigma=1.5 gives the paper's 11-tap
# window; radius = int(truncate * sigma + 0.5) is scipy.ndimage's rule.
_SSIM_TRUNCATE = 3.5

# Grosse et al. 2009 [51]: below this sum of squares (for values in [0, 1]) a window of the
# prediction is treated as black and not rescaled (alpha = 0), exactly as in their code.
_LMSE_ALPHA_EPS = 1e-5


def to_unit(images: jax.Array) -> jax.Array:
  """The models' [-1, 1] images -> the [0, 1] range these metrics take, clipped (a residual
  output head can leave the range; the saved 8-bit image would be clipped too)."""
  return jnp.clip((images + 1.0) / 2.0, 0.0, 1.0)


def _check_pair(pred: jax.Array, target: jax.Array, name: str) -> tuple[jax.Array, jax.Array]:
  """Validates shapes (static, so checked once at trace time) and promotes to >= float32."""
  pred = jnp.asarray(pred)
  target = jnp.asarray(target)
  if pred.ndim != 4 or pred.shape != target.shape:
    raise ValueError(f"{name}: expected pred and target of equal shape [B, H, W, C], got "
                     f"{pred.shape} and {target.shape}.")
  # Integers (e.g. uint8 in [0, 255]) are refused rather than silently promoted: the
  # default data_range and the LMSE alpha threshold assume values in [0, 1].
  if not (jnp.issubdtype(pred.dtype, jnp.floating) and jnp.issubdtype(target.dtype, jnp.floating)):
    raise ValueError(f"{name}: expected floating-point images in [0, 1], got {pred.dtype} and "
                     f"{target.dtype}.")
  dtype = jnp.promote_types(jnp.promote_types(pred.dtype, target.dtype), jnp.float32)
  return pred.astype(dtype), target.astype(dtype)


def psnr(pred: jax.Array, target: jax.Array, data_range: float = 1.0) -> jax.Array:
  """Peak signal-to-noise ratio in dB, per image.

  PSNR = 10 log10(data_range^2 / MSE), MSE over all pixels and channels, identical to
  `skimage.metrics.peak_signal_noise_ratio(target, pred, data_range=data_range)`.

  Args:
    pred: [B, H, W, C] restored images, values in [0, data_range] ([0, 1] by default).
    target: [B, H, W, C] ground truth, same range.
    data_range: the peak value R (maximum minus minimum possible value).

  Returns:
    [B] PSNR values. Identical images give +inf (as skimage does); see docs/METRICS.md for
    averaging with padded examples.
  """
  pred, target = _check_pair(pred, target, "psnr")
  mse = jnp.mean(jnp.square(pred - target), axis=(1, 2, 3))
  # dm-pix's psnr hard-codes R = 1; this is the same expression with R kept explicit.
  # R^2 / 0 = inf and log10(inf) = inf, so identical images give +inf without a NaN.
  return 10.0 * jnp.log10(data_range**2 / mse)


def _gaussian_taps() -> np.ndarray:
  """The normalised 1-D Gaussian of scipy.ndimage.gaussian_filter (float64, 11 taps)."""
  radius = int(_SSIM_TRUNCATE * _SSIM_SIGMA + 0.5)
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  taps = np.exp(-0.5 * (x / _SSIM_SIGMA)**2)
  return taps / taps.sum()


def _gaussian_filter_valid(x: jax.Array, taps: np.ndarray) -> jax.Array:
  """Separable Gaussian blur of [B, H, W, C], keeping only fully covered ('valid') pixels.

  skimage filters with mode='reflect' and then crops `radius` pixels on each side; those
  cropped pixels are exactly the ones whose window touches the reflected border, so
  'valid' here equals skimage's filter-then-crop.
  """
  k = len(taps)
  out_h, out_w = x.shape[1] - k + 1, x.shape[2] - k + 1
  # Weighted sums of shifted slices rather than lax.conv: XLA fuses them into one
  # elementwise loop (6-8x faster than a depthwise conv on CPU), the batch axis is never
  # reshaped (a batch sharded along B stays sharded), and elementwise float32 arithmetic
  # cannot be lowered to TF32 the way GPU convolutions are by default.
  rows = sum(float(taps[i]) * x[:, i:i + out_h] for i in range(k))
  return sum(float(taps[j]) * rows[:, :, j:j + out_w] for j in range(k))


def _gaussian_blur_matmul(x: jax.Array, taps: np.ndarray) -> jax.Array:
  """`_gaussian_filter_valid` as two banded matrix products: its gradient is two more
  (the shifted slices' gradient is 121 scattered pads, ~30x slower to differentiate on CPU)."""
  def band(size):
    matrix = np.zeros((size - len(taps) + 1, size), np.float32)
    for row in range(matrix.shape[0]):
      matrix[row, row:row + len(taps)] = taps
    return matrix
  return jnp.einsum("oh,bhwc,pw->bopc", band(x.shape[1]), x, band(x.shape[2]),
                    precision=jax.lax.Precision.HIGHEST)


def ssim(pred: jax.Array, target: jax.Array, data_range: float = 1.0, *,
         centred_moments: bool = True) -> jax.Array:
  """Structural similarity (Wang et al. 2004), per image, averaged over pixels and channels.

  Matches `skimage.metrics.structural_similarity(target, pred, data_range=data_range,
  channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`:
  11x11 Gaussian window with sigma 1.5, C1 = (0.01 R)^2, C2 = (0.03 R)^2, population
  (weighted) variances, SSIM map averaged over the (H - 10) x (W - 10) valid region and
  over channels (each channel is treated as a grey image).

  Args:
    pred: [B, H, W, C] restored images, values in [0, data_range]; H, W >= 11.
    target: [B, H, W, C] ground truth, same range.
    data_range: R in the stabilising constants.
    centred_moments: False computes the moments in one pass, E[x y] - E[x] E[y], with the
      blur as matrix products: fast to differentiate (losses.structural_loss), but in float32
      off by up to ~3e-5 where an image is bright and flat (see below). Evaluation keeps True.

  Returns:
    [B] SSIM values in [-1, 1]; exactly 1 for identical images.
  """
  pred, target = _check_pair(pred, target, "ssim")
  taps = _gaussian_taps()
  k = len(taps)
  _, height, width, _ = pred.shape
  if height < k or width < k:
    raise ValueError(f"ssim: images must be at least {k}x{k} (the Gaussian window), got "
                     f"{height}x{width}.")
  if not centred_moments:
    blur = lambda x: _gaussian_blur_matmul(x, taps)
    mu_p, mu_t = blur(pred), blur(target)
    return _ssim_from_moments(mu_p, mu_t, blur(pred * pred) - mu_p * mu_p,
                              blur(target * target) - mu_t * mu_t,
                              blur(pred * target) - mu_p * mu_t, data_range)
  mu_p = _gaussian_filter_valid(pred, taps)
  mu_t = _gaussian_filter_valid(target, taps)

  # Two-pass (centred) moments: var = sum_w w (x - mu)^2 instead of E[x^2] - mu^2. The
  # one-pass form (skimage in float64, dm-pix in float32) cancels catastrophically in
  # float32 where the image is bright and flat: the variance error ~1e-7 is then compared
  # with C2 = 9e-4, which moved SSIM by up to 3e-5 on a 0.998/0.999 step image. Centring
  # makes the error second-order; it costs ~20% more than dm-pix on CPU, and XLA fuses
  # the 121 shifted terms into one loop.
  out_h, out_w = height - k + 1, width - k + 1
  var_p = var_t = cov = 0.0
  for i in range(k):
    for j in range(k):
      weight = float(taps[i] * taps[j])
      d_p = pred[:, i:i + out_h, j:j + out_w, :] - mu_p
      d_t = target[:, i:i + out_h, j:j + out_w, :] - mu_t
      var_p = var_p + weight * d_p * d_p
      var_t = var_t + weight * d_t * d_t
      cov = cov + weight * d_p * d_t
  return _ssim_from_moments(mu_p, mu_t, var_p, var_t, cov, data_range)


def _ssim_from_moments(mu_p, mu_t, var_p, var_t, cov, data_range):
  c1 = (_SSIM_K1 * data_range)**2
  c2 = (_SSIM_K2 * data_range)**2
  ssim_map = ((2.0 * mu_p * mu_t + c1) * (2.0 * cov + c2) /
              ((mu_p * mu_p + mu_t * mu_t + c1) * (var_p + var_t + c2)))
  # Every channel has the same valid area, so the mean over (H, W, C) equals skimage's mean
  # over channels of per-channel means.
  return jnp.mean(ssim_map, axis=(1, 2, 3))


def ncc(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Normalised cross-correlation (Wei et al. 2019 evaluation code), per image.

  NCC = sum((p - mean p)(t - mean t)) / sqrt(sum((p - mean p)^2) sum((t - mean t)^2)),
  with the sums and means over the whole H x W x C array, i.e. the Pearson correlation of
  the flattened images. This is `compare_ncc` in Vandermode/ERRNet util/index.py
  (mean(xc * yc) / (std x * std y), population std); the 1/N factors cancel.

  Args:
    pred: [B, H, W, C] restored images, values in [0, 1].
    target: [B, H, W, C] ground truth, same range.

  Returns:
    [B] values in [-1, 1]. Constant images (where the reference divides by zero): 1 if both
    images are constant (flat matches flat; NCC ignores offset and gain), 0 if exactly one
    is constant.
  """
  pred, target = _check_pair(pred, target, "ncc")
  axes = (1, 2, 3)
  d_p = pred - jnp.mean(pred, axis=axes, keepdims=True)
  d_t = target - jnp.mean(target, axis=axes, keepdims=True)
  cov = jnp.sum(d_p * d_t, axis=axes)
  # sqrt of each factor separately: the product of two tiny sums can underflow to zero.
  norm = jnp.sqrt(jnp.sum(d_p * d_p, axis=axes)) * jnp.sqrt(jnp.sum(d_t * d_t, axis=axes))
  # Decide "constant" exactly (max == min) rather than from the variance: a float32 mean of
  # a constant image can be off by an ulp, which leaves ~1e-8 residues whose correlation is
  # a meaningless +-1.
  const_p = jnp.max(pred, axis=axes) == jnp.min(pred, axis=axes)
  const_t = jnp.max(target, axis=axes) == jnp.min(target, axis=axes)
  safe_norm = jnp.where(const_p | const_t, 1.0, norm)
  # Rounding can put identical images at 1 + 1e-7; keep the documented range.
  value = jnp.clip(cov / safe_norm, -1.0, 1.0)
  return jnp.where(const_p & const_t, 1.0, jnp.where(const_p | const_t, 0.0, value))


def lmse(pred: jax.Array, target: jax.Array, window: int = 20, step: int = 10) -> jax.Array:
  """Local mean squared error (Grosse et al. 2009), per image.

  Windows of `window` x `window` start at rows and columns 0, step, 2 step, ... while they
  fit (`range(0, H - window + 1, step)`). In each window w and channel c the prediction is
  rescaled by the least-squares alpha = <t, p> / <p, p> (alpha = 0 when <p, p> <= 1e-5), and

    LMSE = sum_{c, w} ||t_wc - alpha_wc p_wc||^2 / sum_{c, w} ||t_wc||^2,

  i.e. the local errors are normalised by those of an all-zero prediction. Sums run over
  windows and channels before the single division, as in `local_error` of the Wei et al.
  code (not a mean of per-channel ratios).

  Args:
    pred: [B, H, W, C] restored images, values in [0, 1]; H, W >= window.
    target: [B, H, W, C] ground truth, same range.
    window: window side in pixels.
    step: distance between window origins.

  Returns:
    [B] values in [0, 1] (alpha = 0 already achieves 1); 0 for identical images and, by
    convention, 0 when the target is zero in every window (the reference's 0 / 0).
  """
  pred, target = _check_pair(pred, target, "lmse")
  _, height, width, _ = pred.shape
  if height < window or width < window:
    raise ValueError(f"lmse: images must be at least {window}x{window}, got {height}x{width}.")
  # Gather the (overlapping) windows: [B, nH, window, nW, window, C]. Explicit index arrays
  # instead of conv_general_dilated_patches, which would be a dense conv with a
  # (window^2 C)-channel identity kernel; the copy here is only (window / step)^2 times the
  # image (4x for 20/10).
  rows = (np.arange(0, height - window + 1, step)[:, None] + np.arange(window)[None, :])
  cols = (np.arange(0, width - window + 1, step)[:, None] + np.arange(window)[None, :])

  def windows(x):
    return x[:, rows][:, :, :, cols]

  p_win, t_win = windows(pred), windows(target)
  in_window = (2, 4)
  dot_tp = jnp.sum(t_win * p_win, axis=in_window, keepdims=True)
  dot_pp = jnp.sum(p_win * p_win, axis=in_window, keepdims=True)
  alpha = jnp.where(dot_pp > _LMSE_ALPHA_EPS, dot_tp / jnp.where(dot_pp > 0, dot_pp, 1.0), 0.0)
  # Residuals are formed explicitly rather than as <t,t> - <t,p>^2 / <p,p>: that closed
  # form cancels in float32 exactly when the prediction is good (LMSE near 0).
  ssq = jnp.sum(jnp.square(t_win - alpha * p_win), axis=(1, 2, 3, 4, 5))
  total = jnp.sum(jnp.square(t_win), axis=(1, 2, 3, 4, 5))
  # total = 0 forces ssq = 0 (t = 0 in every window), so 0 is the limit value as well.
  return jnp.where(total > 0, ssq / jnp.where(total > 0, total, 1.0), 0.0)


def l1(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Mean absolute error over all pixels and channels, per image (CICM's "L1").

  Args:
    pred: [B, H, W, C] restored images, values in [0, 1].
    target: [B, H, W, C] ground truth, same range.

  Returns:
    [B] values in [0, 1]; 0 for identical images.
  """
  pred, target = _check_pair(pred, target, "l1")
  return jnp.mean(jnp.abs(pred - target), axis=(1, 2, 3))


def compute_all(pred: jax.Array, target: jax.Array) -> dict[str, jax.Array]:
  """All metrics with their default settings (images in [0, 1]).

  Args:
    pred: [B, H, W, C] restored images, values in [0, 1]; H, W >= 20.
    target: [B, H, W, C] ground truth, same range.

  Returns:
    {"psnr", "ssim", "ncc", "lmse", "l1"} -> [B] arrays. PSNR is +inf for identical images,
    so mask padded examples with `jnp.where(valid, value, 0)` before summing; multiplying
    by a 0 weight would give inf * 0 = NaN.
  """
  return {
      "psnr": psnr(pred, target),
      "ssim": ssim(pred, target),
      "ncc": ncc(pred, target),
      "lmse": lmse(pred, target),
      "l1": l1(pred, target),
  }


# Whether a metric improves upward; evaluation summaries and "best" comparisons read this
# rather than hard-coding the direction per name.
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "ncc": True, "lmse": False, "l1": False}
