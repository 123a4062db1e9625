"""Masks: generators, deterministic samplers, hole-ratio bins and the external mask folder."""

import hashlib
import importlib.util
import pathlib
import subprocess
import sys

import ml_collections
import numpy as np
from PIL import Image
import pytest

from gmsrm_jax import masks
from gmsrm_jax.masks import bins as bins_lib
from gmsrm_jax.masks import generators
from gmsrm_jax.masks import sampling

REPO = pathlib.Path(__file__).resolve().parents[1]


def _load_module(path: pathlib.Path, name: str):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _base_mask_config() -> ml_collections.ConfigDict:
  return _load_module(REPO / "configs" / "base.py", "base_config").get_config().masks


def _is_binary(mask):
  return mask.dtype == np.float32 and set(np.unique(mask).tolist()) <= {0.0, 1.0}


# --- Generators -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 256, (48, 80)])
def test_generators_return_binary_float32_of_the_requested_shape(size):
  rng = np.random.default_rng(0)
  config = _base_mask_config()
  expected = (size, size) if isinstance(size, int) else size
  for mask in (masks.free_form_mask(rng, size, **config.free_form),
               masks.rectangle_mask(rng, size, **config.rect),
               masks.center_mask(size, 0.25),
               masks.training_mask(config, size, seed=0, step=0, index=0),
               masks.mask_in_bin(config, size, seed=0, index=0, bin_name="20-30")):
    assert mask.shape == expected
    assert _is_binary(mask)
    assert 0 < masks.hole_ratio(mask) < 1


def test_free_form_single_dot_is_bounded_by_the_brush_width():
  # One stroke with one vertex and no boxes is a single disc of the brush's width.
  _, max_width = generators.brush_width_range(256, 0.08)
  for seed in range(20):
    mask = masks.free_form_mask(np.random.default_rng(seed), 256, max_strokes=1, max_vertices=1,
                                max_width_frac=0.08, max_boxes=0)
    rows, cols = np.nonzero(mask)
    assert rows.size > 0
    assert rows.max() - rows.min() < max_width and cols.max() - cols.min() < max_width


def test_stroke_vertices_stay_inside_the_image():
  # Walks are reflected at the borders; clipped or lost strokes would shrink the holes.
  strokes = generators.random_strokes(np.random.default_rng(0), 20, 50, num_strokes=200,
                                      max_vertices=12, min_width=1, max_width=3)
  xs = np.concatenate([xy[0::2] for xy, _ in strokes])
  ys = np.concatenate([xy[1::2] for xy, _ in strokes])
  assert xs.min() == 0 and xs.max() == 49 and ys.min() == 0 and ys.max() == 19
  assert all(1 <= width <= 3 for _, width in strokes)
  assert all(2 <= len(xy) // 2 <= 12 for xy, _ in strokes)


def test_free_form_masks_grow_with_brush_width_and_stroke_count():
  def mean_ratio(**params):
    rng = np.random.default_rng(0)
    return np.mean([masks.hole_ratio(masks.free_form_mask(rng, 64, **params)) for _ in range(50)])

  small = mean_ratio(max_strokes=2, max_vertices=6, max_width_frac=0.03, max_boxes=0)
  wide = mean_ratio(max_strokes=2, max_vertices=6, max_width_frac=0.12, max_boxes=0)
  many = mean_ratio(max_strokes=10, max_vertices=6, max_width_frac=0.03, max_boxes=0)
  assert wide > 2 * small and many > 2 * small


def test_rectangle_mask_single_box_respects_side_fractions():
  for seed in range(50):
    mask = masks.rectangle_mask(np.random.default_rng(seed), (64, 128), max_boxes=1,
                                min_frac=0.25, max_frac=0.5)
    rows, cols = np.nonzero(mask)
    box_h, box_w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert mask.sum() == box_h * box_w  # A single solid box.
    assert 16 <= box_h <= 32 and 32 <= box_w <= 64


@pytest.mark.parametrize("size", [32, 64, 255, 256, (64, 48), (31, 100)])
@pytest.mark.parametrize("area_ratio", [0.25, 0.5])
def test_center_mask_area_and_position(size, area_ratio):
  mask = masks.center_mask(size, area_ratio)
  height, width = mask.shape
  assert abs(masks.hole_ratio(mask) - area_ratio) <= 1 / max(height, width)
  rows, cols = np.nonzero(mask)
  assert mask.sum() == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)  # One solid rectangle...
  assert abs(rows.min() - (height - 1 - rows.max())) <= 1  # ...centred to the pixel.
  assert abs(cols.min() - (width - 1 - cols.max())) <= 1
  if height == width:
    assert np.ptp(rows) == np.ptp(cols)


