"""External test masks from a folder of images, e.g. the PConv / NVIDIA irregular mask set.

Polarity: by default a bright pixel is a hole. That is how the NVIDIA irregular *testing* mask
set (the 12,000 masks GM-SRM and CICM evaluate on) is drawn, white strokes on black, and how
EdgeConnect and its successors read it. Pass `invert=True` for folders that mark holes black,
such as NVIDIA's separate *training* mask set.
"""

import collections
import os
import pathlib
from collections.abc import Mapping

from absl import logging
import numpy as np
from PIL import Image

from gmsrm_jax.masks import bins as bins_lib
from gmsrm_jax.masks import generators

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _mask_values(image: Image.Image) -> np.ndarray:
  """The 2-D values a mask file is read by (larger = hole before `invert`)."""
  if image.mode in _SIXTEEN_BIT_MODES:
    return np.asarray(image.convert("I"))
  if image.mode == "F":
    return np.asarray(image)
  if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
    rgba = np.asarray(image.convert("RGBA"))
    colour, alpha = rgba[..., :3], rgba[..., 3]
    # An alpha-only mask: one colour everywhere, the shape drawn in the alpha channel.
    if (colour == colour[:1, :1]).all() and alpha.min() != alpha.max():
      return alpha
    return colour.max(axis=-1)
  if image.mode in ("1", "L"):
    return np.asarray(image.convert("L"))
  return np.asarray(image.convert("RGB")).max(axis=-1)


def read_holes(path: str | os.PathLike, *, invert: bool = False) -> np.ndarray:
  """bool [H, W] holes of one mask file at its own size, by `load_mask_file`'s value and
  threshold rules (no resizing). Raises ValueError naming the file if it cannot be decoded."""
  try:
    with Image.open(path) as image:
      values = _mask_values(image)
  except (OSError, SyntaxError, ValueError) as error:  # What Pillow raises for bad files.
    raise ValueError(f"Cannot read mask image {path}: {error}") from error
  low, high = values.min(), values.max()
  holes = values > (float(low) + float(high)) / 2 if low != high else np.full(values.shape,
                                                                              high > 0)
  return ~holes if invert else holes


def _read_mask(path: str | os.PathLike, size: generators.Size, invert: bool
               ) -> tuple[np.ndarray, tuple[int, int]]:
  """(bool holes [H, W], the file's (height, width)); see load_mask_file."""
  height, width = generators.as_hw(size)
  holes = read_holes(path, invert=invert)
  # Cover the target (NEAREST keeps the mask binary), then crop the overhang at the centre.
  file_height, file_width = holes.shape
  scale = max(height / file_height, width / file_width)
  scaled_width = max(width, round(file_width * scale))
  scaled_height = max(height, round(file_height * scale))
  scaled = np.asarray(Image.fromarray(holes).resize((scaled_width, scaled_height),
                                                    Image.Resampling.NEAREST))
  top, left = (scaled_height - height) // 2, (scaled_width - width) // 2
  return scaled[top:top + height, left:left + width], (file_height, file_width)


def load_mask_file(path: str | os.PathLike, size: generators.Size, *,
                   invert: bool = False) -> np.ndarray:
  """One mask image -> float32 [H, W] (1 = hole). The rules (also in docs/MASKS.md):

  * Values: grey images as stored (8-bit, 16-bit or float); colour images by their brightest
    channel, so a red or blue stroke counts like a white one; an image with an alpha channel
    and one colour everywhere (an alpha-only mask) by its alpha.
  * Threshold: a pixel is a hole when its value is above the midpoint of the file's darkest
    and brightest values. 0/255 masks read as before (> 127.5), 0/1 label masks (8- or
    16-bit) read 1 as hole, and grey or coloured strokes on black count whatever their
    brightness. A file of one value everywhere is all hole if that value is nonzero, else
    hole-free. `invert` swaps the polarity.
  * Geometry: scaled with NEAREST so that it covers `size`, then centre-cropped: a mask of
    another aspect ratio is cropped (as the test images are), never stretched.

  Raises ValueError naming the file if it cannot be decoded.
  """
  return _read_mask(path, size, invert)[0].astype(np.float32)


