"""Charts as PNG images drawn with PIL alone (no plotting dependency): metrics per setting
and loss curves from a run's TensorBoard events, for people who would rather look than read.
"""

import glob
import math
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

_PANEL = (320, 200)  # width, height of one chart
_MARGIN = (48, 24, 12, 36)  # left, top, right, bottom: room for the labels
_INK, _GRID, _BAR = (30, 30, 30), (220, 220, 220), (70, 110, 180)
_COLOURS = ((70, 110, 180), (200, 90, 60), (80, 160, 90), (150, 90, 170), (200, 160, 40),
            (60, 160, 170), (120, 120, 120))


def _format(value: float) -> str:
  return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.2e}"


def _canvas(count: int, title: str) -> tuple[Image.Image, list[tuple[int, int]]]:
  columns = min(count, 3)
  rows = math.ceil(count / columns)
  image = Image.new("RGB", (columns * _PANEL[0], 20 + rows * _PANEL[1]), "white")
  ImageDraw.Draw(image).text((6, 4), title, fill=_INK)
  origins = [((i % columns) * _PANEL[0], 20 + (i // columns) * _PANEL[1]) for i in range(count)]
  return image, origins


def _frame(draw: ImageDraw.ImageDraw, origin: tuple[int, int], title: str, low: float,
           high: float) -> tuple[int, int, int, int]:
  """Draws the panel's title, box and y labels; returns the plot box (x0, y0, x1, y1)."""
  x0, y0 = origin[0] + _MARGIN[0], origin[1] + _MARGIN[1]
  x1, y1 = origin[0] + _PANEL[0] - _MARGIN[2], origin[1] + _PANEL[1] - _MARGIN[3]
  draw.text((origin[0] + 6, origin[1] + 4), title, fill=_INK)
  for fraction in (0.0, 0.5, 1.0):
    y = y1 - fraction * (y1 - y0)
    draw.line([(x0, y), (x1, y)], fill=_GRID)
    draw.text((origin[0] + 2, y - 5), _format(low + fraction * (high - low)), fill=_INK)
  draw.rectangle([x0, y0, x1, y1], outline=_INK)
  return x0, y0, x1, y1


def _range(values: Sequence[float], from_zero: bool) -> tuple[float, float]:
  low, high = min(values), max(values)
  if from_zero:
    low = min(low, 0.0)
  if high == low:
    high = low + (abs(low) or 1.0)
  return low, high


def bar_panels(panels: dict[str, dict[str, float | None]], title: str) -> np.ndarray:
  """uint8 image: one bar chart per panel ({title: {label: value}}); None shows as 'n/a'."""
  image, origins = _canvas(len(panels), title)
  draw = ImageDraw.Draw(image)
  for origin, (name, bars) in zip(origins, panels.items()):
    known = [v for v in bars.values() if v is not None and math.isfinite(v)]
    low, high = _range(known or [0.0], from_zero=True)
    high += 0.15 * (high - low)  # Room for the value above the tallest bar.
    x0, y0, x1, y1 = _frame(draw, origin, name, low, high)
    width = (x1 - x0) / max(len(bars), 1)
    for i, (label, value) in enumerate(bars.items()):
      left = x0 + i * width + width * 0.15
      right = x0 + (i + 1) * width - width * 0.15
      if value is None or not math.isfinite(value):
        draw.text((left, y1 - 14), "n/a", fill=_INK)
      else:
        top = y1 - (value - low) / (high - low) * (y1 - y0)
        draw.rectangle([left, min(top, y1 - 1), right, y1], fill=_BAR)
        draw.text((left, max(top - 11, y0 + 1)), _format(value), fill=_INK)
      draw.text((left, y1 + 4), label, fill=_INK)
  return np.asarray(image)


def line_panels(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str) -> np.ndarray:
  """uint8 image: one line chart per curve ({name: (steps, values)}), steps on x."""
  image, origins = _canvas(len(curves), title)
  draw = ImageDraw.Draw(image)
  for index, (origin, (name, (steps, values))) in enumerate(zip(origins, curves.items())):
    finite = np.isfinite(values)
    steps, values = np.asarray(steps)[finite], np.asarray(values)[finite]
    low, high = _range(values.tolist() or [0.0], from_zero=False)
    x0, y0, x1, y1 = _frame(draw, origin, name, low, high)
    first, last = (int(steps[0]), int(steps[-1])) if len(steps) else (0, 1)
    span = max(last - first, 1)
    points = [(x0 + (s - first) / span * (x1 - x0), y1 - (v - low) / (high - low) * (y1 - y0))
              for s, v in zip(steps, values)]
    if len(points) > 1:
      draw.line(points, fill=_COLOURS[index % len(_COLOURS)], width=2)
    elif points:
      draw.ellipse([points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2],
                   fill=_COLOURS[index % len(_COLOURS)])
    draw.text((x0, y1 + 4), f"step {first}", fill=_INK)
    draw.text((x1 - 60, y1 + 4), f"step {last}", fill=_INK)
  return np.asarray(image)


def read_scalars(workdir: str, prefix: str = "") -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{tag: (steps, values)} of the scalars whose tag starts with `prefix` in the TensorBoard
  event files directly in `workdir` (clu writes them as tensors); later files win a step."""
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top
  series: dict[str, dict[int, float]] = {}
  for path in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))):
    events = event_accumulator.EventAccumulator(
        path, size_guidance={event_accumulator.TENSORS: 0, event_accumulator.SCALARS: 0})
    events.Reload()
    tags = events.Tags()
    for tag in tags.get("tensors", []):
      if tag.startswith(prefix):
        for event in events.Tensors(tag):
          value = tensor_util.make_ndarray(event.tensor_proto)
          if value.size == 1:
            series.setdefault(tag, {})[event.step] = float(value.reshape(()))
    for tag in tags.get("scalars", []):
      if tag.startswith(prefix):
        for event in events.Scalars(tag):
          series.setdefault(tag, {})[event.step] = float(event.value)
  return {tag: (np.array(sorted(points)), np.array([points[s] for s in sorted(points)]))
          for tag, points in sorted(series.items())}
