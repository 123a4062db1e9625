"""FID statistics and Fréchet distance against pytorch-fid's numpy/scipy formulation."""

import numpy as np
import pytest
from scipy import linalg

from gmsrm_jax.features import fid


def _pytorch_fid_distance(mu1, sigma1, mu2, sigma2):
  """pytorch_fid.fid_score.calculate_frechet_distance (without its singular fallback)."""
  covmean = linalg.sqrtm(sigma1.dot(sigma2)).real
  diff = mu1 - mu2
  return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def _features(seed, n, dim, shift=0.0):
  rng = np.random.default_rng(seed)
  mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)
  # Non-negative and correlated, like pooled ReLU activations, with a large common offset.
  return (np.abs(rng.normal(size=(n, dim)) @ mixing) + shift).astype(np.float32)


def test_streaming_statistics_match_numpy():
  features = _features(0, 300, 16, shift=100.0)
  stats = fid.FeatureStatistics(16)
  weights = np.ones(300)
  weights[::7] = 0.0  # Padding rows: dropped.
  for start in range(0, 300, 64):
    stats.update(features[start:start + 64], weights[start:start + 64])
  kept = features[weights > 0].astype(np.float64)
  assert stats.count == len(kept)
  np.testing.assert_allclose(stats.mean, kept.mean(axis=0), rtol=1e-12)
  # With an offset of 100, uncentred sums (sum x x^T - n mu mu^T) would lose ~4 digits.
  np.testing.assert_allclose(stats.covariance, np.cov(kept, rowvar=False), rtol=1e-9,
                             atol=1e-12)


def test_frechet_distance_matches_pytorch_fid_formula():
  a, b = _features(1, 400, 32), _features(2, 400, 32) * 1.3 + 0.1
  mu1, sigma1 = a.mean(0).astype(np.float64), np.cov(a, rowvar=False)
  mu2, sigma2 = b.mean(0).astype(np.float64), np.cov(b, rowvar=False)
  ours = fid.frechet_distance(mu1, sigma1, mu2, sigma2)
  assert ours > 0.1
  np.testing.assert_allclose(ours, _pytorch_fid_distance(mu1, sigma1, mu2, sigma2), rtol=1e-8)
  # Symmetric, and zero for identical statistics.
  np.testing.assert_allclose(fid.frechet_distance(mu2, sigma2, mu1, sigma1), ours, rtol=1e-8)
  assert abs(fid.frechet_distance(mu1, sigma1, mu1, sigma1)) < 1e-9


def test_fid_of_fewer_images_than_dimensions_is_finite():
  # Rank-deficient covariances (N < D), the usual case for small test sets at D = 2048.
  a, b = fid.FeatureStatistics(64), fid.FeatureStatistics(64)
  a.update(_features(3, 20, 64))
  b.update(_features(4, 20, 64))
  value = fid.fid_from_statistics(a, b)
  assert np.isfinite(value) and value > 0
  np.testing.assert_allclose(
      value, _pytorch_fid_distance(a.mean, a.covariance, b.mean, b.covariance), rtol=1e-4)


def test_statistics_need_two_images(tmp_path):
  stats = fid.FeatureStatistics(4)
  stats.update(np.ones((1, 4)))
  with pytest.raises(ValueError, match="at least 2"):
    _ = stats.covariance
  stats.update(np.zeros((2, 4)))
  stats.save(str(tmp_path / "stats.npz"))
  with np.load(tmp_path / "stats.npz") as saved:
    np.testing.assert_allclose(saved["mu"], np.full(4, 1 / 3))
    assert saved["sigma"].shape == (4, 4) and int(saved["count"]) == 3
