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


@pytest.mark.parametrize("n_a, n_b", [(20, 30), (100, 20), (20, 100), (100, 120)])
def test_every_route_of_fid_from_statistics_matches(n_a, n_b):
  # D = 32: sets of <= 32 images keep their rows (N x N routes), larger ones do not (D x D).
  # Fewer images than dimensions is the usual case at D = 2048 (rank-deficient covariances).
  features_a, features_b = _features(3, n_a, 32), _features(4, n_b, 32) + 0.2
  a, b = fid.FeatureStatistics(32), fid.FeatureStatistics(32)
  for stats, features in ((a, features_a), (b, features_b)):
    for start in range(0, len(features), 16):
      stats.update(features[start:start + 16])
  assert (a.covariance_factor() is None) == (n_a > 32)
  expected = _pytorch_fid_distance(
      features_a.mean(0).astype(np.float64), np.cov(features_a, rowvar=False),
      features_b.mean(0).astype(np.float64), np.cov(features_b, rowvar=False))
  value = fid.fid_from_statistics(a, b)
  assert value > 0.1
  # scipy's sqrtm of a singular product is itself only accurate to ~1e-6 relative.
  np.testing.assert_allclose(value, expected, rtol=1e-5)
  np.testing.assert_allclose(fid.fid_from_statistics(b, a), value, rtol=1e-8)


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
