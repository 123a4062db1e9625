"""Deterministic mask samplers: training masks and test masks inside a hole-ratio bin.

Each mask owns a random stream `np.random.default_rng([seed, ..., index, stream_tag])`: numpy's
SeedSequence hashes the whole list, so masks neither depend on the order in which the data
pipeline's threads ask for them nor share a stream with other randomness (crops, flips) that
is seeded from the same (seed, step, index). The generators use only the integer part of the
PCG64 stream (see generators.py), so the same arguments give the same bits on any machine.
"""

import zlib

import numpy as np
from PIL import Image
from PIL import ImageDraw

from gmsrm_jax import config_checks
from gmsrm_jax.masks import bins as bins_lib
from gmsrm_jax.masks import generators

# Tags that set the mask streams apart from any other stream seeded with (seed, step, index).
TRAINING_STREAM = zlib.crc32(b"gmsrm_jax.masks.training_mask")
TEST_STREAM = zlib.crc32(b"gmsrm_jax.masks.mask_in_bin")

# Rejection tries before training_mask falls back to repairing the closest candidate. The base
# range (0, 0.6] is never missed (max ratio ~0.5 in 5000 draws); a range such as (0.1, 0.6]
# rejects ~15% of free-form and ~26% of rectangle draws, so 10 tries fail ~1e-6 of the time.
MAX_TRAINING_TRIES = 10
# Draws `ratio_sampling = "overlay"` may overlay (or throw away on overshoot) before nudging.
MAX_OVERLAY_LAYERS = 12
# Strokes mask_in_bin may draw (and throw away on overshoot) before its morphological fallback.
MAX_TEST_STROKES = 64


def training_mask(mask_config, size: generators.Size, *, seed: int, step: int,
                  index: int) -> np.ndarray:
  """The mask of example `index` at training step `step`: a pure function of its arguments.

  With probability `irregular_prob` a free-form mask, else a rectangle mask (GM-SRM §IV-A,
  following [21]: "irregular and regular masks"). Draws of the chosen kind are rejected until
  the hole ratio is in `hole_ratio_range` = (lo, hi] (half-open like the test bins, so lo = 0
  still excludes an empty mask), at most MAX_TRAINING_TRIES times; if all miss, the closest
  draw is grown (dilated) or shrunk (eroded) along its boundary until it is in range. So the
  returned mask is always in range.

  Args:
    mask_config: `config.masks` (irregular_prob, hole_ratio_range, free_form.*, rect.*).
    size: side of a square mask, or (height, width).
    seed, step, index: non-negative ints that identify the mask.

  Returns:
    float32 [H, W], 1 = hole.
  """
  height, width = generators.as_hw(size)
  lo, hi = mask_config.hole_ratio_range
  lo_count, hi_count = bins_lib.count_bounds(lo, hi, height * width)
  rng = np.random.default_rng([seed, step, index, TRAINING_STREAM])
  irregular = rng.random() < mask_config.irregular_prob
  if config_checks.added_field(mask_config, "masks.ratio_sampling") == "overlay":
    return _overlay_mask(rng, (height, width), mask_config, irregular, lo_count, hi_count)

  closest, closest_miss = None, None
  for _ in range(MAX_TRAINING_TRIES):
    if irregular:
      candidate = _free_form_from_config(rng, (height, width), mask_config.free_form)
    else:
      candidate = _rectangles_from_config(rng, (height, width), mask_config.rect)
    count = int(np.count_nonzero(candidate))
    miss = max(lo_count - count, count - hi_count, 0)
    if miss == 0:
      return candidate.astype(np.float32)
    if closest_miss is None or miss < closest_miss:
      closest, closest_miss = candidate, miss
  return nudge_into(closest.astype(bool), lo_count, hi_count).astype(np.float32)


def mask_in_bin(mask_config, size: generators.Size, *, seed: int, index: int, bin_name: str,
                bins=bins_lib.HOLE_RATIO_BINS) -> np.ndarray:
  """A free-form test mask whose hole ratio is in `bins[bin_name]`; a pure function of its args.

  Builds the mask stroke by stroke (brush parameters from `mask_config.free_form`) towards a
  hole count drawn uniformly in the bin, so ratios spread over the whole bin rather than
  piling up at its lower edge. A stroke that would overshoot the bin is discarded and another
  one drawn. Test masks are pure brush strokes, like PConv's irregular test masks; boxes
  and `max_strokes` only shape training masks. If MAX_TEST_STROKES strokes do not reach the
  bin, the boundary is dilated pixel by pixel into it (`nudge_into`), so this always succeeds
  whenever the bin contains a pixel count at this size.
  """
  height, width = generators.as_hw(size)
  lo, hi = bins_lib.bin_bounds(bin_name, bins)
  lo_count, hi_count = bins_lib.count_bounds(lo, hi, height * width)
  rng = np.random.default_rng([seed, index, zlib.crc32(bin_name.encode()), TEST_STREAM])
  target = int(rng.integers(lo_count, hi_count + 1))
  min_width, max_width = generators.brush_width_range(
      (height, width), mask_config.free_form.max_width_frac)

  def stroke():
    layer = Image.new("L", (width, height), 0)
    generators.draw_strokes(ImageDraw.Draw(layer), generators.random_strokes(
        rng, height, width, num_strokes=1, max_vertices=mask_config.free_form.max_vertices,
        min_width=min_width, max_width=max_width))
    return np.asarray(layer, bool)

  mask = _overlay_until(stroke, (height, width), target, hi_count, MAX_TEST_STROKES)
  return nudge_into(mask, lo_count, hi_count).astype(np.float32)


