"""Fréchet Inception Distance: streaming feature statistics and the Fréchet distance.

FID = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))  (Heusel et al. 2017), with mu, S
the mean and the unbiased (ddof = 1) covariance of the pool-3 features (inception.py) of each
image set, as `pytorch_fid.fid_score` computes them (np.mean, np.cov).

Features arrive batch by batch (per mask bin, over many hosts' batches), so the statistics are
accumulated as float64 sums on the host: memory is O(D^2) instead of O(N D), and a padded row
is dropped by giving it weight 0.
"""

import numpy as np


class FeatureStatistics:
  """Running mean and covariance of feature vectors (float64).

  Sums are taken around a fixed shift (the first batch's mean): the covariance is
  shift-invariant, and centring keeps sum(x x^T) - n mu mu^T from cancelling when features
  have a large mean relative to their spread.
  """

  def __init__(self, dim: int):
    self.dim = dim
    self.count = 0
    self._shift = None
    self._sum = np.zeros((dim,), np.float64)
    self._outer = np.zeros((dim, dim), np.float64)

  def update(self, features, weights=None) -> None:
    """Adds the rows of `features` [N, D] whose weight is non-zero (all rows by default)."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[1] != self.dim:
      raise ValueError(f"Expected features [N, {self.dim}], got {features.shape}.")
    if weights is not None:
      features = features[np.asarray(weights) > 0]
    if not len(features):
      return
    if self._shift is None:
      self._shift = features.mean(axis=0)
    centred = features - self._shift
    self.count += len(features)
    self._sum += centred.sum(axis=0)
    self._outer += centred.T @ centred

  @property
  def mean(self) -> np.ndarray:
    self._check(1)
    return self._shift + self._sum / self.count

  @property
  def covariance(self) -> np.ndarray:
    """Unbiased covariance (ddof = 1), as np.cov(features, rowvar=False)."""
    self._check(2)
    centred_mean = self._sum / self.count
    return (self._outer - self.count * np.outer(centred_mean, centred_mean)) / (self.count - 1)

  def _check(self, needed: int) -> None:
    if self.count < needed:
      raise ValueError(f"FID statistics need at least {needed} feature vectors, have "
                       f"{self.count}.")

  def save(self, path: str) -> None:
    """Writes {"mu", "sigma"} like pytorch-fid's `--save-stats`, so either tool can reuse it."""
    np.savez(path, mu=self.mean, sigma=self.covariance, count=self.count)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
  values, vectors = np.linalg.eigh(matrix)
  return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
  """||mu1 - mu2||^2 + Tr(sigma1) + Tr(sigma2) - 2 Tr((sigma1 sigma2)^(1/2)).

  The trace term is computed as Tr((A sigma2 A)^(1/2)) with A = sigma1^(1/2): A sigma2 A is
  symmetric positive semi-definite and similar to sigma1 sigma2, so its eigenvalues are the
  same, but it needs only symmetric eigendecompositions (real, stable) where pytorch-fid's
  scipy.linalg.sqrtm of the non-symmetric product can return complex noise or fail on the
  rank-deficient covariances of fewer than D + 1 images.
  """
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2,
                                                                                    np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(f"Mismatched statistics: mu {mu1.shape} vs {mu2.shape}, sigma "
                     f"{sigma1.shape} vs {sigma2.shape}.")
  root1 = _sqrt_psd((sigma1 + sigma1.T) / 2.0)
  middle = root1 @ sigma2 @ root1
  eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2.0)
  trace_sqrt = np.sum(np.sqrt(np.clip(eigenvalues, 0.0, None)))
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


def fid_from_statistics(a: FeatureStatistics, b: FeatureStatistics) -> float:
  return frechet_distance(a.mean, a.covariance, b.mean, b.covariance)
