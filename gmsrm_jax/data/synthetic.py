"""`synthetic_scenes`: a deterministic, offline image corpus with structure worth inpainting.

Every image is a small scene: a background (a horizon between a gradient sky and a textured
ground, or a full-frame gradient/texture) with 2-7 antialiased shapes (ellipses, rotated
rectangles, triangles, rings) filled with flat colours, gradients or textures. Textures
(stripes, checkers, dots, waves, bricks, grids) and colours are drawn from CORPUS-WIDE banks
fixed by `_BANK_SEED`, so the same patterns recur across images: a model can learn, and a
memory-based model (GM-SRM's generative memory) can recall, what a partially hidden pattern
continues as.

Image k of a split is a pure function of (split, k, image size): preparing twice gives
identical files, and the corpus does not depend on the order of generation.
"""

import dataclasses
import math

import numpy as np
import tensorflow_datasets as tfds

from gmsrm_jax.data import decode

_BANK_SEED = 20_240_611
_NUM_TEXTURES = 40
_NUM_COLOURS = 32
_SPLIT_STREAMS = {"train": 0, "test": 1}  # Disjoint RNG streams: the splits share no image.


@dataclasses.dataclass
class SyntheticScenesConfig(tfds.core.BuilderConfig):
  """height x width is the landscape size; every 4th image is stored portrait (transposed)."""
  height: int = 72
  width: int = 80
  num_train: int = 4000
  num_test: int = 256