class MaskFolder:
  """The masks of one folder, resized to `size`, each filed under the hole-ratio bins it is in.

  Files with the suffixes in IMAGE_SUFFIXES directly inside `path` are used (subfolders are
  not searched), in order of file name, so indices are the same on every filesystem. All masks
  are decoded once (`load_mask_file`'s rules), at construction, and kept bit-packed (size**2 /
  8 bytes each: ~100 MB for the 12,000 PConv masks at 256). A file that cannot be decoded is
  an error, not skipped: a silently smaller folder would change which mask each test image
  gets. Construction logs `summary()`: the files used per bin, those in no bin and why, and
  those centre-cropped to the target's aspect ratio (a warning when there are any).

  Attributes:
    path: the folder.
    files: the mask files, in index order.
    hole_ratios: float64 [len(self)], the hole ratio of each mask after resizing.
    out_of_bins: {reason: ["file (hole ratio)", ...]} for the masks in no bin.
    cropped: ["file (WxH)", ...] for the masks of another aspect ratio than `size`.
  """

  def __init__(self, path: str | os.PathLike, size: generators.Size, *, invert: bool = False,
               bins: Mapping[str, tuple[float, float]] = bins_lib.HOLE_RATIO_BINS):
    self.path = pathlib.Path(path)
    if not self.path.is_dir():
      raise FileNotFoundError(f"Mask folder {self.path} does not exist or is not a directory.")
    self.files = tuple(sorted(
        (entry for entry in self.path.iterdir()
         if entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda entry: entry.name))
    if not self.files:
      raise FileNotFoundError(
          f"Mask folder {self.path} holds no mask images ({', '.join(IMAGE_SUFFIXES)}); "
          "subfolders are not searched.")
    self._height, self._width = generators.as_hw(size)
    self.invert = invert
    self.bins = bins
    packed, ratios, self.cropped = [], [], []
    for file in self.files:
      mask, (file_height, file_width) = _read_mask(file, (self._height, self._width), invert)
      if file_height * self._width != file_width * self._height:
        self.cropped.append(f"{file.name} ({file_width}x{file_height})")
      ratios.append(generators.hole_ratio(mask))
      packed.append(np.packbits(mask))
    self._packed = packed
    self.hole_ratios = np.asarray(ratios, np.float64)
    self._indices_by_bin = {
        name: [i for i, ratio in enumerate(ratios) if bins_lib.in_interval(ratio, lo, hi)]
        for name, (lo, hi) in bins.items()}
    self.out_of_bins = self._out_of_bins()
    log = logging.warning if self.out_of_bins or self.cropped else logging.info
    log("%s", self.summary())

  def _out_of_bins(self) -> dict[str, list[str]]:
    """{reason: ["file (ratio)", ...]} for the masks in no bin."""
    used = {i for indices in self._indices_by_bin.values() for i in indices}
    top = max(hi for _, hi in self.bins.values())
    out = collections.defaultdict(list)
    for i, (file, ratio) in enumerate(zip(self.files, self.hole_ratios)):
      if i in used:
        continue
      if ratio == 0:
        reason = "no hole pixels"
      elif ratio == 1:
        reason = "every pixel a hole"
      elif ratio > top:
        reason = (f"hole ratio above every bin (> {top:.0%}; if this folder marks holes "
                  "black, read it with invert=True, config.eval.mask_invert)")
      else:
        reason = "hole ratio between the bins"
      out[reason].append(f"{file.name} ({ratio:.1%})")
    return dict(out)

  def summary(self) -> str:
    """How many files are used, per bin, and which are in no bin and why."""
    used = len(self) - sum(len(files) for files in self.out_of_bins.values())
    lines = [f"Mask folder {self.path} at {self._height}x{self._width}"
             f"{' (inverted)' if self.invert else ''}: {len(self)} files, {used} in at least "
             f"one bin; per bin: {self.bin_counts()}."]
    for reason, files in self.out_of_bins.items():
      shown = ", ".join(files[:5]) + (f", ... ({len(files) - 5} more)" if len(files) > 5 else "")
      lines.append(f"  {len(files)} in no bin, {reason}: {shown}")
    if self.cropped:
      lines.append(f"  {len(self.cropped)} of another aspect ratio, centre-cropped: "
                   + ", ".join(self.cropped[:5]) + (" ..." if len(self.cropped) > 5 else ""))
    return "\n".join(lines)

  def __len__(self) -> int:
    return len(self._packed)

  def __getitem__(self, index: int) -> np.ndarray:
    bits = np.unpackbits(self._packed[index], count=self._height * self._width)
    return bits.reshape(self._height, self._width).astype(np.float32)

  def indices_in_bin(self, bin_name: str) -> list[int]:
    """Indices of the masks whose hole ratio is in the bin, ascending."""
    bins_lib.bin_bounds(bin_name, self.bins)  # A clear KeyError for unknown names.
    return list(self._indices_by_bin[bin_name])

  def bin_counts(self) -> dict[str, int]:
    return {name: len(indices) for name, indices in self._indices_by_bin.items()}

  def mask_for(self, image_index: int, bin_name: str) -> np.ndarray:
    """The fixed mask paired with test image `image_index` in a bin.

    Test image i gets the bin's (i mod n)-th mask, so every method evaluated on the same
    folder sees the same mask on the same image ("the same mask for each test image",
    GM-SRM §IV-B).
    """
    indices = self.indices_in_bin(bin_name)
    if not indices:
      raise ValueError(
          f"No mask in {self.path} has a hole ratio in bin {bin_name!r} "
          f"{self.bins[bin_name]} at size {self._height}x{self._width}; "
          f"masks per bin: {self.bin_counts()}.")
    return self[indices[image_index % len(indices)]]

  def __repr__(self) -> str:
    return (f"MaskFolder({str(self.path)!r}, size=({self._height}, {self._width}), "
            f"invert={self.invert}, masks={len(self)}, per_bin={self.bin_counts()})")
