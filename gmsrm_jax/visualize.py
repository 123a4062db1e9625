"""Sample grids: one row per example, columns masked input / output(s) / ground truth."""

import os

import numpy as np
from PIL import Image

from gmsrm_jax.data.preprocess import to_uint8


def inpainting_grid(image: np.ndarray, mask: np.ndarray, *outputs: np.ndarray,
                    max_rows: int = 8, pad: int = 2) -> np.ndarray:
  """uint8 [rows*(H+pad), (2 + len(outputs))*(W+pad), 3]: masked input, each output (e.g. the
  model, then classical baselines), ground truth. Holes in the input are shown white."""
  image, mask = (np.asarray(a)[:max_rows] for a in (image, mask))
  masked = image * (1.0 - mask) + mask
  columns = [to_uint8(masked), *(to_uint8(np.asarray(o)[:max_rows]) for o in outputs),
             to_uint8(image)]
  n, h, w, _ = image.shape
  grid = np.full((n * (h + pad), len(columns) * (w + pad), 3), 255, np.uint8)
  for row in range(n):
    for col, tiles in enumerate(columns):
      y, x = row * (h + pad), col * (w + pad)
      grid[y:y + h, x:x + w] = tiles[row]
  return grid


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
