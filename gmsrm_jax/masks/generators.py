"""Mask generators: free-form brush strokes, rectangles and the centre square.

A mask is a float32 array [H, W] with 1 = hole (pixel to inpaint) and 0 = known.

Stroke geometry is computed in integers only (random integers, a fixed-point direction table,
floor division), so a mask depends on nothing but the integer stream of numpy's PCG64 bit
generator, which is specified bit for bit on every platform. That is what lets
`training_mask` promise identical masks on any machine.
"""

import math

import numpy as np
from PIL import Image
from PIL import ImageDraw

Size = int | tuple[int, int]

# Headings in units of 2*pi / _ANGLE_STEPS; direction vectors in fixed point.
_ANGLE_STEPS = 1024
_UNIT = 4096
_ANGLES = 2.0 * np.pi * np.arange(_ANGLE_STEPS) / _ANGLE_STEPS
# A libm that differs in the last ulp changes these integers only if UNIT*cos lies within an
# ulp of a half-integer; tests/test_masks.py checks that every entry is far from one.
DIRECTION_TABLE_RAW = np.stack([_UNIT * np.cos(_ANGLES), _UNIT * np.sin(_ANGLES)], axis=1)
_COS = np.rint(DIRECTION_TABLE_RAW[:, 0]).astype(np.int64)
_SIN = np.rint(DIRECTION_TABLE_RAW[:, 1]).astype(np.int64)

# DeepFill v2 (Yu et al. 2019, free-form mask algorithm): consecutive segments turn by about
# 2*pi/5 +- 2*pi/15, alternating left and right, which gives the zig-zag brush strokes.
_MEAN_TURN = round(_ANGLE_STEPS / 5)
_TURN_SPREAD = round(_ANGLE_STEPS / 15)

# Boxes added to free-form masks (CoModGAN mixes boxes into its brush masks); their sides are
# this fraction range of the image side. Large holes come from the strokes, so boxes stay small.
_FREE_FORM_BOX_FRACS = (0.05, 0.3)


def as_hw(size: Size) -> tuple[int, int]:
  """(height, width) from an int (square) or an (h, w) pair."""
  if isinstance(size, (int, np.integer)):
    height = width = int(size)
  else:
    height, width = (int(side) for side in size)
  if height < 1 or width < 1:
    raise ValueError(f"Mask size must be positive, got {size!r}.")
  return height, width


def hole_ratio(mask: np.ndarray) -> float:
  """Fraction of the image that is hole (mean of the mask; 1 = hole)."""
  # float64 accumulation keeps the ratio of a binary mask exactly count / size, the same number
  # that the bins' (lo, hi] comparisons were designed against.
  return float(np.mean(mask, dtype=np.float64))


