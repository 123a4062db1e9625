"""External test masks from a folder of images, e.g. the PConv / NVIDIA irregular mask set.

Polarity: by default a bright pixel is a hole. That is how the NVIDIA irregular *testing* mask
set (the 12,000 masks GM-SRM and CICM evaluate on) is drawn, white strokes on black, and how
EdgeConnect and its successors read it. Pass `invert=True` for folders that mark holes black,
such as NVIDIA's separate *training* mask set.
"""

import os
import pathlib
from collections.abc import Mapping

import numpy as np
from PIL import Image

from gmsrm_jax.masks import bins as bins_lib
from gmsrm_jax.masks import generators

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")


def load_mask_file(path: str | os.PathLike, size: generators.Size, *,
                   invert: bool = False) -> np.ndarray:
  """One mask image -> float32 [H, W] (1 = hole), resized with NEAREST and binarised.

  A pixel is a hole when its value is at least half of its type's range: 128 for 8-bit
  images (colour images are reduced to luminance first and any alpha channel is ignored),
  32768 for 16-bit ones and 0.5 for float ones. `invert` swaps the polarity.
  Raises ValueError naming the file if it cannot be decoded.
  """
  height, width = generators.as_hw(size)
  try:
    with Image.open(path) as image:
      if image.mode in _SIXTEEN_BIT_MODES:
        image, threshold = image.convert("I"), 32768
      elif image.mode == "F":
        threshold = 0.5
      else:
        image, threshold = image.convert("L"), 128
      # NEAREST keeps the mask binary; thresholding commutes with it, so the order is free.
      values = np.asarray(image.resize((width, height), Image.Resampling.NEAREST))
  except (OSError, SyntaxError, ValueError) as error:  # What Pillow raises for bad files.
    raise ValueError(f"Cannot read mask image {path}: {error}") from error
  holes = values >= threshold
  if invert:
    holes = ~holes
  return holes.astype(np.float32)


class MaskFolder:
  """The masks of one folder, resized to `size`, each filed under the hole-ratio bins it is in.

  Files with the suffixes in IMAGE_SUFFIXES directly inside `path` are used (subfolders are
  not searched), in order of file name, so indices are the same on every filesystem. All masks
  are decoded once, at construction, and kept bit-packed (size**2 / 8 bytes each: ~100 MB for
  the 12,000 PConv masks at 256). A file that cannot be decoded is an error, not skipped: a
  silently smaller folder would change which mask each test image gets.

  Attributes:
    path: the folder.
    files: the mask files, in index order.
    hole_ratios: float64 [len(self)], the hole ratio of each mask after resizing.
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
    packed, ratios = [], []
    for file in self.files:
      mask = load_mask_file(file, (self._height, self._width), invert=invert)
      ratios.append(generators.hole_ratio(mask))
      packed.append(np.packbits(mask.astype(bool)))
    self._packed = packed
    self.hole_ratios = np.asarray(ratios, np.float64)
    self._indices_by_bin = {
        name: [i for i, ratio in enumerate(ratios) if bins_lib.in_interval(ratio, lo, hi)]
        for name, (lo, hi) in bins.items()}

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
