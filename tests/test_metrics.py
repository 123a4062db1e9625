"""Checks gmsrm_jax.metrics against skimage (PSNR, SSIM) and independent float64 numpy
references of the published evaluation code (NCC of Wei et al. 2019, LMSE of Grosse et al.
2009), plus the documented conventions for identical and constant images."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage import data as skdata
from skimage import filters, transform
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from gmsrm_jax import metrics

SIZES = (32, 64, 256)
# The agreement the evaluation promises (docs/METRICS.md): JAX in float32 vs float64 numpy.
TOL = 1e-4
# What the two-pass SSIM variances actually reach (max seen 1.4e-7). One-pass float32
# variances (E[x^2] - mu^2, as in dm-pix) are off by ~3e-5 on the bright_step pair, so
# this guards the numerically stable form, not just the contract.
SSIM_STABLE_TOL = 1e-6


@functools.lru_cache(maxsize=None)
def _image_pairs(size: int) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
  """Named (pred, target) pairs at size x size, float32 values in [0, 1].

  Structured cases are the ones where a float32 implementation can drift from a float64
  one: bright flat regions (variance by cancellation), hard steps, saturation, noise.
  """
  rng = np.random.default_rng(size)
  astro = transform.resize(skdata.astronaut(), (size, size), anti_aliasing=True)
  noisy = np.clip(astro + rng.normal(0.0, 0.05, astro.shape), 0.0, 1.0)
  blurred = filters.gaussian(astro, sigma=2.0, channel_axis=-1)
  # An inpainting-like result: a hole filled with a flat colour.
  hole_filled = astro.copy()
  hole_filled[size // 4:3 * size // 4, size // 4:3 * size // 4] = astro.mean(axis=(0, 1))
  # Bright, nearly flat images: the worst case for one-pass variances in float32.
  bright = np.full((size, size, 3), 0.999)
  bright_step = bright.copy()
  bright_step[size // 2:] = 0.998
  saturated = np.clip(1.5 * astro, 0.0, 1.0)
  pairs = [
      ("noisy", noisy, astro),
      ("blurred", blurred, astro),
      ("hole_filled", hole_filled, astro),
      ("bright_step", bright_step, bright),
      ("saturated", np.clip(saturated + 0.01, 0.0, 1.0), saturated),
      ("random", rng.random((size, size, 3)), rng.random((size, size, 3))),
      ("random_vs_astro", rng.random((size, size, 3)), astro),
  ]
  names = tuple(name for name, _, _ in pairs)
  # Both sides see the same float32 values; the references just compute in float64.
  pred = np.stack([p for _, p, _ in pairs]).astype(np.float32)
  target = np.stack([t for _, _, t in pairs]).astype(np.float32)
  return names, pred, target


def _ncc_reference(x: np.ndarray, y: np.ndarray) -> float:
  """compare_ncc of Wei et al.'s evaluation code (ERRNet util/index.py), in float64."""
  x = x.astype(np.float64)
  y = y.astype(np.float64)
  return np.mean((x - np.mean(x)) * (y - np.mean(y))) / (np.std(x) * np.std(y))


def _lmse_reference(pred: np.ndarray, target: np.ndarray, window=20, step=10) -> float:
  """Grosse et al.'s local error as a plain loop over channels and window origins."""
  pred = pred.astype(np.float64)
  target = target.astype(np.float64)
  height, width, channels = target.shape
  ssq = total = 0.0
  for c in range(channels):
    for i in range(0, height - window + 1, step):
      for j in range(0, width - window + 1, step):
        t = target[i:i + window, j:j + window, c]
        p = pred[i:i + window, j:j + window, c]
        alpha = np.sum(t * p) / np.sum(p * p) if np.sum(p * p) > 1e-5 else 0.0
        ssq += np.sum((t - alpha * p)**2)
        total += np.sum(t * t)
  return ssq / total


@functools.lru_cache(maxsize=None)
def _jitted(name: str):
  # One jitted function per metric, shared by the tests so each shape compiles once.
  return jax.jit(getattr(metrics, name))


@pytest.mark.parametrize("size", SIZES)
def test_psnr_matches_skimage(size):
  names, pred, target = _image_pairs(size)
  got = np.asarray(_jitted("psnr")(pred, target))
  want = [peak_signal_noise_ratio(t.astype(np.float64), p.astype(np.float64), data_range=1.0)
          for p, t in zip(pred, target)]
  for name, g, w in zip(names, got, want):
    assert abs(g - w) < TOL, (name, g, w)


