"""Inference export: a trained run as one directory that serving needs, and nothing more.

  python export.py --config=configs/unet_cicm.py:tiny --workdir=RUN [--output=DIR]

writes (default DIR = RUN/export):
  variables/     orbax arrays {"params": the generator weights evaluation uses (EMA or online,
                 `eval.use_ema`) with the frozen ones merged in (GM-SRM's generative memory),
                 plus every other generator collection, e.g. CICM's "memory"}
  inpaint.jax    the completion function `(variables, image, mask) -> completed image`,
                 serialized with `jax.export` (StableHLO) for any batch size, any height and
                 width that are multiples of the network's stride (GM-SRM: its trained size
                 only), and the platforms of `--platforms`; calling it needs jax alone
  config.json    the run's config
  MODEL_CARD.md, model_card.json  model family, step, training data, input format, the run's
                 evaluation table when it has one, limits
  manifest.json  step, image size, stride, format, platforms, and the sha256 of every other
                 file.

Images are float32 [B, H, W, 3] in [-1, 1]; masks [B, H, W, 1], 1 = hole.
The completion keeps the known pixels (`models.composite`), as evaluation does.

Loading: `load(DIR)` rebuilds the flax generator from config.json (for research use: the
variables are a plain tree); `load_serving(DIR)` runs the serialized function. Both first check
every file against the manifest's sha256, so a damaged or changed file is an error naming it
(rather than a struct/Unicode/JSON error from deep inside a reader).
"""

import dataclasses
import json
import os
from typing import Any, Callable, Sequence

from absl import logging
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from gmsrm_jax import weights
# Serving (`load_serving`) needs jax and orbax only: the model and training code (and through
# the data pipeline TensorFlow) are imported by the functions that use them.

FORMAT = "gmsrm_jax.export/2"  # /2 added the files' sha256.
_UNVERIFIED_FORMAT = "gmsrm_jax.export/1"
VARIABLES = "variables"
SERIALIZED = "inpaint.jax"
CONFIG = "config.json"
MANIFEST = "manifest.json"
DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")


MODEL_CARD = "MODEL_CARD.md"
MODEL_CARD_JSON = "model_card.json"


def _completion(components) -> Callable[..., jax.Array]:
  from gmsrm_jax.train import step as step_lib  # pylint: disable=g-import-not-at-top

  def inpaint(variables, image, mask):
    return step_lib.predict(components, variables, image, mask)
  return inpaint


def _image_shapes(geometry) -> tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
  """Image and mask shapes of the serialized function: any batch, and for networks that take
  any multiple of their stride, any such height and width (jax.export shape polymorphism)."""
  if geometry.fixed_size is None:
    batch, height, width = jax.export.symbolic_shape(
        f"batch, {geometry.stride}*h, {geometry.stride}*w")
  else:
    batch = jax.export.symbolic_shape("batch")[0]
    height = width = geometry.fixed_size
  return (jax.ShapeDtypeStruct((batch, height, width, 3), np.float32),
          jax.ShapeDtypeStruct((batch, height, width, 1), np.float32))