def nudge_into(mask: np.ndarray, lo_count: int, hi_count: int) -> np.ndarray:
  """Grows or shrinks a boolean mask along its boundary until lo_count <= holes <= hi_count.

  Each round adds the ring that a 4-neighbour dilation would add (or removes the ring an
  erosion would remove); the last ring is taken only in part, in raster order, so the count
  lands inside the interval exactly. Terminates because every round changes the count by at
  least one pixel in the needed direction. Masks already inside are returned unchanged.
  """
  mask = mask.copy()
  count = int(np.count_nonzero(mask))
  while count < lo_count:
    if count == 0:
      mask[mask.shape[0] // 2, mask.shape[1] // 2] = True
      count = 1
      continue
    ring = np.flatnonzero(_dilate(mask) & ~mask)[:hi_count - count]
    mask.flat[ring] = True
    count += ring.size
  while count > hi_count:
    ring = np.flatnonzero(mask & ~_erode(mask))[:count - lo_count]
    mask.flat[ring] = False
    count -= ring.size
  return mask


def _dilate(mask: np.ndarray) -> np.ndarray:
  padded = np.pad(mask, 1)
  return (padded[1:-1, 1:-1] | padded[:-2, 1:-1] | padded[2:, 1:-1]
          | padded[1:-1, :-2] | padded[1:-1, 2:])


def _erode(mask: np.ndarray) -> np.ndarray:
  # Outside the image counts as known, so even a full mask has a boundary ring to remove.
  padded = np.pad(mask, 1)
  return (padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1]
          & padded[1:-1, :-2] & padded[1:-1, 2:])


def _overlay_mask(rng, size, mask_config, irregular: bool, lo_count: int, hi_count: int
                  ) -> np.ndarray:
  """`ratio_sampling = "overlay"`: a target hole count is drawn uniformly in (lo, hi], masks of
  the chosen kind are overlaid until the count reaches it (a layer that would pass `hi` is
  drawn again), and the result is nudged into [target, hi].

  One free-form or rectangle draw rarely covers more than ~40% of the image (the natural
  sampler gives 0.5% of its 64x64 masks above 40%, none above 50%), while the papers test up
  to 60%. Overlaying keeps the shapes; since a single draw may already pass a small target,
  ratios lean large: over (0, 0.6] at 64x64, 2/12/21/19/20/27% of masks fall in the 10%-wide
  bins from 0-10% to 50-60% (mean 0.38; the natural sampler's mean is 0.17).
  """
  target = int(rng.integers(lo_count, hi_count + 1))
  if irregular:
    draw = lambda: _free_form_from_config(rng, size, mask_config.free_form).astype(bool)
  else:
    draw = lambda: _rectangles_from_config(rng, size, mask_config.rect).astype(bool)
  mask = _overlay_until(draw, size, target, hi_count, MAX_OVERLAY_LAYERS)
  return nudge_into(mask, target, hi_count).astype(np.float32)


def _overlay_until(draw, size, target: int, hi_count: int, max_layers: int) -> np.ndarray:
  """Unions `draw()` layers (bool [H, W]) into an empty mask until it has >= `target` holes;
  a layer that would take it past `hi_count` is dropped. At most `max_layers` draws."""
  mask = np.zeros(size, bool)
  for _ in range(max_layers):
    grown = mask | draw()
    grown_count = int(np.count_nonzero(grown))
    if grown_count > hi_count:
      continue
    mask = grown
    if grown_count >= target:
      break
  return mask


def _free_form_from_config(rng, size, free_form_config) -> np.ndarray:
  return generators.free_form_mask_u8(
      rng, size, max_strokes=free_form_config.max_strokes,
      max_vertices=free_form_config.max_vertices,
      max_width_frac=free_form_config.max_width_frac, max_boxes=free_form_config.max_boxes)


def _rectangles_from_config(rng, size, rect_config) -> np.ndarray:
  return generators.rectangle_mask_u8(rng, size, max_boxes=rect_config.max_boxes,
                                      min_frac=rect_config.min_frac,
                                      max_frac=rect_config.max_frac)