def brush_width_range(size: Size, max_width_frac: float) -> tuple[int, int]:
  """Brush widths in pixels (min, max); DeepFill v2 uses 12..40 px at 256, a ratio of ~1/3."""
  height, width = as_hw(size)
  if max_width_frac <= 0:
    raise ValueError(f"max_width_frac must be positive, got {max_width_frac}.")
  max_width = max(1, int(max_width_frac * min(height, width) + 0.5))
  return max(1, (max_width + 1) // 3), max_width


def random_strokes(rng: np.random.Generator, height: int, width: int, *, num_strokes: int,
                   max_vertices: int, min_width: int, max_width: int) -> list[tuple[list[int], int]]:
  """Random-walk brush strokes as (flat [x0, y0, x1, y1, ...] vertex list, brush width) pairs.

  All strokes of one call are generated together with a handful of vectorised numpy calls,
  because per-vertex Python would dominate the cost of a mask.
  """
  if max_vertices < 1:
    raise ValueError(f"max_vertices must be >= 1, got {max_vertices}.")
  num_vertices = rng.integers(min(2, max_vertices), max_vertices + 1, size=num_strokes)
  total = int(num_vertices.sum())
  firsts = np.cumsum(num_vertices) - num_vertices
  vertex_in_stroke = np.arange(total) - np.repeat(firsts, num_vertices)

  turns = rng.integers(_MEAN_TURN - _TURN_SPREAD, _MEAN_TURN + _TURN_SPREAD + 1, size=total)
  # DeepFill's strokes all drift rightwards; a random base heading per stroke makes them
  # isotropic without changing their shape.
  base_heading = np.repeat(rng.integers(0, _ANGLE_STEPS, size=num_strokes), num_vertices)
  heading = (np.where(vertex_in_stroke % 2 == 0, -turns, turns) + base_heading) % _ANGLE_STEPS
  # Segment length around DeepFill's average radius, a diagonal / 8.
  mean_length = max(1, math.isqrt(height * height + width * width) // 8)
  length = rng.integers(max(1, mean_length // 2), mean_length * 3 // 2 + 1, size=total)

  step_x = length * _COS[heading] // _UNIT
  step_y = length * _SIN[heading] // _UNIT
  step_x[firsts] = rng.integers(0, width, size=num_strokes)
  step_y[firsts] = rng.integers(0, height, size=num_strokes)
  x = _walk(step_x, firsts, num_vertices)
  y = _walk(step_y, firsts, num_vertices)
  # Reflect at the borders instead of clipping, so strokes that wander off the image do not
  # pile up along its edge.
  x, y = _reflect(x, width - 1), _reflect(y, height - 1)

  widths = rng.integers(min_width, max_width + 1, size=num_strokes).tolist()
  xy = np.stack([x, y], axis=1).ravel().tolist()
  ends = (2 * (firsts + num_vertices)).tolist()
  return [(xy[2 * start:end], stroke_width)
          for start, end, stroke_width in zip(firsts.tolist(), ends, widths)]


def _walk(steps: np.ndarray, firsts: np.ndarray, counts: np.ndarray) -> np.ndarray:
  """Per-stroke cumulative sums in one pass; steps[firsts] hold the start points."""
  totals = np.cumsum(steps)
  before_stroke = totals[firsts] - steps[firsts]
  return totals - np.repeat(before_stroke, counts)


def _reflect(coords: np.ndarray, last: int) -> np.ndarray:
  if last == 0:
    return np.zeros_like(coords)
  period = 2 * last
  coords = coords % period
  return np.where(coords > last, period - coords, coords)


def draw_strokes(draw: ImageDraw.ImageDraw, strokes: list[tuple[list[int], int]]) -> None:
  """Thick polylines with a disc at every vertex, i.e. round joints and round caps."""
  # Discs per vertex are ~2.5x faster in Pillow than line(joint="curve") and also round the ends.
  for xy, width in strokes:
    draw.line(xy, fill=1, width=width)
    radius = (width - 1) / 2
    for i in range(0, len(xy), 2):
      x, y = xy[i], xy[i + 1]
      draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=1)


def free_form_mask_u8(rng: np.random.Generator, size: Size, *, max_strokes: int,
                      max_vertices: int, max_width_frac: float, max_boxes: int) -> np.ndarray:
  """`free_form_mask` as uint8 0/1, the form the samplers count and combine without copies."""
  height, width = as_hw(size)
  if max_strokes < 1:
    raise ValueError(f"max_strokes must be >= 1, got {max_strokes}.")
  if max_boxes < 0:
    raise ValueError(f"max_boxes must be >= 0, got {max_boxes}.")
  min_width, max_width = brush_width_range((height, width), max_width_frac)
  image = Image.new("L", (width, height), 0)
  draw = ImageDraw.Draw(image)
  strokes = random_strokes(rng, height, width, num_strokes=int(rng.integers(1, max_strokes + 1)),
                           max_vertices=max_vertices, min_width=min_width, max_width=max_width)
  draw_strokes(draw, strokes)
  lo_frac, hi_frac = _FREE_FORM_BOX_FRACS
  for _ in range(int(rng.integers(0, max_boxes + 1))):
    top, left, box_h, box_w = _random_box(rng, height, width, lo_frac, hi_frac)
    draw.rectangle((left, top, left + box_w - 1, top + box_h - 1), fill=1)
  return np.asarray(image)


def free_form_mask(rng: np.random.Generator, size: Size, *, max_strokes: int, max_vertices: int,
                   max_width_frac: float, max_boxes: int) -> np.ndarray:
  """Free-form mask in the style of DeepFill v2 / CoModGAN: brush strokes plus a few boxes.

  Args:
    rng: source of randomness; the mask is a pure function of its state.
    size: side of a square mask, or (height, width).
    max_strokes: 1..max_strokes random-walk strokes.
    max_vertices: each stroke has 2..max_vertices vertices (1 gives dots).
    max_width_frac: largest brush width as a fraction of the shorter image side; widths are
      drawn from [max/3, max].
    max_boxes: 0..max_boxes boxes with sides 5%..30% of the image side.

  Returns:
    float32 [H, W], 1 = hole.
  """
  return free_form_mask_u8(rng, size, max_strokes=max_strokes, max_vertices=max_vertices,
                           max_width_frac=max_width_frac, max_boxes=max_boxes).astype(np.float32)


def _side(frac: float, extent: int) -> int:
  return min(extent, max(1, int(frac * extent + 0.5)))


def _random_box(rng, height, width, min_frac, max_frac) -> tuple[int, int, int, int]:
  box_h = int(rng.integers(_side(min_frac, height), _side(max_frac, height) + 1))
  box_w = int(rng.integers(_side(min_frac, width), _side(max_frac, width) + 1))
  top = int(rng.integers(0, height - box_h + 1))
  left = int(rng.integers(0, width - box_w + 1))
  return top, left, box_h, box_w


def rectangle_mask_u8(rng: np.random.Generator, size: Size, *, max_boxes: int, min_frac: float,
                      max_frac: float) -> np.ndarray:
  """`rectangle_mask` as uint8 0/1."""
  height, width = as_hw(size)
  if max_boxes < 1:
    raise ValueError(f"rect max_boxes must be >= 1, got {max_boxes}.")
  if not 0 < min_frac <= max_frac <= 1:
    raise ValueError(f"Need 0 < min_frac <= max_frac <= 1, got {min_frac}, {max_frac}.")
  mask = np.zeros((height, width), np.uint8)
  for _ in range(int(rng.integers(1, max_boxes + 1))):
    top, left, box_h, box_w = _random_box(rng, height, width, min_frac, max_frac)
    mask[top:top + box_h, left:left + box_w] = 1
  return mask


def rectangle_mask(rng: np.random.Generator, size: Size, *, max_boxes: int, min_frac: float,
                   max_frac: float) -> np.ndarray:
  """Regular holes: 1..max_boxes axis-aligned boxes, each side min_frac..max_frac of the image.

  Boxes lie fully inside the image and may overlap. Returns float32 [H, W], 1 = hole.
  """
  return rectangle_mask_u8(rng, size, max_boxes=max_boxes, min_frac=min_frac,
                           max_frac=max_frac).astype(np.float32)


def center_mask(size: Size, area_ratio: float) -> np.ndarray:
  """Centred hole covering `area_ratio` of the image (GM-SRM Table II uses 0.25 and 0.5).

  Square images get a square hole whose side is the integer nearest in area to the target;
  other images get a hole with the image's aspect ratio, each side rounded down or up,
  whichever pair lands closest to the target area. Odd margins put the extra pixel after
  the hole (bottom/right).
  """
  height, width = as_hw(size)
  if not 0 < area_ratio <= 1:
    raise ValueError(f"area_ratio must be in (0, 1], got {area_ratio}.")
  target = area_ratio * height * width
  scale = math.sqrt(area_ratio)

  def nearby(extent):
    exact = extent * scale
    return sorted({min(extent, max(1, math.floor(exact))), min(extent, max(1, math.ceil(exact)))})

  if height == width:
    candidates = [(side, side) for side in nearby(height)]
  else:
    candidates = [(hole_h, hole_w) for hole_h in nearby(height) for hole_w in nearby(width)]
  hole_h, hole_w = min(candidates, key=lambda hw: abs(hw[0] * hw[1] - target))
  top, left = (height - hole_h) // 2, (width - hole_w) // 2
  mask = np.zeros((height, width), np.float32)
  mask[top:top + hole_h, left:left + hole_w] = 1
  return mask
