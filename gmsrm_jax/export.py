"""Inference export: a trained run as one directory that serving needs, and nothing more.

  python export.py --config=configs/unet_cicm.py:tiny --workdir=RUN [--output=DIR]

writes (default DIR = RUN/export):
  variables/     orbax arrays {"params": the generator weights evaluation uses (EMA or online,
                 `eval.use_ema`) with the frozen ones merged in (GM-SRM's generative memory),
                 plus every other generator collection, e.g. CICM's "memory"}
  inpaint.jax    the completion function `(variables, image, mask) -> completed image`,
                 serialized with `jax.export` (StableHLO) for any batch size and the platforms
                 of `--platforms`; calling it needs jax alone, not this package's model code
  config.json    the run's config
  manifest.json  step, image size, format, platforms, and the sha256 of every other file.

Images are float32 [B, H, W, 3] in [-1, 1] at the trained size; masks [B, H, W, 1], 1 = hole.
The completion keeps the known pixels (`models.composite`), as evaluation does.

Loading: `load(DIR)` rebuilds the flax generator from config.json (for research use: the
variables are a plain tree); `load_serving(DIR)` runs the serialized function. Both first check
every file against the manifest's sha256, so a damaged or changed file is an error naming it
(rather than a struct/Unicode/JSON error from deep inside a reader).
"""

import dataclasses
import functools
import json
import os
from typing import Any, Callable, Sequence

from absl import logging
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from gmsrm_jax import config_checks
from gmsrm_jax import weights
from gmsrm_jax.train import loop
from gmsrm_jax.train import parallel
from gmsrm_jax.train import state as state_lib
from gmsrm_jax.train import step as step_lib

FORMAT = "gmsrm_jax.export/2"  # /2 added the files' sha256.
_UNVERIFIED_FORMAT = "gmsrm_jax.export/1"
VARIABLES = "variables"
SERIALIZED = "inpaint.jax"
CONFIG = "config.json"
MANIFEST = "manifest.json"
DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")


def _completion(components: state_lib.Components) -> Callable[..., jax.Array]:
  def inpaint(variables, image, mask):
    return step_lib.predict(components, variables, image, mask)
  return inpaint


def export(config: ml_collections.ConfigDict, workdir: str, out_dir: str | None = None, *,
           step: int | None = None, platforms: Sequence[str] = DEFAULT_PLATFORMS,
           allow_config_change: Sequence[str] = ()) -> str:
  """Writes the export of the run's checkpoint (latest by default); returns its directory.

  One process only: the state is gathered to this host and written by it.
  """
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
  batch = jax.export.symbolic_shape("batch")[0]
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), variables)
  exported = jax.export.export(jax.jit(_completion(components)), platforms=tuple(platforms))(
      abstract, jax.ShapeDtypeStruct((batch, size, size, 3), np.float32),
      jax.ShapeDtypeStruct((batch, size, size, 1), np.float32))

  os.makedirs(out_dir, exist_ok=True)
  variables_dir = os.path.join(out_dir, VARIABLES)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(variables_dir, variables, force=True)
  with open(os.path.join(out_dir, SERIALIZED), "wb") as f:
    f.write(exported.serialize())
  with open(os.path.join(out_dir, CONFIG), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  written = [SERIALIZED, CONFIG] + [
      os.path.relpath(os.path.join(root, name), out_dir)
      for root, _, names in os.walk(variables_dir) for name in names]
  manifest = {"format": FORMAT, "step": int(step), "image_size": size,
              "params": "ema" if config.eval.use_ema else "online",
              "collections": sorted(variables), "platforms": list(platforms),
              "sha256": {name: weights.sha256(os.path.join(out_dir, name))
                         for name in sorted(written)}}
  with open(os.path.join(out_dir, MANIFEST), "w") as f:
    json.dump(manifest, f, indent=2)
  return out_dir


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
  manifest = _read_manifest(out_dir)
  config = ml_collections.ConfigDict(_read_json(os.path.join(out_dir, CONFIG)))
  components = state_lib.create_components(config)
  return ExportedModel(config=config, variables=_read_variables(out_dir),
                       step=manifest["step"], inpaint=jax.jit(_completion(components)))


def load_serving(out_dir: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """The serialized completion with its variables bound: `fn(image, mask)`; no model code."""
  _read_manifest(out_dir)
  with open(os.path.join(out_dir, SERIALIZED), "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  variables = _read_variables(out_dir)
  return functools.partial(exported.call, variables)
