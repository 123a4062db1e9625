"""Inpaint your own images: one call from Python, a pure function, and a command.

  python -m gmsrm_jax.inpaint --model=RUN_OR_EXPORT --image=photo.jpg --mask=mask.png \\
      --output=filled.png
  python -m gmsrm_jax.inpaint --model=RUN_OR_EXPORT --image=DIR --mask=DIR --output=DIR

  from gmsrm_jax import inpaint
  model = inpaint.load("runs/demo")   # a training run (its newest checkpoint) or an export
  filled = model(image, mask)         # any size; uint8 in -> uint8 out, known pixels unchanged

`inpaint_function(config)` is the pure, jittable function underneath:
`inpaint(variables, image, mask, key)` on float [-1, 1] NHWC images of any size (1 = hole),
for every model family of the registry (`models.input_geometry` says what sizes a network
takes; this module pads, or for fixed-size networks pads to a square and resizes, and crops
back). `Inpainter` adds what a photo needs around it. Its rules for inputs (docs/DESIGN.md,
I-entries):

  image  [H, W], [H, W, C] or a batch [N, H, W, C]; C = 1 (grey), 2 (grey + alpha), 3 (RGB)
         or 4 (RGBA). uint8 and uint16 by their full range, floats in [0, 1]; other dtypes
         and floats outside [0, 1] are errors. Grey is completed as RGB and returned as grey
         (ITU-R 601 luma); alpha is returned unchanged (it is never read as the mask).
  mask   [H, W] or [H, W, 1] (for a batch also [N, H, W] or [N, H, W, 1]; one 2-D mask serves
         the whole batch), the image's size or an error. 1 = hole. bool as is; integer masks
         holding only 0 and 1 are label masks; other uint8/uint16 masks and float masks in
         [0, 1] are holes where the value is at least half the full scale (0.5).
         `invert_mask` swaps the polarity (for masks that mark holes black).
  result the input's shape and dtype; every known pixel is the input's, bit for bit. An empty
         mask returns the input unchanged without running the network; a full mask is
         completed from nothing (logged as a warning). Images above `max_pixels` are an error
         (the network sees the whole image at once: instance normalisation takes whole-image
         statistics, so tiles would not give the same result).

Mask files (the command) are read by docs/MASKS.md's rules: the brightest channel or an
alpha-only mask, holes above the midpoint of the file's darkest and brightest values.
"""

import dataclasses
import math
import os
import sys
import time
from typing import Any, Callable, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gmsrm_jax import models

# ~4.2 megapixels: the paper-size base network needs ~20 GB of activations on CPU there.
DEFAULT_MAX_PIXELS = 2048 * 2048
# Sizes are padded up to multiples of this (and of the stride), so that nearby sizes share one
# compiled function instead of compiling one each.
DEFAULT_BUCKET = 64
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, as PIL's "L" conversion.
_IMAGE_SCALES = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def _reflect_pad(x, pads: Sequence[tuple[int, int]], xp=jnp):
  return xp.pad(x, ((0, 0), *pads, (0, 0)), mode="reflect")


def _split(total: int) -> tuple[int, int]:
  return total // 2, total - total // 2


def inpaint_function(config: ml_collections.ConfigDict
                     ) -> Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array]:
  """`inpaint(variables, image, mask, key)` for the model of `config` (pure, jittable).

  image: float [N, H, W, 3] in [-1, 1], any H and W; mask: float [N, H, W, 1], 1 = hole;
  variables: `step.inference_variables` (or an export's); key: GM-SRM's stochastic
  variation. Returns the completed image, the known pixels taken from `image`.
  """
  from gmsrm_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  from gmsrm_jax.train import step as step_lib  # pylint: disable=g-import-not-at-top
  components = state_lib.create_components(config)
  geometry = models.input_geometry(config.model, config.data.crop_size)

  def inpaint(variables, image, mask, key):
    _, height, width, _ = image.shape
    if geometry.fixed_size is None:
      # Reflected borders (image and mask alike) continue the picture instead of adding edges.
      pads = [_split(-size % geometry.stride) for size in (height, width)]
      completed = step_lib.predict(components, variables, _reflect_pad(image, pads),
                                   _reflect_pad(mask, pads), key)
      completed = completed[:, pads[0][0]:pads[0][0] + height, pads[1][0]:pads[1][0] + width]
    else:
      side, size = max(height, width), geometry.fixed_size
      pads = [_split(side - height), _split(side - width)]
      square = lambda x: jax.image.resize(_reflect_pad(x, pads), (x.shape[0], size, size,
                                                                  x.shape[-1]), "linear")
      # Any hole pixel makes its low-resolution pixel a hole: the network never sees a
      # shrunken hole's content as known.
      small_mask = (square(mask) > 0).astype(image.dtype)
      small = step_lib.predict(components, variables, square(image), small_mask, key)
      completed = jax.image.resize(small, (image.shape[0], side, side, 3), "cubic")
      completed = completed[:, pads[0][0]:pads[0][0] + height, pads[1][0]:pads[1][0] + width]
    return models.composite(jnp.clip(completed, -1.0, 1.0), image, mask)

  return inpaint


