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

  While there are at most `keep_rows` vectors (default: the dimension) they are also kept, so
  the Fréchet distance can use an N x N problem instead of a D x D one (see
  `fid_from_statistics`); test sets of up to 2048 images (Paris Street View has 100) then
  cost a small SVD instead of two 2048 x 2048 eigendecompositions.
  """

  def __init__(self, dim: int, keep_rows: int | None = None):
    self.dim = dim
    self.count = 0
    self._keep_rows = dim if keep_rows is None else keep_rows
    self._rows: list[np.ndarray] | None = []
    self._shift = None
    self._sum = np.zeros((dim,), np.float64)
    self._outer = np.zeros((dim, dim), np.float64)
    self._sqrt_cache = None

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
    self._sqrt_cache = None
    if self._rows is not None:
      self._rows.append(centred)
      if self.count > self._keep_rows:
        self._rows = None

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

  def covariance_factor(self) -> np.ndarray | None:
    """F [N, D] with F^T F = covariance, if the rows were kept (None otherwise)."""
    self._check(2)
    if self._rows is None:
      return None
    rows = np.concatenate(self._rows)
    return (rows - rows.mean(axis=0)) / np.sqrt(self.count - 1)

  def covariance_sqrt(self) -> np.ndarray:
    """The PSD square root of the covariance (cached: a reference set is reused per bin)."""
    if self._sqrt_cache is None:
      self._sqrt_cache = _sqrt_psd(self.covariance)
    return self._sqrt_cache

  def _check(self, needed: int) -> None:
    if self.count < needed:
      raise ValueError(f"FID statistics need at least {needed} feature vectors, have "
                       f"{self.count}.")

  def save(self, path: str) -> None:
    """Writes {"mu", "sigma"} like pytorch-fid's `--save-stats`, so either tool can reuse it."""
    np.savez(path, mu=self.mean, sigma=self.covariance, count=self.count)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
  values, vectors = np.linalg.eigh((matrix + matrix.T) / 2.0)
  return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def _trace_sqrt_of_psd(matrix: np.ndarray) -> float:
  """sum of sqrt(eigenvalues) of a symmetric PSD matrix (negative rounding noise -> 0)."""
  eigenvalues = np.linalg.eigvalsh((matrix + matrix.T) / 2.0)
  return float(np.sum(np.sqrt(np.clip(eigenvalues, 0.0, None))))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray, *, sigma1_sqrt: np.ndarray | None = None) -> float:
  """||mu1 - mu2||^2 + Tr(sigma1) + Tr(sigma2) - 2 Tr((sigma1 sigma2)^(1/2)).

  The trace term is computed as Tr((A sigma2 A)^(1/2)) with A = sigma1^(1/2): A sigma2 A is
  symmetric positive semi-definite and similar to sigma1 sigma2, so its eigenvalues are the
  same, but it needs only symmetric eigendecompositions (real, stable) where pytorch-fid's
  scipy.linalg.sqrtm of the non-symmetric product can return complex noise or fail on the
  rank-deficient covariances of fewer than D + 1 images. `sigma1_sqrt` may pass A in.
  """
  mu1, mu2 = (np.atleast_1d(np.asarray(m, np.float64)) for m in (mu1, mu2))
  sigma1, sigma2 = (np.atleast_2d(np.asarray(s, np.float64)) for s in (sigma1, sigma2))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(f"Mismatched statistics: mu {mu1.shape} vs {mu2.shape}, sigma "
                     f"{sigma1.shape} vs {sigma2.shape}.")
  root1 = _sqrt_psd(sigma1) if sigma1_sqrt is None else sigma1_sqrt
  trace_sqrt = _trace_sqrt_of_psd(root1 @ sigma2 @ root1)
  return _combine(mu1 - mu2, np.trace(sigma1), np.trace(sigma2), trace_sqrt)


def _combine(diff, trace1, trace2, trace_sqrt) -> float:
  return float(diff @ diff + trace1 + trace2 - 2.0 * trace_sqrt)


def fid_from_statistics(a: FeatureStatistics, b: FeatureStatistics) -> float:
  """FID between two feature sets, by the cheapest exact route.

  With covariance factors (kept rows) S_a = X^T X and S_b = Y^T Y, the non-zero eigenvalues
  of S_a S_b are those of (X Y^T)(X Y^T)^T, so Tr((S_a S_b)^(1/2)) is the sum of the singular
  values of the N_a x N_b matrix X Y^T; with one factor, Y S_a Y^T (N_b x N_b) has them too.
  Only when both sets are larger than D does it fall back to the D x D form, reusing a's
  cached square root.
  """
  x, y = a.covariance_factor(), b.covariance_factor()
  if x is not None and y is not None:
    trace_sqrt = float(np.sum(np.linalg.svd(x @ y.T, compute_uv=False)))
  elif y is not None:
    trace_sqrt = _trace_sqrt_of_psd(y @ a.covariance @ y.T)
  elif x is not None:
    trace_sqrt = _trace_sqrt_of_psd(x @ b.covariance @ x.T)
  else:
    return frechet_distance(a.mean, a.covariance, b.mean, b.covariance,
                            sigma1_sqrt=a.covariance_sqrt())
  return _combine(a.mean - b.mean, np.trace(a.covariance), np.trace(b.covariance), trace_sqrt)