class SyntheticScenes(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Structured synthetic scenes, generated locally (nothing is downloaded).

  Not registered in the TFDS registry (TFDS already owns names like `image_folder`, and a
  module imported twice would collide); build it with `gmsrm_jax.data.builders.make_builder`.
  """

  name = "synthetic_scenes"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      # Stored 48x40 and loaded at resize_shorter=36, so the tests exercise the resize path.
      SyntheticScenesConfig(name="tiny", description="48x40, 128 train / 32 test (tests).",
                            height=40, width=48, num_train=128, num_test=32),
      SyntheticScenesConfig(name="64", description="80x72, 4000 train / 256 test (CPU demo).",
                            height=72, width=80, num_train=4000, num_test=256),
      # Shorter side 320 = the paper's resize_shorter, so loading does not resample.
      SyntheticScenesConfig(name="256", description="384x320, 20000 train / 1000 test.",
                            height=320, width=384, num_train=20_000, num_test=1000),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "256"

  def _info(self) -> tfds.core.DatasetInfo:
    # Built directly: tfds.core.dataset_info_from_configs needs the builder to live in a
    # dataset package with metadata files, which a plain module is not.
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
        }),
        supervised_keys=None,
        homepage="https://example.invalid/gmsrm_jax",  # Generated locally; no source URL.
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    config = self.builder_config
    return {
        "train": self._generate_examples("train", config.num_train),
        "test": self._generate_examples("test", config.num_test),
    }

  def _generate_examples(self, split: str, num_examples: int):
    config = self.builder_config
    for index in range(num_examples):
      image = render_scene(split, index, config.height, config.width)
      # Level 3 encodes ~2x faster than the default 6 for ~20% larger files; decoding, which is
      # what the input pipeline pays for, is equally fast.
      yield index, {"image": decode.encode_png(image, compress_level=3)}


def render_scene(split: str, index: int, height: int, width: int) -> np.ndarray:
  """Image `index` of `split` as RGB uint8; portrait (width x height) for every 4th index."""
  rng = np.random.default_rng([_BANK_SEED, _SPLIT_STREAMS[split], index])
  if index % 4 == 3:
    height, width = width, height
  return _Scene(rng, height, width, _banks()).render()


_BANKS = None


def _banks():
  """The corpus-wide colour and texture banks (built once, from a fixed seed)."""
  global _BANKS
  if _BANKS is None:
    rng = np.random.default_rng(_BANK_SEED)
    colours = _random_colours(rng, _NUM_COLOURS)
    textures = []
    for _ in range(_NUM_TEXTURES):
      first, second = rng.choice(_NUM_COLOURS, size=2, replace=False)
      textures.append(dict(
          kind=rng.choice(_TEXTURE_KINDS),
          # Period as a fraction of the image's shorter side, so the corpus looks alike at
          # every resolution (clamped to >= 3 pixels when rendered, to stay representable).
          period=rng.uniform(0.06, 0.22),
          angle=rng.uniform(0, np.pi),
          colours=(colours[first], colours[second]),
          duty=rng.uniform(0.3, 0.6),
      ))
    _BANKS = (colours, textures)
  return _BANKS


def _random_colours(rng, count):
  # HSV with moderate saturation: pleasant, clearly distinct colours rather than RGB noise.
  hue = rng.uniform(0, 1, count)
  saturation = rng.uniform(0.25, 0.9, count)
  value = rng.uniform(0.3, 0.98, count)
  # The textbook HSV -> RGB conversion: six hue sectors, each a fixed order of (v, t, p, q).
  sector = np.floor(hue * 6).astype(int) % 6
  f = hue * 6 - np.floor(hue * 6)
  p = value * (1 - saturation)
  q = value * (1 - f * saturation)
  t = value * (1 - (1 - f) * saturation)
  table = [(value, t, p), (q, value, p), (p, value, t), (p, q, value), (t, p, value),
           (value, p, q)]
  rgb = np.stack([np.choose(sector, [row[c] for row in table]) for c in range(3)], axis=-1)
  return rgb.astype(np.float32)


_TEXTURE_KINDS = ("stripes", "checker", "dots", "waves", "bricks", "grid")


# Elementwise helpers; np.remainder and np.hypot are ~50x / ~10x slower on float32 arrays.
# (Scalars use `math`: a NumPy float64 scalar would silently promote float32 images to float64.)
def _frac(x):
  return x - np.floor(x)


def _hypot(x, y):
  return np.sqrt(x * x + y * y)


class _Scene:
  """Renders one scene in float32 RGB in [0, 1]; all drawing is vectorised over pixels."""

  def __init__(self, rng, height, width, banks):
    self.rng = rng
    self.height, self.width = height, width
    self.colours, self.textures = banks
    self.short = min(height, width)

  def render(self) -> np.ndarray:
    rng = self.rng
    canvas = np.empty((self.height, self.width, 3), np.float32)
    full = (slice(0, self.height), slice(0, self.width))
    if rng.random() < 0.55:
      self._horizon(canvas)
    else:
      canvas[...] = self._fill(full, texture_prob=0.5)
    for _ in range(rng.integers(2, 8)):
      self._shape(canvas)
    return np.clip(np.rint(canvas * 255), 0, 255).astype(np.uint8)

  # Coordinates are in pixels of the full image, for the window `box` (two slices).
  def _grid(self, box):
    ys = np.arange(box[0].start, box[0].stop, dtype=np.float32)[:, None] + 0.5
    xs = np.arange(box[1].start, box[1].stop, dtype=np.float32)[None, :] + 0.5
    return ys, xs

  def _colour(self):
    base = self.colours[self.rng.integers(_NUM_COLOURS)]
    # Small jitter: colours recur across the corpus but are not copied bit-exactly.
    return np.clip(base + self.rng.normal(0, 0.03, 3).astype(np.float32), 0, 1)

  def _gradient(self, box):
    ys, xs = self._grid(box)
    angle = self.rng.uniform(0, 2 * np.pi)
    first, second = self._colour(), self._colour()
    u = (math.cos(angle) * xs + math.sin(angle) * ys) / max(self.height, self.width)
    u = (u - u.min()) / max(float(u.max() - u.min()), 1e-6)
    return first + (second - first) * u[..., None]

  def _texture(self, box):
    spec = self.textures[self.rng.integers(_NUM_TEXTURES)]
    ys, xs = self._grid(box)
    period = max(3.0, spec["period"] * self.short)
    angle = spec["angle"] + self.rng.normal(0, 0.05)
    u = (math.cos(angle) * xs + math.sin(angle) * ys) / period
    v = (-math.sin(angle) * xs + math.cos(angle) * ys) / period
    kind, duty = spec["kind"], spec["duty"]
    # Each pattern is a signed distance s (in periods; negative where the first colour goes).
    # Coverage ramps over one pixel across s = 0, which antialiases the pattern edges.
    to_edge = np.minimum(0.5 - np.abs(_frac(u) - 0.5), 0.5 - np.abs(_frac(v) - 0.5))
    if kind == "stripes":
      s = np.abs(_frac(u) - 0.5) - duty / 2
    elif kind == "checker":
      even_cell = _frac((np.floor(u) + np.floor(v)) / 2) < 0.25
      s = np.where(even_cell, -to_edge, to_edge)
    elif kind == "dots":
      s = _hypot(_frac(u) - 0.5, _frac(v) - 0.5) - duty * 0.45
    elif kind == "waves":
      s = np.abs(_frac(u + 0.25 * np.sin(2 * np.pi * v)) - 0.5) - duty / 2
    elif kind == "bricks":
      shifted = u + _frac(np.floor(v * 2) / 2)  # Every other row offset by half a brick.
      s = np.maximum(np.abs(_frac(shifted) - 0.5) - 0.45, np.abs(_frac(v * 2) - 0.5) - 0.4)
    else:  # grid: thin lines along the cell edges.
      s = to_edge - duty * 0.2
    coverage = np.clip(0.5 - s * period, 0, 1)[..., None]
    first, second = spec["colours"]
    return second + (first - second) * coverage

  def _fill(self, box, texture_prob):
    draw = self.rng.random()
    if draw < texture_prob:
      return self._texture(box)
    if draw < texture_prob + (1 - texture_prob) * 0.6:
      return self._gradient(box)
    return np.broadcast_to(self._colour(), (box[0].stop - box[0].start,
                                            box[1].stop - box[1].start, 3))

  def _horizon(self, canvas):
    rng = self.rng
    full = (slice(0, self.height), slice(0, self.width))
    ys, xs = self._grid(full)
    level = rng.uniform(0.3, 0.7) * self.height
    tilt = rng.uniform(-0.25, 0.25)
    # Signed distance (pixels) to a tilted, slightly wavy horizon line.
    wave = rng.uniform(0, 0.04) * self.height * np.sin(xs * 2 * np.pi / (rng.uniform(0.5, 2)
                                                                          * self.width))
    distance = ys - (level + tilt * (xs - self.width / 2) + wave)
    ground = np.clip(0.5 + distance, 0, 1)[..., None]
    sky = self._gradient(full)
    canvas[...] = sky + (self._fill(full, texture_prob=0.8) - sky) * ground

  def _shape(self, canvas):
    rng = self.rng
    size = rng.uniform(0.12, 0.45) * self.short
    cy, cx = rng.uniform(0, self.height), rng.uniform(0, self.width)
    reach = size * 1.5 + 2  # Bounding radius of every shape kind below (with its soft edge).
    box = (slice(max(0, int(cy - reach)), min(self.height, int(np.ceil(cy + reach)))),
           slice(max(0, int(cx - reach)), min(self.width, int(np.ceil(cx + reach)))))
    if box[0].start >= box[0].stop or box[1].start >= box[1].stop:
      return
    ys, xs = self._grid(box)
    angle = rng.uniform(0, np.pi)
    dy, dx = ys - cy, xs - cx
    u = math.cos(angle) * dx + math.sin(angle) * dy
    v = -math.sin(angle) * dx + math.cos(angle) * dy
    kind = rng.choice(("ellipse", "rectangle", "triangle", "ring"))
    aspect = rng.uniform(0.45, 1.0)
    if kind == "ellipse":
      radius_u, radius_v = size, size * aspect
      # First-order signed distance to an ellipse (exact on circles; good within a pixel).
      level = _hypot(u / radius_u, v / radius_v)
      distance = (level - 1) * min(radius_u, radius_v)
    elif kind == "rectangle":
      distance = np.maximum(np.abs(u) - size, np.abs(v) - size * aspect)
    elif kind == "triangle":
      # Intersection of three half-planes 120 degrees apart (an equilateral triangle).
      normals = [(math.cos(a), math.sin(a)) for a in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3,
                                                 np.pi / 2 + 4 * np.pi / 3)]
      distance = np.max([nu * u + nv * v for nu, nv in normals], axis=0) - size * 0.6
    else:  # ring
      width = size * rng.uniform(0.2, 0.45)
      distance = np.abs(_hypot(u, v) - size * 0.8) - width / 2
    coverage = np.clip(0.5 - distance, 0, 1)[..., None]
    window = canvas[box]
    fill = self._fill(box, texture_prob=0.45)
    window += (fill - window) * coverage