@dataclasses.dataclass(frozen=True)
class Loaded:
  """A model ready for inference: its config, `inference_variables` and checkpoint step."""
  config: ml_collections.ConfigDict
  variables: Any
  step: int
  source: str  # "run <workdir>" or "export <dir>".


def load_variables(path: str, *, step: int | None = None,
                   allow_config_change: Sequence[str] = ()) -> Loaded:
  """The inference variables of a training run (a checkpoint: `step` or the newest) or an
  export (`export.py`), with the config saved alongside them."""
  from gmsrm_jax import export as export_lib  # pylint: disable=g-import-not-at-top
  path = os.path.abspath(path)
  if os.path.isfile(os.path.join(path, export_lib.MANIFEST)):
    if step is not None:
      raise ValueError(f"{path} is an export (of one step); --step applies to training runs.")
    exported = export_lib.load(path)
    return Loaded(exported.config, exported.variables, exported.step, f"export {path}")
  from gmsrm_jax.train import checkpoint  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(checkpoint.checkpoint_dir(path)):
    raise FileNotFoundError(
        f"{path} is neither a model export (no {export_lib.MANIFEST}) nor a training run (no "
        "checkpoints/). Pass --model=<the --workdir of a run> or an export directory.")
  from gmsrm_jax.train import loop  # pylint: disable=g-import-not-at-top
  from gmsrm_jax.train import parallel  # pylint: disable=g-import-not-at-top
  from gmsrm_jax.train import step as step_lib  # pylint: disable=g-import-not-at-top
  stored, step = checkpoint.read_config(path, step)
  config = ml_collections.ConfigDict(stored)
  _, state, step = loop.restore_run(config, path, parallel.make_mesh(), step=step,
                                    allow_config_change=allow_config_change)
  variables = jax.device_get(step_lib.inference_variables(config, state))
  return Loaded(config, variables, step, f"run {path}")


def _image_scale(image: np.ndarray) -> float | None:
  """255 / 65535 for uint8 / uint16, None for floats in [0, 1]; raises for anything else."""
  if image.dtype in _IMAGE_SCALES:
    return _IMAGE_SCALES[image.dtype]
  if np.issubdtype(image.dtype, np.floating):
    if not np.isfinite(image).all():
      raise ValueError("The image holds NaN or infinite values.")
    low, high = float(image.min()), float(image.max())
    if low < 0.0 or high > 1.0:
      hint = (" It looks like [-1, 1]: pass (image + 1) / 2." if low >= -1.0 and high <= 1.0
              else " It looks like 0-255: pass image.astype(np.uint8), or image / 255."
              if high <= 255.0 and low >= 0.0 else "")
      raise ValueError(f"A float image must be in [0, 1]; this one spans [{low:g}, {high:g}]."
                       + hint)
    return None
  raise ValueError(f"Image dtype {image.dtype} is not supported: pass uint8, uint16, or "
                   "floats in [0, 1].")


def _holes(mask: np.ndarray, invert: bool) -> np.ndarray:
  """bool holes of a mask array by the module docstring's rules."""
  if mask.dtype == np.bool_:
    holes = mask
  elif np.issubdtype(mask.dtype, np.integer):
    high = int(mask.max(initial=0))
    if int(mask.min(initial=0)) < 0:
      raise ValueError("A mask cannot hold negative values.")
    if high <= 1:
      holes = mask == 1
    elif mask.dtype in _IMAGE_SCALES:
      holes = mask >= (_IMAGE_SCALES[mask.dtype] + 1) / 2
    else:
      raise ValueError(f"An {mask.dtype} mask must hold only 0 and 1 (it holds up to {high}); "
                       "pass bool, 0/1, uint8 0/255 or floats in [0, 1].")
  elif np.issubdtype(mask.dtype, np.floating):
    if not np.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
      raise ValueError(f"A float mask must be in [0, 1]; this one spans [{mask.min():g}, "
                       f"{mask.max():g}]. For 0-255 masks pass uint8.")
    holes = mask >= 0.5
  else:
    raise ValueError(f"Mask dtype {mask.dtype} is not supported: pass bool, integers or floats.")
  return ~holes if invert else holes