@pytest.mark.parametrize("side", [32, 33, 64, 255, 256])
@pytest.mark.parametrize("area_ratio", [0.25, 0.5])
def test_center_mask_square_is_the_closest_achievable_area(side, area_ratio):
  best = min(range(1, side + 1), key=lambda hole: abs(hole * hole - area_ratio * side * side))
  assert masks.center_mask(side, area_ratio).sum() == best * best


def test_center_mask_quarter_of_256_is_exact():
  mask = masks.center_mask(256, 0.25)
  assert mask.sum() == 128 * 128
  assert mask[64:192, 64:192].all()


def test_direction_table_is_platform_independent():
  # Stroke geometry goes through rint(4096 * cos): a libm differing in the last ulp could only
  # change an entry lying within an ulp of a half-integer. None is anywhere near one.
  raw = generators.DIRECTION_TABLE_RAW
  assert np.min(np.abs(raw - np.floor(raw) - 0.5)) > 1e-6


# --- Bins -------------------------------------------------------------------------------------


def test_bin_edges_are_half_open():
  assert masks.bin_of(0.2) == ["0-20"]
  assert masks.bin_of(0.2 + 1e-9) == ["20-40", "20-30"]
  assert masks.bin_of(0.3) == ["20-40", "20-30"]
  assert masks.bin_of(0.4) == ["20-40", "30-40"]
  assert masks.bin_of(0.6) == ["40-60", "50-60"]
  assert masks.bin_of(0.0) == []
  assert masks.bin_of(0.6 + 1e-9) == []
  assert masks.bin_of(0.1) == ["0-20"]
  assert list(masks.HOLE_RATIO_BINS) == ["0-20", "20-40", "40-60", "20-30", "30-40", "40-50",
                                         "50-60"]
  assert set(masks.CICM_BINS) | set(masks.GMSRM_BINS) == set(masks.HOLE_RATIO_BINS)


@pytest.mark.parametrize("num_pixels", [100, 1000, 1024, 4096, 65536, 255 * 255])
def test_count_bounds_are_the_exact_edges_of_each_bin(num_pixels):
  for lo, hi in masks.HOLE_RATIO_BINS.values():
    lo_count, hi_count = bins_lib.count_bounds(lo, hi, num_pixels)
    assert bins_lib.in_interval(lo_count / num_pixels, lo, hi)
    assert bins_lib.in_interval(hi_count / num_pixels, lo, hi)
    assert not bins_lib.in_interval((lo_count - 1) / num_pixels, lo, hi)
    assert not bins_lib.in_interval((hi_count + 1) / num_pixels, lo, hi)


def test_count_bounds_rejects_a_bin_with_no_pixel_count():
  with pytest.raises(ValueError, match="larger size"):
    bins_lib.count_bounds(0.2, 0.3, 3)  # 0/3, 1/3, 2/3, 3/3: none in (0.2, 0.3].


def test_unknown_bin_name_is_a_clear_error():
  with pytest.raises(KeyError, match="known bins"):
    masks.mask_in_bin(_base_mask_config(), 32, seed=0, index=0, bin_name="10-20")


# --- Training masks ---------------------------------------------------------------------------