@pytest.mark.parametrize("size", SIZES)
def test_ssim_matches_skimage(size):
  names, pred, target = _image_pairs(size)
  got = np.asarray(_jitted("ssim")(pred, target))
  want = [
      structural_similarity(t.astype(np.float64), p.astype(np.float64), data_range=1.0,
                            channel_axis=-1, gaussian_weights=True, sigma=1.5,
                            use_sample_covariance=False)
      for p, t in zip(pred, target)
  ]
  for name, g, w in zip(names, got, want):
    assert abs(g - w) < SSIM_STABLE_TOL, (name, g, w)


def test_ssim_data_range_matches_skimage():
  # data_range enters only C1 and C2; check it on images in [0, 255].
  _, pred, target = _image_pairs(32)
  got = np.asarray(metrics.ssim(pred[:3] * 255, target[:3] * 255, data_range=255.0))
  for g, p, t in zip(got, pred[:3].astype(np.float64), target[:3].astype(np.float64)):
    want = structural_similarity(t * 255, p * 255, data_range=255.0, channel_axis=-1,
                                 gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert abs(g - want) < TOL
  psnr = np.asarray(metrics.psnr(pred[:1] * 255, target[:1] * 255, data_range=255.0))
  assert abs(psnr[0] - peak_signal_noise_ratio(target[0] * 255.0, pred[0] * 255.0,
                                               data_range=255.0)) < TOL


@pytest.mark.parametrize("size", SIZES)
def test_ncc_matches_reference(size):
  names, pred, target = _image_pairs(size)
  got = np.asarray(_jitted("ncc")(pred, target))
  for name, g, p, t in zip(names, got, pred, target):
    if np.ptp(p) == 0 or np.ptp(t) == 0:
      continue  # Reference divides by zero; conventions are tested separately.
    assert abs(g - _ncc_reference(t, p)) < 1e-5, name


def test_ncc_is_not_a_per_channel_average():
  # Channels with different offsets: the whole-array Pearson correlation of [50] sees the
  # offsets as signal, a mean of per-channel correlations would not. Pins the definition.
  rng = np.random.default_rng(1)
  target = rng.random((1, 24, 24, 3)) * 0.2 + np.array([0.1, 0.5, 0.8])
  pred = target + rng.normal(0, 0.05, target.shape)
  per_channel = np.mean([_ncc_reference(pred[0, ..., c], target[0, ..., c]) for c in range(3)])
  got = float(metrics.ncc(pred.astype(np.float32), target.astype(np.float32))[0])
  assert abs(got - _ncc_reference(target[0], pred[0])) < 1e-5
  assert abs(got - per_channel) > 0.05


@pytest.mark.parametrize("shape", [(32, 32), (64, 64), (256, 256), (37, 53), (20, 20)])
def test_lmse_matches_reference(shape):
  # Odd sizes: only the windows that fit (range(0, H - window + 1, step)) count.
  rng = np.random.default_rng(sum(shape))
  target = rng.random((2, *shape, 3)).astype(np.float32)
  pred = np.clip(target + rng.normal(0, 0.1, target.shape), 0, 1).astype(np.float32)
  # A black region exercises the alpha = 0 branch (sum p^2 <= 1e-5).
  pred[1, :shape[0] // 2, :shape[1] // 2] = 0.0
  got = np.asarray(_jitted("lmse")(pred, target))
  for g, p, t in zip(got, pred, target):
    want = _lmse_reference(p, t)
    assert abs(g - want) <= 1e-5 * want + 1e-7, (g, want)


@pytest.mark.parametrize("size", SIZES)
def test_lmse_matches_reference_on_structured_images(size):
  names, pred, target = _image_pairs(size)
  got = np.asarray(_jitted("lmse")(pred, target))
  for name, g, p, t in zip(names, got, pred, target):
    want = _lmse_reference(p, t)
    assert abs(g - want) <= 1e-4 * want + 1e-7, (name, g, want)


def test_lmse_other_window_and_step():
  rng = np.random.default_rng(3)
  target = rng.random((1, 45, 31, 2)).astype(np.float32)
  pred = rng.random((1, 45, 31, 2)).astype(np.float32)
  got = float(metrics.lmse(pred, target, window=8, step=5)[0])
  want = _lmse_reference(pred[0], target[0], window=8, step=5)
  assert abs(got - want) <= 1e-5 * want


def test_lmse_and_ncc_invariances():
  # LMSE rescales the prediction per window, NCC is invariant to gain and offset: a
  # globally scaled prediction must score like the original.
  _, pred, target = _image_pairs(64)
  lmse, ncc = _jitted("lmse"), _jitted("ncc")
  np.testing.assert_allclose(lmse(0.5 * pred, target), lmse(pred, target), rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(ncc(0.5 * pred + 0.25, target), ncc(pred, target), atol=1e-5)


@pytest.mark.parametrize("size", (32, 64))
def test_l1_is_mean_absolute_error(size):
  _, pred, target = _image_pairs(size)
  want = np.abs(pred.astype(np.float64) - target).mean(axis=(1, 2, 3))
  np.testing.assert_allclose(metrics.l1(pred, target), want, rtol=1e-5, atol=1e-7)


def test_identical_images():
  _, _, target = _image_pairs(32)
  out = _jitted("compute_all")(target, target)
  assert np.all(np.isposinf(out["psnr"]))  # skimage's value; see docs/METRICS.md.
  np.testing.assert_array_equal(out["ssim"], 1.0)
  np.testing.assert_allclose(out["ncc"], 1.0, atol=1e-6)
  np.testing.assert_allclose(out["lmse"], 0.0, atol=1e-7)
  np.testing.assert_array_equal(out["l1"], 0.0)


def test_constant_image_conventions():
  flat = np.full((1, 32, 32, 3), 0.3, np.float32)
  other_flat = np.full((1, 32, 32, 3), 0.8, np.float32)
  zeros = np.zeros((1, 32, 32, 3), np.float32)
  textured = np.random.default_rng(4).random((1, 32, 32, 3)).astype(np.float32)
  assert float(metrics.ncc(flat, flat)[0]) == 1.0
  assert float(metrics.ncc(flat, other_flat)[0]) == 1.0
  assert float(metrics.ncc(flat, textured)[0]) == 0.0
  assert float(metrics.ncc(textured, flat)[0]) == 0.0
  # LMSE: an all-zero target is 0 / 0 in the reference; 0 by convention.
  assert float(metrics.lmse(textured, zeros)[0]) == 0.0
  # A black prediction is never rescaled (alpha = 0): the error equals the target energy.
  assert float(metrics.lmse(zeros, textured)[0]) == pytest.approx(1.0, abs=1e-6)
  # Padding-like examples (zeros vs zeros) must give no NaN anywhere.
  for value in _jitted("compute_all")(zeros, zeros).values():
    assert not np.any(np.isnan(value))


def test_batch_results_are_per_image():
  # Each image's value must not depend on its batch neighbours or position.
  _, pred, target = _image_pairs(32)
  compute_all = _jitted("compute_all")
  batched = compute_all(pred, target)
  order = np.arange(len(pred))[::-1]
  reordered = compute_all(pred[order], target[order])
  single = compute_all(pred[2:3], target[2:3])
  for key, value in batched.items():
    assert value.shape == (len(pred),), key
    np.testing.assert_allclose(reordered[key], np.asarray(value)[order], rtol=1e-6, err_msg=key)
    np.testing.assert_allclose(single[key], value[2:3], rtol=1e-6, err_msg=key)


def test_compute_all_matches_individual_metrics():
  _, pred, target = _image_pairs(32)
  out = _jitted("compute_all")(pred, target)
  assert set(out) == set(metrics.HIGHER_IS_BETTER) == {"psnr", "ssim", "ncc", "lmse", "l1"}
  for key, value in out.items():
    assert value.dtype == jnp.float32
    np.testing.assert_allclose(value, _jitted(key)(pred, target), rtol=1e-6, err_msg=key)


def test_low_precision_inputs_are_promoted():
  # bfloat16 network outputs must be scored in float32, not in bfloat16.
  _, pred, target = _image_pairs(32)
  pred16 = jnp.asarray(pred, jnp.bfloat16)
  same_values = np.asarray(pred16.astype(jnp.float32))
  for key in metrics.HIGHER_IS_BETTER:
    got = _jitted(key)(pred16, target)
    assert got.dtype == jnp.float32, key
    np.testing.assert_allclose(got, _jitted(key)(same_values, target), rtol=1e-6, err_msg=key)


def test_invalid_inputs_raise():
  img = np.zeros((1, 32, 32, 3), np.float32)
  with pytest.raises(ValueError, match="equal shape"):
    metrics.psnr(img, img[:, :16])
  with pytest.raises(ValueError, match="equal shape"):
    metrics.l1(img[0], img[0])
  with pytest.raises(ValueError, match="floating-point"):
    metrics.ncc(img.astype(np.uint8), img.astype(np.uint8))
  with pytest.raises(ValueError, match="11x11"):
    metrics.ssim(img[:, :10], img[:, :10])
  with pytest.raises(ValueError, match="20x20"):
    metrics.lmse(img[:, :19], img[:, :19])