def _from_unit(values: np.ndarray, dtype: np.dtype, scale: float | None) -> np.ndarray:
  """[0, 1] floats -> the input's dtype (rounded for integers)."""
  if scale is None:
    return values.astype(dtype)
  return np.rint(np.clip(values, 0.0, 1.0) * scale).astype(dtype)


class Inpainter:
  """`inpainter(image, mask)` -> the completed image; see the module docstring for the rules.

  Compiles once per (batch, padded height, padded width): sizes are padded to multiples of
  `bucket` (and of the network's stride) by reflection, then cropped back.
  """

  def __init__(self, loaded: Loaded, *, invert_mask: bool = False,
               max_pixels: int | None = DEFAULT_MAX_PIXELS, bucket: int | None = DEFAULT_BUCKET):
    self.config, self.variables, self.step = loaded.config, loaded.variables, loaded.step
    self.source = loaded.source
    self.geometry = models.input_geometry(self.config.model, self.config.data.crop_size)
    self.invert_mask, self.max_pixels = invert_mask, max_pixels
    self.multiple = math.lcm(self.geometry.stride, bucket or 1)
    self.function = jax.jit(inpaint_function(self.config))

  def __call__(self, image, mask, *, key: jax.Array | None = None) -> np.ndarray:
    image, mask = np.asarray(image), np.asarray(mask)
    shape, mask_shape = image.shape, mask.shape
    if image.ndim == 2:
      image = image[..., None]
    if image.ndim == 3:
      image = image[None]
    if image.ndim != 4:
      raise ValueError(f"Image shape {shape}: expected [H, W], [H, W, C] or [N, H, W, C].")
    batch, height, width, channels = image.shape
    if channels not in (1, 2, 3, 4):
      raise ValueError(f"Image shape {shape}: {channels} channels; expected 1 (grey), 2 (grey "
                       "+ alpha), 3 (RGB) or 4 (RGBA).")
    if self.max_pixels is not None and height * width > self.max_pixels:
      raise ValueError(
          f"The image is {width}x{height} ({height * width / 1e6:.1f} MP), above the limit of "
          f"{self.max_pixels / 1e6:.1f} MP (max_pixels, --max_pixels). The network takes the "
          "whole image at once (whole-image normalisation: tiles would differ); downscale it, "
          "or raise the limit if the device has the memory.")
    scale = _image_scale(image)
    if mask.ndim == 4 or (mask.ndim == 3 and mask.shape[:2] == (height, width)):
      if mask.shape[-1] != 1:
        raise ValueError(f"Mask shape {mask.shape}: a mask has one channel (1 = hole); for "
                         "colour mask files use the command, which reads docs/MASKS.md's rules.")
      mask = mask[..., 0]
    if mask.ndim == 2:
      mask = np.broadcast_to(mask, (batch, *mask.shape))
    if mask.shape != (batch, height, width):
      raise ValueError(f"Mask shape {mask_shape} does not fit image shape {shape}: the mask "
                       f"must be [{height}, {width}] (or [{height}, {width}, 1]"
                       + (f", [{batch}, {height}, {width}]" if len(shape) == 4 else "")
                       + "), one value per pixel. Resize or crop one of them to match.")
    holes = _holes(mask, self.invert_mask)
    if not holes.any():
      return np.array(image.reshape(shape))
    if holes.all(axis=(1, 2)).any():
      logging.warning("A mask covers the whole image: nothing is known, the output is the "
                      "model's guess from nothing.")
    colour = image[..., :3] if channels >= 3 else np.repeat(image[..., :1], 3, axis=-1)
    unit = colour.astype(np.float32) / np.float32(scale or 1.0)
    pads = [_split(-size % self.multiple) for size in (height, width)]
    signed = _reflect_pad(unit * 2.0 - 1.0, pads, np)
    padded_mask = _reflect_pad(holes[..., None].astype(np.float32), pads, np)
    completed = self.function(self.variables, signed, padded_mask,
                              jax.random.key(0) if key is None else key)
    completed = np.asarray(completed)[:, pads[0][0]:pads[0][0] + height,
                                      pads[1][0]:pads[1][0] + width]
    completed = (completed + 1.0) / 2.0
    if channels < 3:
      completed = (completed @ _LUMA)[..., None]
    filled = image.copy()
    colour_channels = 3 if channels >= 3 else 1
    filled[..., :colour_channels] = np.where(
        holes[..., None], _from_unit(completed, image.dtype, scale), image[..., :colour_channels])
    return filled.reshape(shape)


