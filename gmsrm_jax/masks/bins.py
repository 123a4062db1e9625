"""Hole-ratio bins used by the papers' result tables; every bin is half-open, (lo, hi]."""

import types
from collections.abc import Mapping

# CICM (§4.1) reports 0-20%, 20-40% and 40-60%; GM-SRM Table I reports 10% bins from 20% to 60%.
HOLE_RATIO_BINS: Mapping[str, tuple[float, float]] = types.MappingProxyType({
    "0-20": (0.0, 0.2),
    "20-40": (0.2, 0.4),
    "40-60": (0.4, 0.6),
    "20-30": (0.2, 0.3),
    "30-40": (0.3, 0.4),
    "40-50": (0.4, 0.5),
    "50-60": (0.5, 0.6),
})
CICM_BINS = ("0-20", "20-40", "40-60")
GMSRM_BINS = ("20-30", "30-40", "40-50", "50-60")


def in_interval(ratio: float, lo: float, hi: float) -> bool:
  """The one membership test every bin and range in this package uses: lo < ratio <= hi."""
  return lo < ratio <= hi


def bin_of(ratio: float, bins: Mapping[str, tuple[float, float]] = HOLE_RATIO_BINS) -> list[str]:
  """Names of all bins containing `ratio`, in the bins' order (the bins overlap, so several)."""
  return [name for name, (lo, hi) in bins.items() if in_interval(ratio, lo, hi)]


def bin_bounds(bin_name: str,
               bins: Mapping[str, tuple[float, float]] = HOLE_RATIO_BINS) -> tuple[float, float]:
  try:
    return bins[bin_name]
  except KeyError:
    raise KeyError(f"Unknown hole-ratio bin {bin_name!r}; known bins: {list(bins)}.") from None


def count_bounds(lo: float, hi: float, num_pixels: int) -> tuple[int, int]:
  """Smallest and largest hole-pixel counts c with lo < c / num_pixels <= hi.

  Computed with the same float comparison as `in_interval`, so a mask with a count in this
  range is in the bin by `bin_of` too, edges included.
  """
  if not 0 <= lo < hi <= 1:
    raise ValueError(f"A hole-ratio interval needs 0 <= lo < hi <= 1, got ({lo}, {hi}].")
  lo_count = int(lo * num_pixels)
  while lo_count > 0 and in_interval((lo_count - 1) / num_pixels, lo, hi):
    lo_count -= 1
  while lo_count <= num_pixels and not in_interval(lo_count / num_pixels, lo, hi):
    lo_count += 1
  if lo_count > num_pixels or lo_count / num_pixels > hi:
    raise ValueError(
        f"No mask of {num_pixels} pixels has a hole ratio in ({lo}, {hi}]; use a larger size.")
  hi_count = max(lo_count, int(hi * num_pixels))
  while not in_interval(hi_count / num_pixels, lo, hi):
    hi_count -= 1
  while hi_count < num_pixels and in_interval((hi_count + 1) / num_pixels, lo, hi):
    hi_count += 1
  return lo_count, hi_count
