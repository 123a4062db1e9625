"""The frozen generative memory: what stage 1 exports and stage 2 loads by path.

An export directory holds
  arrays/       orbax: {"params": {"mapping", "synthesis"} (EMA weights), "w_avg": [w_dim]}
  memory.json   the architecture (`config.model` of the stage-1 config), the stage-1 step.
Loading rebuilds the expected tree from the requested architecture and refuses any difference
in architecture fields or array shapes, naming the field or leaf (never a partial load).
"""

import dataclasses
import json
import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

from gmsrm_jax import config_checks
from gmsrm_jax import mesh as mesh_lib
from gmsrm_jax import tree_match
from gmsrm_jax.stylegan import networks

FORMAT_VERSION = 1
_ARRAYS = "arrays"
_INFO = "memory.json"
# The adapter of each memory block that stage 2 trains (networks.EncoderFusion).
ADAPTER_NAME = "encoder_fusion"


class MemoryMismatchError(tree_match.CheckpointMismatchError):
  """The exported memory does not have the architecture it is loaded as."""


@dataclasses.dataclass(frozen=True)
class FrozenMemory:
  """EMA weights of the stage-1 generator and its tracked average w."""

  params: Any  # {"mapping": ..., "synthesis": ...}
  w_avg: jax.Array  # [w_dim]
  model_config: ml_collections.ConfigDict
  step: int

  @property
  def synthesis_params(self) -> Any:
    return self.params["synthesis"]

  def synthesis_network(self) -> networks.SynthesisNetwork:
    model = self.model_config
    return networks.SynthesisNetwork(model.resolution, model.start_resolution,
                                     model.channel_base, model.channel_max,
                                     networks.upsample_form(model))


def _architecture(model_config: ml_collections.ConfigDict) -> dict[str, Any]:
  # Through JSON so tuples and lists, ints and floats compare as they are stored.
  return json.loads(json.dumps(model_config.to_dict()))


def abstract_memory(model_config: ml_collections.ConfigDict, sharding=None) -> dict[str, Any]:
  """Shapes (and shardings) of the exported tree for this architecture, built from shapes."""
  generator = networks.create_generator(model_config)

  def init():
    z = jnp.zeros((1, model_config.z_dim), jnp.float32)
    key = jax.random.key(0)
    params = generator.init({"params": key, "noise": key}, z)["params"]
    return {"params": params, "w_avg": jnp.zeros((model_config.w_dim,), jnp.float32)}

  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      jax.eval_shape(init))


def export_memory(path: str, *, params: Any, w_avg: jax.Array,
                  model_config: ml_collections.ConfigDict, step: int) -> str:
  """Writes the memory to `path` (replacing an older export there); returns the path.

  Every process must call this (the array write is collective); process 0 writes the JSON.
  """
  path = os.path.abspath(path)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(path, _ARRAYS), {"params": params, "w_avg": w_avg}, force=True)
  checkpointer.wait_until_finished()
  if jax.process_index() == 0:
    info = {"format_version": FORMAT_VERSION, "step": int(step),
            "model": _architecture(model_config)}
    with open(os.path.join(path, _INFO), "w") as f:
      json.dump(info, f, indent=2, sort_keys=True)
  return path


def read_info(path: str) -> dict[str, Any]:
  info_path = os.path.join(os.path.abspath(path), _INFO)
  if not os.path.exists(info_path):
    raise FileNotFoundError(
        f"No exported generative memory at {path} ({_INFO} missing). Export one after stage 1 "
        "with: python -m gmsrm_jax.train.memory_pretraining --config=<stage-1 config> "
        "--workdir=<stage-1 workdir>")
  with open(info_path) as f:
    return json.load(f)


def _check_architecture(stored: dict[str, Any], wanted: dict[str, Any], path: str) -> None:
  # An export written before a requested field existed was made with the field's old value.
  added = {name.removeprefix("model."): value
           for name, value in config_checks.ADDED_FIELDS.items() if name.startswith("model.")}
  stored = {**{k: v for k, v in added.items() if k in wanted}, **stored}
  problems = []
  for key in sorted(set(stored) | set(wanted)):
    if key not in stored:
      problems.append(f"model.{key}: not in the export, requested {wanted[key]!r}")
    elif key not in wanted:
      problems.append(f"model.{key}: exported {stored[key]!r}, not in the requested config")
    elif stored[key] != wanted[key]:
      problems.append(f"model.{key}: exported {stored[key]!r}, requested {wanted[key]!r}")
  if problems:
    raise MemoryMismatchError(f"The generative memory at {path} has another architecture:\n  "
                              + "\n  ".join(problems))


def load_memory(path: str, model_config: ml_collections.ConfigDict | None = None, *,
                sharding=None) -> FrozenMemory:
  """Loads an export; `model_config` (default: the stored one) is the architecture expected.

  Arrays land replicated over all devices unless `sharding` says otherwise.

  Raises:
    FileNotFoundError: nothing exported at `path`.
    MemoryMismatchError: an architecture field or an array shape differs; the message names it.
  """
  path = os.path.abspath(path)
  info = read_info(path)
  if info.get("format_version") != FORMAT_VERSION:
    raise MemoryMismatchError(f"{path}: export format {info.get('format_version')}, this code "
                              f"reads format {FORMAT_VERSION}.")
  if model_config is None:
    model_config = ml_collections.ConfigDict(info["model"])
  else:
    _check_architecture(info["model"], _architecture(model_config), path)
  sharding = sharding or mesh_lib.replicated(mesh_lib.make_mesh())
  abstract = abstract_memory(model_config, sharding)
  checkpointer = ocp.StandardCheckpointer()
  arrays = os.path.join(path, _ARRAYS)
  try:
    tree_match.check_compatible(checkpointer.metadata(arrays).item_metadata, abstract)
  except tree_match.CheckpointMismatchError as e:
    raise MemoryMismatchError(f"The generative memory at {path}: {e}") from None
  restored = checkpointer.restore(arrays, abstract)
  return FrozenMemory(params=restored["params"], w_avg=restored["w_avg"],
                      model_config=model_config, step=int(info["step"]))


def split_adapters(synthesis_params: Any) -> tuple[Any, Any]:
  """Synthesis params of a stage-2 memory -> (frozen stage-1 weights, trainable adapters).

  The frozen part has exactly the tree of the export's "synthesis" params.
  """
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(synthesis_params))
  is_adapter = lambda key: ADAPTER_NAME in key
  frozen = {k: v for k, v in flat.items() if not is_adapter(k)}
  adapters = {k: v for k, v in flat.items() if is_adapter(k)}
  return (flax.traverse_util.unflatten_dict(frozen),
          flax.traverse_util.unflatten_dict(adapters))


def merge_adapters(frozen: Any, adapters: Any) -> Any:
  """Inverse of `split_adapters`: the synthesis params to apply the stage-2 memory with."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(frozen))
  flat.update(flax.traverse_util.flatten_dict(flax.core.unfreeze(adapters)))
  return flax.traverse_util.unflatten_dict(flat)