def load(path: str, *, step: int | None = None, allow_config_change: Sequence[str] = (),
         **options) -> Inpainter:
  """`Inpainter` for a training run's checkpoint or an export; `options` as Inpainter's."""
  return Inpainter(load_variables(path, step=step, allow_config_change=allow_config_change),
                   **options)


# ------------------------------------------------------------------------------------------
# The command.

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_LOSSY = (".jpg", ".jpeg", ".webp")


def read_image(path: str) -> np.ndarray:
  """An image file as the array `Inpainter` takes: uint8 (or uint16 for 16-bit grey files),
  [H, W] grey, [H, W, 2] grey + alpha, [H, W, 3] RGB or [H, W, 4] RGBA; EXIF rotation applied
  (as viewers show the photo, and so as a mask drawn over it lines up)."""
  from PIL import Image, ImageOps  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as opened:
      image = ImageOps.exif_transpose(opened)
      mode = image.mode
      if mode.startswith("I;16"):
        return np.asarray(image).astype(np.uint16)
      if mode == "I":
        values = np.asarray(image)
        if values.min() < 0 or values.max() > 65535:
          raise ValueError(f"32-bit integer pixels spanning [{values.min()}, {values.max()}]; "
                           "save it as 8- or 16-bit")
        return values.astype(np.uint16)
      if mode == "F":
        raise ValueError("32-bit float pixels; save it as 8- or 16-bit")
      if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
      elif mode == "1":
        image = image.convert("L")
      elif mode not in ("L", "LA", "RGB", "RGBA"):
        image = image.convert("RGB")  # CMYK, YCbCr, ...: what viewers show.
      return np.asarray(image)
  except (OSError, SyntaxError, ValueError) as error:  # What Pillow raises for bad files.
    raise ValueError(f"Cannot read image {path}: {error}") from error