def test_training_mask_is_a_pure_function_of_seed_step_index():
  config = _base_mask_config()
  reference = masks.training_mask(config, 64, seed=3, step=10, index=2)
  np.testing.assert_array_equal(masks.training_mask(config, 64, seed=3, step=10, index=2),
                                reference)
  for other in (dict(seed=4, step=10, index=2), dict(seed=3, step=11, index=2),
                dict(seed=3, step=10, index=3)):
    assert not np.array_equal(masks.training_mask(config, 64, **other), reference)


_FINGERPRINT_SCRIPT = """
import hashlib, sys
import numpy as np
sys.path.insert(0, {repo!r})
from configs import base
from gmsrm_jax import masks
config = base.get_config().masks
digest = hashlib.sha256()
for index in range(8):
  digest.update(np.packbits(masks.training_mask(config, 64, seed=7, step=123, index=index) > 0))
  digest.update(np.packbits(masks.mask_in_bin(config, 64, seed=7, index=index,
                                              bin_name="40-50") > 0))
print(digest.hexdigest())
"""


def test_masks_are_identical_in_a_fresh_process():
  # A fresh interpreter with another hash seed must give the same bits: nothing may depend on
  # process state (str hashes, call order, global RNGs).
  config = _base_mask_config()
  digest = hashlib.sha256()
  for index in range(8):
    digest.update(np.packbits(masks.training_mask(config, 64, seed=7, step=123, index=index) > 0))
    digest.update(np.packbits(masks.mask_in_bin(config, 64, seed=7, index=index,
                                                bin_name="40-50") > 0))
  result = subprocess.run([sys.executable, "-c", _FINGERPRINT_SCRIPT.format(repo=str(REPO))],
                          capture_output=True, text=True, check=True,
                          env={"PYTHONHASHSEED": "12345", "PATH": ""})
  assert result.stdout.strip() == digest.hexdigest()


