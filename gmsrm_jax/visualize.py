"""Sample grids: a label row, then one row per example, columns masked input / output(s) /
ground truth."""

import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from gmsrm_jax.data.preprocess import to_uint8


COLUMN_LABELS = ("input", "output", "truth")
_LABEL_HEIGHT = 14
_MIN_TILE = 64  # Narrower tiles are enlarged (nearest) so that the labels fit above them.


def inpainting_grid(image: np.ndarray, mask: np.ndarray, *outputs: np.ndarray,
                    output_labels: Sequence[str] = ("output",), max_rows: int = 8,
                    pad: int = 2) -> np.ndarray:
  """uint8 grid: a label row, then one row per example (at most `max_rows`; pass only real
  examples, never padding): masked input with holes white, each output (e.g. the model, then
  classical baselines, labelled by `output_labels`), ground truth. Tiles narrower than 64
  pixels are enlarged by an integer factor, pixels kept sharp."""
  if len(output_labels) != len(outputs):
    raise ValueError(f"{len(outputs)} outputs but {len(output_labels)} output_labels.")
  image, mask = (np.asarray(a)[:max_rows] for a in (image, mask))
  masked = image * (1.0 - mask) + mask
  scale = -(-_MIN_TILE // image.shape[2])
  columns = [np.repeat(np.repeat(to_uint8(tiles), scale, axis=1), scale, axis=2)
             for tiles in (masked, *(np.asarray(o)[:max_rows] for o in outputs), image)]
  labels = (COLUMN_LABELS[0], *output_labels, COLUMN_LABELS[-1])
  n, h, w, _ = columns[0].shape
  grid = np.full((_LABEL_HEIGHT + n * (h + pad), len(columns) * (w + pad), 3), 255, np.uint8)
  for row in range(n):
    for col, tiles in enumerate(columns):
      y, x = _LABEL_HEIGHT + row * (h + pad), col * (w + pad)
      grid[y:y + h, x:x + w] = tiles[row]
  picture = Image.fromarray(grid)
  draw = ImageDraw.Draw(picture)
  for col, label in enumerate(labels):
    draw.text((col * (w + pad) + 2, 1), label, fill=(0, 0, 0))
  return np.asarray(picture)


def grid_tile(grid: np.ndarray, row: int, column: int, size: int, pad: int = 2) -> np.ndarray:
  """The size x size tile of example `row`, column `column` of an `inpainting_grid` of
  size x size images, at its original resolution."""
  scale = -(-_MIN_TILE // size)
  step = size * scale + pad
  y, x = _LABEL_HEIGHT + row * step, column * step
  return grid[y:y + size * scale:scale, x:x + size * scale:scale]


def matrix_image(matrix: np.ndarray, *, limit: float = 1.0, cell: int = 12) -> np.ndarray:
  """uint8 [rows*cell, cols*cell, 3] heatmap of a matrix in [-limit, limit] (e.g. cosine
  similarities): blue for -limit, white for 0, red for +limit."""
  t = np.clip(np.asarray(matrix, np.float32) / limit, -1.0, 1.0)[..., None]
  white, red, blue = (np.array(c, np.float32) for c in ((1, 1, 1), (0.8, 0.1, 0.1),
                                                         (0.1, 0.2, 0.8)))
  rgb = np.where(t >= 0, white + t * (red - white), white - t * (blue - white))
  rgb = np.repeat(np.repeat(rgb, cell, axis=0), cell, axis=1)
  return np.round(rgb * 255).astype(np.uint8)


def save_png(grid: np.ndarray, path: str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(grid).save(path)