def write_image(path: str, image: np.ndarray) -> None:
  """PNG (lossless: known pixels stay exact), JPEG/WebP (lossy) or any format PIL writes, by
  the file's suffix."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  suffix = os.path.splitext(path)[1].lower()
  if image.dtype == np.uint16:
    if image.ndim != 2 or suffix not in (".png", ".tif", ".tiff"):
      raise ValueError(f"{path}: 16-bit output is written as grey PNG or TIFF only.")
    picture = Image.fromarray(image)
  else:
    picture = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1
                              else image)
  if suffix in (".jpg", ".jpeg") and picture.mode in ("LA", "RGBA"):
    raise ValueError(f"{path}: JPEG has no alpha channel; write a .png instead.")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  picture.save(path, quality=95) if suffix in _LOSSY else picture.save(path)


def _is_image(path: str) -> bool:
  return os.path.isfile(path) and os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES


def pair_folder(image_dir: str, mask_dir: str) -> list[tuple[str, str]]:
  """(image, mask) paths: for image NAME.ext the mask is NAME.* in `mask_dir`, or NAME_mask*.*
  (LaMa's layout, which also allows masks beside the images). Every image needs exactly one
  mask; all problems are reported together, before any work."""
  names = sorted(n for n in os.listdir(image_dir) if _is_image(os.path.join(image_dir, n)))
  masks = sorted(n for n in os.listdir(mask_dir) if _is_image(os.path.join(mask_dir, n)))
  same_dir = os.path.samefile(image_dir, mask_dir)
  if same_dir:
    names = [n for n in names if "_mask" not in os.path.splitext(n)[0]]
  pairs, problems = [], []
  for name in names:
    stem = os.path.splitext(name)[0]
    found = [m for m in masks if os.path.splitext(m)[0].startswith(stem + "_mask")
             or (not same_dir and os.path.splitext(m)[0] == stem)]
    if len(found) == 1:
      pairs.append((os.path.join(image_dir, name), os.path.join(mask_dir, found[0])))
    else:
      problems.append(f"{name}: {len(found)} masks ({', '.join(found) or 'none'}); expected "
                      f"one named {stem}.<ext> or {stem}_mask*.<ext> in {mask_dir}")
  if not names:
    problems.append(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {image_dir}")
  if problems:
    raise ValueError("Cannot pair images with masks:\n  " + "\n  ".join(problems))
  return pairs


def _progress(done: int, total: int, name: str, seconds: float) -> None:
  width = 30
  filled = width * done // total
  line = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {name} ({seconds:.2f} s)"
  if sys.stderr.isatty():
    sys.stderr.write("\r" + line.ljust(100) + ("\n" if done == total else ""))
  else:
    sys.stderr.write(line + "\n")
  sys.stderr.flush()


def run_command(model: str, image: str, mask: str, output: str, *, step: int | None = None,
                invert_mask: bool = False, seed: int = 0, output_format: str = "png",
                max_pixels: int | None = DEFAULT_MAX_PIXELS,
                bucket: int | None = DEFAULT_BUCKET) -> list[str]:
  """The command's work: one image, or every image of a folder; returns the written paths."""
  from gmsrm_jax.masks import folder as mask_folder  # pylint: disable=g-import-not-at-top
  if os.path.isdir(image):
    if not os.path.isdir(mask):
      raise ValueError(f"--image={image} is a folder, so --mask must be one too ({mask} is not).")
    pairs = pair_folder(image, mask)
    outputs = [os.path.join(output, os.path.splitext(os.path.basename(i))[0] + "."
                            + output_format.lstrip(".")) for i, _ in pairs]
  else:
    for path, flag in ((image, "--image"), (mask, "--mask")):
      if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag}={path}: no such file.")
    pairs, outputs = [(image, mask)], [output]
  inpainter = load(model, step=step, invert_mask=invert_mask, max_pixels=max_pixels,
                   bucket=bucket)
  logging.info("Inpainting %d image(s) with the %s (step %d, model %s).", len(pairs),
               inpainter.source, inpainter.step, inpainter.config.model.name)
  key = jax.random.key(seed)
  for index, ((image_path, mask_path), out_path) in enumerate(zip(pairs, outputs)):
    start = time.perf_counter()
    try:
      filled = inpainter(read_image(image_path), mask_folder.read_holes(mask_path), key=key)
    except ValueError as error:
      raise ValueError(f"{image_path} with mask {mask_path}: {error}") from None
    write_image(out_path, filled)
    if len(pairs) > 1:
      _progress(index + 1, len(pairs), os.path.basename(image_path),
                time.perf_counter() - start)
  return outputs


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("model", None, "A training run's --workdir (its newest checkpoint, or "
                      "--step) or an export directory (export.py).", required=True)
  flags.DEFINE_string("image", None, "An image file, or a folder of images.", required=True)
  flags.DEFINE_string("mask", None, "Its mask file (white = hole, docs/MASKS.md), or a folder "
                      "with NAME.<ext> or NAME_mask*.<ext> for each image NAME.", required=True)
  flags.DEFINE_string("output", None, "Output file (.png keeps known pixels exact; .jpg is "
                      "lossy), or a folder in folder mode.", required=True)
  flags.DEFINE_integer("step", None, "Checkpoint step of a training run (default: newest).")
  flags.DEFINE_bool("invert_mask", False, "Masks mark holes black (0) instead of white.")
  flags.DEFINE_integer("seed", 0, "Seed of GM-SRM's stochastic variation (other models ignore "
                       "it).")
  flags.DEFINE_string("output_format", "png", "Folder mode: the outputs' format (png, jpg).")
  flags.DEFINE_integer("max_pixels", DEFAULT_MAX_PIXELS, "Largest image (height x width) "
                       "accepted; larger ones are an error (0: no limit).")
  flags.DEFINE_integer("bucket", DEFAULT_BUCKET, "Pad sizes to multiples of this, so nearby "
                       "sizes share one compilation (0: pad only to the network's stride).")
  return flags.FLAGS


def main(argv: Sequence[str] | None = None) -> None:
  """Entry point of `python -m gmsrm_jax.inpaint` and the `gmsrm-inpaint` script."""
  from absl import app  # pylint: disable=g-import-not-at-top
  flag_values = _define_flags()

  def run(argv):
    if len(argv) > 1:
      raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    try:
      written = run_command(
          flag_values.model, flag_values.image, flag_values.mask, flag_values.output,
          step=flag_values.step, invert_mask=flag_values.invert_mask, seed=flag_values.seed,
          output_format=flag_values.output_format, max_pixels=flag_values.max_pixels or None,
          bucket=flag_values.bucket or None)
    except (ValueError, FileNotFoundError) as error:
      sys.stderr.write(f"ERROR: {error}\n")
      sys.exit(1)
    print("\n".join(written) if len(written) < 10 else f"{len(written)} images written to "
          f"{flag_values.output}")

  app.run(run, argv=list(argv) if argv is not None else None)


if __name__ == "__main__":
  main()