def test_training_masks_respect_the_hole_ratio_range_and_mix_both_kinds():
  config = _base_mask_config()
  lo, hi = config.hole_ratio_range
  ratios, rectangular = [], 0
  for index in range(200):
    mask = masks.training_mask(config, 64, seed=0, step=index // 8, index=index % 8)
    ratios.append(masks.hole_ratio(mask))
    rows, cols = np.nonzero(mask)
    # A free-form mask is (almost surely) not a union of boxes filling its bounding box; a
    # rectangle mask with one box is. Count the sure rectangles as a lower bound.
    rectangular += mask.sum() == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
  assert all(lo < ratio <= hi for ratio in ratios)
  assert 0.1 < rectangular / 200 < 0.5  # ~ (1 - irregular_prob) * P(one box) ~ 0.5 / 3 + overlaps.


def test_overlay_sampling_reaches_the_large_ratios_the_tests_use():
  natural, overlay = _base_mask_config(), _base_mask_config()
  overlay.ratio_sampling = "overlay"
  ratios = {}
  for name, config in (("natural", natural), ("overlay", overlay)):
    ratios[name] = np.array([masks.hole_ratio(masks.training_mask(
        config, 64, seed=0, step=i // 8, index=i % 8)) for i in range(160)])
  assert np.all((ratios["overlay"] > 0) & (ratios["overlay"] <= 0.6))
  # The natural sampler almost never passes 40% holes; overlaying puts >= 30% of masks there.
  assert np.mean(ratios["natural"] > 0.4) < 0.05 < 0.3 < np.mean(ratios["overlay"] > 0.4)
  assert np.mean(ratios["overlay"] <= 0.3) > 0.2  # Small and medium holes still occur.
  again = masks.training_mask(overlay, 64, seed=0, step=3, index=5)
  assert np.array_equal(again, masks.training_mask(overlay, 64, seed=0, step=3, index=5))


@pytest.mark.parametrize("irregular_prob", [0.0, 1.0])
def test_training_mask_kind_follows_irregular_prob(irregular_prob):
  config = _base_mask_config()
  config.irregular_prob = irregular_prob
  config.rect.max_boxes = 1
  config.free_form.max_boxes = 0
  solid = []
  for index in range(40):
    mask = masks.training_mask(config, 64, seed=0, step=0, index=index)
    rows, cols = np.nonzero(mask)
    solid.append(mask.sum() == (np.ptp(rows) + 1) * (np.ptp(cols) + 1))
  assert all(solid) if irregular_prob == 0 else not any(solid)


@pytest.mark.parametrize("hole_ratio_range,rect_fracs", [
    ((0.5, 0.6), (0.1, 0.3)),  # Boxes too small: every draw misses low, the fallback grows.
    ((0.0, 0.3), (0.9, 1.0)),  # Boxes too large: every draw misses high, the fallback shrinks.
])
def test_training_mask_fallback_lands_in_range_when_rejection_cannot(hole_ratio_range,
                                                                     rect_fracs):
  config = _base_mask_config()
  config.irregular_prob = 0.0
  config.hole_ratio_range = hole_ratio_range
  config.rect.min_frac, config.rect.max_frac = rect_fracs
  lo, hi = hole_ratio_range
  for index in range(20):
    ratio = masks.hole_ratio(masks.training_mask(config, 64, seed=1, step=0, index=index))
    assert lo < ratio <= hi


def test_nudge_into_keeps_the_original_holes_when_growing_and_stays_inside_when_shrinking():
  rng = np.random.default_rng(0)
  for _ in range(30):
    mask = rng.random((40, 40)) < rng.uniform(0.0, 0.2)
    lo_count, hi_count = sorted(rng.integers(1, 1600, size=2).tolist())
    nudged = sampling.nudge_into(mask, lo_count, hi_count)
    assert lo_count <= nudged.sum() <= hi_count
    if mask.sum() < lo_count:
      assert np.all(nudged[mask])
    elif mask.sum() > hi_count:
      assert not np.any(nudged[~mask])
    else:
      np.testing.assert_array_equal(nudged, mask)
  empty = sampling.nudge_into(np.zeros((8, 8), bool), 5, 6)
  assert 5 <= empty.sum() <= 6
  full = sampling.nudge_into(np.ones((8, 8), bool), 1, 1)
  assert full.sum() == 1


# --- Test masks in a bin ----------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 64, 256])
@pytest.mark.parametrize("bin_name", list(masks.HOLE_RATIO_BINS))
def test_mask_in_bin_always_lands_in_its_bin(size, bin_name):
  config = _base_mask_config()
  lo, hi = masks.HOLE_RATIO_BINS[bin_name]
  ratios = [masks.hole_ratio(masks.mask_in_bin(config, size, seed=0, index=index,
                                               bin_name=bin_name)) for index in range(50)]
  assert all(lo < ratio <= hi for ratio in ratios)
  assert all(bin_name in masks.bin_of(ratio) for ratio in ratios)
  # Spread over the bin, not stuck at an edge.
  assert max(ratios) - min(ratios) > 0.4 * (hi - lo)


@pytest.mark.parametrize("bin_name", list(masks.HOLE_RATIO_BINS))
def test_mask_in_bin_succeeds_when_strokes_cannot_reach_the_bin(bin_name):
  # One-pixel dots: 64 strokes cover at most 64 of 4096 pixels, so only the dilation fallback
  # can reach these bins.
  config = _base_mask_config()
  config.free_form.max_vertices = 1
  config.free_form.max_width_frac = 0.001
  lo, hi = masks.HOLE_RATIO_BINS[bin_name]
  for index in range(5):
    ratio = masks.hole_ratio(masks.mask_in_bin(config, 64, seed=0, index=index,
                                               bin_name=bin_name))
    assert lo < ratio <= hi


def test_mask_in_bin_is_deterministic_and_differs_across_indices_seeds_and_bins():
  config = _base_mask_config()
  reference = masks.mask_in_bin(config, 64, seed=0, index=5, bin_name="30-40")
  np.testing.assert_array_equal(masks.mask_in_bin(config, 64, seed=0, index=5, bin_name="30-40"),
                                reference)
  for other in (dict(seed=0, index=6, bin_name="30-40"), dict(seed=1, index=5, bin_name="30-40"),
                dict(seed=0, index=5, bin_name="20-40")):
    assert not np.array_equal(masks.mask_in_bin(config, 64, **other), reference)


# --- External mask folder ---------------------------------------------------------------------

_SIZE = 40  # 1600 pixels: every ratio in _FOLDER_SPEC is a whole pixel count.


def _pattern(seed: int, ratio: float) -> np.ndarray:
  """A random _SIZE x _SIZE boolean hole pattern with exactly round(ratio * size**2) holes."""
  rng = np.random.default_rng(seed)
  flat = np.zeros(_SIZE * _SIZE, bool)
  flat[rng.permutation(flat.size)[:round(ratio * flat.size)]] = True
  return flat.reshape(_SIZE, _SIZE)


def _upsample(pattern: np.ndarray, factor: int) -> np.ndarray:
  # Whole-pixel blocks make the expected NEAREST result independent of its sampling phase.
  return np.kron(pattern, np.ones((factor, factor), bool))


def _save(folder: pathlib.Path, name: str, pattern: np.ndarray, mode: str, factor: int,
          hole_is_white: bool = True):
  holes = _upsample(pattern, factor)
  white = holes if hole_is_white else ~holes
  if mode == "L":
    image = Image.fromarray(np.where(white, 255, 0).astype(np.uint8))
  elif mode == "RGB":
    image = Image.fromarray(np.where(white[..., None], [255, 250, 245], [0, 5, 10])
                            .astype(np.uint8))
  elif mode == "RGBA":
    rgb = np.where(white[..., None], [255, 255, 255], [0, 0, 0])
    alpha = np.random.default_rng(0).integers(0, 256, white.shape + (1,))  # Must be ignored.
    image = Image.fromarray(np.concatenate([rgb, alpha], -1).astype(np.uint8))
  elif mode == "1":
    image = Image.fromarray(white)
  elif mode == "I;16":
    image = Image.fromarray(np.where(white, 65535, 0).astype(np.uint16))
  else:
    raise ValueError(mode)
  image.save(folder / name)


# (file name, hole ratio, image mode, upsampling factor); names sort differently from this order.
_FOLDER_SPEC = [
    ("f_rgb.png", 0.10, "RGB", 3),
    ("a_gray.png", 0.20, "L", 2),  # Exactly on the 0-20 / 20-30 edge.
    ("e_rgba.png", 0.25, "RGBA", 1),
    ("b_bits.bmp", 0.35, "1", 4),
    ("d_jpeg.jpg", 0.45, "L", 8),
    ("c_sixteen.png", 0.55, "I;16", 2),
    ("g_huge.png", 0.70, "L", 1),  # In no bin.
]


@pytest.fixture(name="mask_folder")
def _mask_folder(tmp_path):
  for seed, (name, ratio, mode, factor) in enumerate(_FOLDER_SPEC):
    _save(tmp_path, name, _pattern(seed, ratio), mode, factor)
  (tmp_path / "README.txt").write_text("not a mask")
  (tmp_path / "subdir").mkdir()
  return tmp_path


def _expected_in_name_order():
  ordered = sorted(enumerate(_FOLDER_SPEC), key=lambda item: item[1][0])
  return [(name, _pattern(seed, ratio)) for seed, (name, ratio, _, _) in ordered]


def test_mask_folder_decodes_every_format_to_the_saved_pattern(mask_folder):
  folder = masks.MaskFolder(mask_folder, _SIZE)
  expected = _expected_in_name_order()
  assert [file.name for file in folder.files] == [name for name, _ in expected]
  assert len(folder) == len(expected)
  for i, (name, pattern) in enumerate(expected):
    assert folder[i].dtype == np.float32 and folder[i].shape == (_SIZE, _SIZE), name
    np.testing.assert_array_equal(folder[i], pattern.astype(np.float32), err_msg=name)


def test_mask_folder_resizes_non_square_and_non_multiple_sizes(tmp_path):
  # 60 -> 32 columns with NEAREST: source column floor((i + 0.5) * 60 / 32) < 30 iff i <= 15.
  holes = np.zeros((100, 60), bool)
  holes[:, :30] = True
  Image.fromarray(np.where(holes, 255, 0).astype(np.uint8)).save(tmp_path / "half.png")
  mask = masks.MaskFolder(tmp_path, 32)[0]
  assert mask.shape == (32, 32)
  assert mask[:, :16].all() and not mask[:, 16:].any()


def test_mask_folder_invert_reads_black_as_hole(tmp_path):
  pattern = _pattern(0, 0.3)
  _save(tmp_path, "black_holes.png", pattern, "L", 2, hole_is_white=False)
  np.testing.assert_array_equal(masks.MaskFolder(tmp_path, _SIZE, invert=True)[0], pattern)
  np.testing.assert_array_equal(masks.MaskFolder(tmp_path, _SIZE)[0], ~pattern)


def test_mask_folder_bins_and_pairs_masks_deterministically(mask_folder):
  folder = masks.MaskFolder(mask_folder, _SIZE)
  names = [file.name for file in folder.files]
  in_bin = lambda bin_name: [names[i] for i in folder.indices_in_bin(bin_name)]
  assert in_bin("0-20") == ["a_gray.png", "f_rgb.png"]
  assert in_bin("20-30") == ["e_rgba.png"]
  assert in_bin("20-40") == ["b_bits.bmp", "e_rgba.png"]
  assert in_bin("40-50") == ["d_jpeg.jpg"]
  assert in_bin("50-60") == ["c_sixteen.png"]
  assert folder.bin_counts()["40-60"] == 2
  indices = folder.indices_in_bin("20-40")
  for image_index in range(5):
    expected = folder[indices[image_index % 2]]
    np.testing.assert_array_equal(folder.mask_for(image_index, "20-40"), expected)
  assert not np.array_equal(folder.mask_for(0, "20-40"), folder.mask_for(1, "20-40"))
  with pytest.raises(KeyError, match="known bins"):
    folder.indices_in_bin("60-70")


def test_mask_folder_empty_bin_is_an_error_naming_the_folder(tmp_path):
  _save(tmp_path, "small.png", _pattern(0, 0.1), "L", 1)
  folder = masks.MaskFolder(tmp_path, _SIZE)
  with pytest.raises(ValueError, match=str(tmp_path)):
    folder.mask_for(0, "50-60")


def test_mask_folder_missing_or_empty_or_corrupt_is_an_error_naming_the_path(tmp_path):
  missing = tmp_path / "no_such_folder"
  with pytest.raises(FileNotFoundError, match=str(missing)):
    masks.MaskFolder(missing, _SIZE)
  (tmp_path / "notes.txt").write_text("no masks here")
  with pytest.raises(FileNotFoundError, match=str(tmp_path)):
    masks.MaskFolder(tmp_path, _SIZE)
  (tmp_path / "broken.png").write_bytes(b"definitely not a png")
  with pytest.raises(ValueError, match="broken.png"):
    masks.MaskFolder(tmp_path, _SIZE)


# --- Benchmark script -------------------------------------------------------------------------


def test_benchmark_script_runs_and_reports_every_generator():
  bench = _load_module(REPO / "benchmarks" / "bench_masks.py", "bench_masks")
  timings = bench.benchmark(sizes=(32,), iterations=3)
  assert set(timings) == {(kind, 32) for kind in bench.KINDS}
  assert all(ms > 0 for ms in timings.values())