def export(config: ml_collections.ConfigDict, workdir: str, out_dir: str | None = None, *,
           step: int | None = None, platforms: Sequence[str] = DEFAULT_PLATFORMS,
           allow_config_change: Sequence[str] = ()) -> str:
  """Writes the export of the run's checkpoint (latest by default); returns its directory.

  One process only: the state is gathered to this host and written by it.
  """
  from gmsrm_jax import config_checks  # pylint: disable=g-import-not-at-top
  from gmsrm_jax import models  # pylint: disable=g-import-not-at-top
  from gmsrm_jax.train import loop  # pylint: disable=g-import-not-at-top
  from gmsrm_jax.train import parallel  # pylint: disable=g-import-not-at-top
  from gmsrm_jax.train import step as step_lib  # pylint: disable=g-import-not-at-top
  if jax.process_count() > 1:
    raise RuntimeError("Export runs in a single process (it writes the whole model from one "
                       "host); run it without --coordinator_address.")
  if config.get("task", "inpainting") != "inpainting":
    raise ValueError(f"config.task={config.task!r}: export is for inpainting models; the "
                     "generative memory has its own export (docs/MEMORY_PRETRAINING.md).")
  config_checks.validate(config)
  workdir = os.path.abspath(workdir)
  out_dir = os.path.abspath(out_dir or os.path.join(workdir, "export"))
  components, state, step = loop.restore_run(config, workdir, parallel.make_mesh(), step=step,
                                             allow_config_change=allow_config_change)
  variables = jax.device_get(step_lib.inference_variables(config, state))
  size = config.data.crop_size
  geometry = models.input_geometry(config.model, size)
  serialized_geometry = geometry
  if not models.shape_polymorphic(config.model):
    # The serialized function cannot take symbolic sizes; it serves the trained size, and
    # gmsrm_jax.inpaint.load(export) still runs the model at any size from its variables.
    serialized_geometry = dataclasses.replace(geometry, fixed_size=size)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), variables)
  exported = jax.export.export(jax.jit(_completion(components)), platforms=tuple(platforms))(
      abstract, *_image_shapes(serialized_geometry))

  os.makedirs(out_dir, exist_ok=True)
  variables_dir = os.path.join(out_dir, VARIABLES)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(variables_dir, variables, force=True)
  with open(os.path.join(out_dir, SERIALIZED), "wb") as f:
    f.write(exported.serialize())
  with open(os.path.join(out_dir, CONFIG), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  card = model_card(config, step, workdir, geometry, serialized_geometry)
  with open(os.path.join(out_dir, MODEL_CARD_JSON), "w") as f:
    json.dump(card, f, indent=2)
  with open(os.path.join(out_dir, MODEL_CARD), "w") as f:
    f.write(_model_card_markdown(card))
  written = [SERIALIZED, CONFIG, MODEL_CARD, MODEL_CARD_JSON] + [
      os.path.relpath(os.path.join(root, name), out_dir)
      for root, _, names in os.walk(variables_dir) for name in names]
  manifest = {"format": FORMAT, "step": int(step), "image_size": size,
              "stride": geometry.stride, "fixed_size": serialized_geometry.fixed_size,
              "params": "ema" if config.eval.use_ema else "online",
              "collections": sorted(variables), "platforms": list(platforms),
              "sha256": {name: weights.sha256(os.path.join(out_dir, name))
                         for name in sorted(written)}}
  with open(os.path.join(out_dir, MANIFEST), "w") as f:
    json.dump(manifest, f, indent=2)
  return out_dir


def model_card(config: ml_collections.ConfigDict, step: int, workdir: str, geometry,
               serialized_geometry=None) -> dict[str, Any]:
  """What the exported model is, what it was trained on, how to feed it, and its limits."""
  from gmsrm_jax import evaluation  # pylint: disable=g-import-not-at-top
  metrics_path = os.path.join(workdir, "eval", "metrics.json")
  evaluation_table = None
  if os.path.isfile(metrics_path):
    with open(metrics_path) as f:
      evaluation_table = json.load(f)
  data = config.data
  serialized_geometry = serialized_geometry or geometry
  if geometry.fixed_size:
    sizes = (f"{geometry.fixed_size}x{geometry.fixed_size} only (other sizes: "
             "gmsrm_jax.inpaint pads to a square and resizes)")
  elif serialized_geometry.fixed_size:
    sizes = (f"the serialized function (load_serving): {serialized_geometry.fixed_size}x"
             f"{serialized_geometry.fixed_size}; gmsrm_jax.inpaint.load runs the model on any "
             f"height and width (padded by reflection to a multiple of {geometry.stride})")
  else:
    sizes = (f"any height and width that are multiples of {geometry.stride} "
             "(gmsrm_jax.inpaint pads any other size by reflection and crops back)")
  return {
      "model_family": config.model.name,
      "step": int(step),
      "weights": "EMA" if config.eval.use_ema else "online",
      "training_data": {"dataset": evaluation.provenance(config, step)["dataset"],
                        "split": data.train_split, "manual_dir": data.manual_dir or None,
                        "crop_size": data.crop_size, "resize_shorter": data.resize_shorter},
      "input": {"image": "float32 [batch, H, W, 3], RGB in [-1, 1]",
                "mask": "float32 [batch, H, W, 1], 1 = hole, 0 = known",
                "sizes": sizes,
                "output": "the completed image, known pixels taken from the input"},
      "evaluation": evaluation_table,
      "limits": [
          f"Trained on {data.crop_size}x{data.crop_size} crops: other scales and content "
          "unlike the training data are completed less well.",
          "The whole image is one network input (no tiling); memory grows with its area.",
          "Completions are plausible, not true: never use them as evidence of what was "
          "hidden."],
      "config": json.loads(config.to_json_best_effort()),
  }


def _model_card_markdown(card: dict[str, Any]) -> str:
  data = card["training_data"]
  lines = [f"# Model card: {card['model_family']} (step {card['step']}, {card['weights']} "
           "weights)", "",
           f"- Training data: {data['dataset']}, split {data['split']!r}"
           + (f" (images from {data['manual_dir']})" if data["manual_dir"] else "")
           + f"; {data['crop_size']}x{data['crop_size']} crops of images resized to shorter "
           f"side {data['resize_shorter']}.",
           f"- Input: image {card['input']['image']}; mask {card['input']['mask']}.",
           f"- Sizes: {card['input']['sizes']}.",
           f"- Output: {card['input']['output']}.",
           "- Use: `gmsrm_jax.inpaint.load(DIR)(image, mask)` or `python -m gmsrm_jax.inpaint "
           "--model=DIR --image=... --mask=... --output=...`; `gmsrm_jax.export.load_serving"
           "(DIR)` needs jax and orbax only.", "", "## Evaluation", ""]
  table = card["evaluation"]
  if table is None:
    lines.append("None with this run yet: `python evaluate.py --workdir=<run>`, then export "
                 "again.")
  else:
    columns = list(table["results"])
    lines += [f"{table.get('dataset', '?')}, split {table.get('split', '?')!r}, step "
              f"{table['step']}; masks: {table.get('masks', '?')}.", "",
              "| Metric | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for metric in ("psnr", "ssim", "l1", "lpips", "fid"):
      values = [table["results"][c].get(metric) for c in columns]
      lines.append(f"| {metric.upper()} | " + " | ".join(
          "n/a" if v is None else f"{v:.4g}" for v in values) + " |")
  lines += ["", "## Limits", ""] + [f"- {limit}" for limit in card["limits"]]
  lines += ["", f"The full config is in {CONFIG} and {MODEL_CARD_JSON}."]
  return "\n".join(lines) + "\n"


_EXPORT_AGAIN = "Export the run again: python export.py --config=<run config> --workdir=<run>"


def _read_json(path: str) -> Any:
  try:
    with open(path) as f:
      return json.load(f)
  except (ValueError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is damaged (not valid JSON: {e}). {_EXPORT_AGAIN}") from None


def _read_manifest(out_dir: str) -> dict[str, Any]:
  """The manifest, after checking every file it lists against its sha256."""
  path = os.path.join(out_dir, MANIFEST)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{out_dir} is not a model export (no {MANIFEST}). Create one: "
                            "python export.py --config=<run config> --workdir=<run>")
  manifest = _read_json(path)
  if manifest.get("format") == _UNVERIFIED_FORMAT:
    logging.warning("%s predates checksums (%s): its files cannot be verified.", out_dir,
                    _UNVERIFIED_FORMAT)
    return manifest
  if manifest.get("format") != FORMAT or not isinstance(manifest.get("sha256"), dict):
    raise ValueError(f"{path}: format {manifest.get('format')!r}, this version reads {FORMAT}.")
  for name, expected in manifest["sha256"].items():
    file = os.path.join(out_dir, name)
    if not os.path.isfile(file):
      raise FileNotFoundError(f"{file} is missing from the export. {_EXPORT_AGAIN}")
    if weights.sha256(file) != expected:
      raise ValueError(f"{file} is damaged or was changed after the export (its sha256 "
                       f"differs from {MANIFEST}'s). {_EXPORT_AGAIN}")
  return manifest


def _read_variables(out_dir: str) -> Any:
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(os.path.join(os.path.abspath(out_dir), VARIABLES))
  return jax.tree.map(np.asarray, restored)


@dataclasses.dataclass(frozen=True)
class ExportedModel:
  """An export loaded with the model code: `model(image, mask)` -> completed image."""

  config: ml_collections.ConfigDict
  variables: Any  # {"params": ..., other generator collections (e.g. "memory")}
  step: int
  inpaint: Callable[[Any, jax.Array, jax.Array], jax.Array]  # (variables, image, mask)

  def __call__(self, image, mask) -> jax.Array:
    return self.inpaint(self.variables, image, mask)


def load(out_dir: str) -> ExportedModel:
  from gmsrm_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  manifest = _read_manifest(out_dir)
  config = ml_collections.ConfigDict(_read_json(os.path.join(out_dir, CONFIG)))
  components = state_lib.create_components(config)
  return ExportedModel(config=config, variables=_read_variables(out_dir),
                       step=manifest["step"], inpaint=jax.jit(_completion(components)))


def load_serving(out_dir: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """The serialized completion with its variables bound: `fn(image, mask)`; no model code.

  Takes the sizes the manifest names (any multiple of "stride", or "fixed_size"); for any
  other size or for uint8 photos use `gmsrm_jax.inpaint.load(out_dir)`.
  """
  manifest = _read_manifest(out_dir)
  with open(os.path.join(out_dir, SERIALIZED), "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  variables = _read_variables(out_dir)
  stride, fixed = manifest.get("stride"), manifest.get("fixed_size", manifest.get("image_size"))

  def serve(image, mask):
    height, width = np.shape(image)[1:3]
    if stride is not None and fixed is None:
      if height % stride or width % stride:
        raise ValueError(f"Image {height}x{width}: this export takes heights and widths that "
                         f"are multiples of {stride}; gmsrm_jax.inpaint.load({out_dir!r}) "
                         "pads any size.")
    elif (height, width) != (fixed, fixed):
      raise ValueError(f"Image {height}x{width}: this export takes {fixed}x{fixed} images; "
                       f"gmsrm_jax.inpaint.load({out_dir!r}) takes any size.")
    return exported.call(variables, image, mask)

  return serve
