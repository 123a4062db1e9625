r"""Weights of the frozen feature networks: convert the published files, check, load.

  python -m gmsrm_jax.weights list
  python -m gmsrm_jax.weights convert --model=vgg19 --output=weights/vgg19.npz \
      vgg19-dcbb9e9d.pth
  python -m gmsrm_jax.weights convert --model=lpips_alex --output=weights/lpips_alex.npz \
      alexnet-owt-7be5be79.pth alex.pth
  python -m gmsrm_jax.weights check --model=lpips_alex weights/lpips_alex.npz

Sources (where each file comes from: docs/WEIGHTS.md) are PyTorch state_dicts (`.pth`, read
with `torch.load(..., weights_only=True)`, so torch must be installed for them; nothing is
unpickled beyond tensors) or `.npz` files holding the same names and arrays, which is how to
convert on a machine without torch: `np.savez(out, **{k: v.numpy() for k, v in sd.items()})`
wherever torch is available.

The project format is an `.npz` (numpy, no pickle) with one float32 array per parameter,
keyed by its flax path joined with "/" (e.g. "conv1_1/kernel", "Mixed_5b/branch1x1/bn/mean"),
plus "__format__", "__model__" and "__sources__" (file names and sha256 of what it was
converted from). Conversion moves names and layouts only: conv kernels OIHW -> HWIO, batch
norm weight/bias/running_mean/running_var -> scale/bias/mean/var, LPIPS heads [1, C, 1, 1] ->
1x1 kernels [1, 1, C, 1]. Every file is verified against the model's parameter tree (names and
shapes, from `jax.eval_shape`); any difference is an error naming the file and the fix.
"""

import argparse
import dataclasses
import hashlib
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from flax import traverse_util
import flax.linen as nn
import jax
import numpy as np

from gmsrm_jax.features import inception
from gmsrm_jax.features import lpips
from gmsrm_jax.features import vgg19

FORMAT = "gmsrm_jax.weights/1"
_META_KEYS = ("__format__", "__model__", "__sources__")
DOCS = "docs/WEIGHTS.md"


class WeightsError(ValueError):
  """A weights file is missing, unreadable, or does not match the model."""


@dataclasses.dataclass(frozen=True)
class Source:
  """A published file a model's weights are converted from."""
  file: str
  what: str
  url: str


@dataclasses.dataclass(frozen=True)
class Spec:
  """One convertible model.

  Attributes:
    name: the --model name.
    description: one line for `list`.
    sources: the published files `convert` needs (all of them, any order).
    build: () -> (flax module, example inputs) whose `init` gives the full parameter tree.
    convert: published state dict (a `_Reader`) -> {flax path: array}.
    ignored: regexes of published names that the feature extractor does not use
      (classifier heads, BN step counters); anything else left unread is an error.
  """
  name: str
  description: str
  sources: tuple[Source, ...]
  build: Callable[[], tuple[nn.Module, tuple[np.ndarray, ...]]]
  convert: Callable[["_Reader"], dict[str, np.ndarray]]
  ignored: tuple[str, ...] = ()


class _Reader:
  """A published state dict that remembers which names were read."""

  def __init__(self, arrays: Mapping[str, np.ndarray], files: Sequence[str]):
    self._arrays = arrays
    self._files = files
    self.used: set[str] = set()

  def __call__(self, name: str) -> np.ndarray:
    if name not in self._arrays:
      raise WeightsError(f"{', '.join(self._files)}: no entry {name!r}; is this the right "
                         "file for this model?")
    self.used.add(name)
    return np.asarray(self._arrays[name], np.float32)

  def names(self) -> list[str]:
    return list(self._arrays)

  def has(self, name: str) -> bool:
    return name in self._arrays


def _conv(read: _Reader, prefix: str, target: str, bias: bool = True) -> dict[str, np.ndarray]:
  # torch Conv2d weight is [out, in, kh, kw]; flax's kernel is [kh, kw, in, out].
  out = {f"{target}/kernel": read(f"{prefix}.weight").transpose(2, 3, 1, 0)}
  if bias:
    out[f"{target}/bias"] = read(f"{prefix}.bias")
  return out


def torchvision_vgg_indices(blocks: Sequence[int]) -> list[tuple[str, int]]:
  """(our conv name, index in torchvision's `features`): conv+ReLU take 2 slots, a pool 1."""
  pairs, index = [], 0
  for block, num_convs in enumerate(blocks):
    for i in range(num_convs):
      pairs.append((f"conv{block + 1}_{i + 1}", index))
      index += 2
    index += 1
  return pairs


def _convert_vgg(read: _Reader, blocks: Sequence[int], target_prefix: str = ""
                 ) -> dict[str, np.ndarray]:
  out = {}
  for name, index in torchvision_vgg_indices(blocks):
    out.update(_conv(read, f"features.{index}", target_prefix + name))
  return out


# torchvision AlexNet `features` indices of conv1 ... conv5.
_ALEXNET_INDICES = (0, 3, 6, 8, 10)


def _convert_lpips_heads(read: _Reader) -> dict[str, np.ndarray]:
  out = {}
  for k in range(5):
    # NetLinLayer is Sequential(Dropout, Conv) as published (index 1); without dropout the
    # conv is index 0.
    name = f"lin{k}.model.1.weight"
    if not read.has(name) and read.has(f"lin{k}.model.0.weight"):
      name = f"lin{k}.model.0.weight"
    out[f"lin{k}/kernel"] = read(name).transpose(2, 3, 1, 0)
  return out


def _convert_lpips_alex(read: _Reader) -> dict[str, np.ndarray]:
  out = _convert_lpips_heads(read)
  for k, index in enumerate(_ALEXNET_INDICES):
    out.update(_conv(read, f"features.{index}", f"net/conv{k + 1}"))
  return out


def _convert_lpips_vgg(read: _Reader) -> dict[str, np.ndarray]:
  return {**_convert_lpips_heads(read), **_convert_vgg(read, vgg19.VGG16_BLOCKS, "net/")}


_BN_NAMES = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def _convert_inception(read: _Reader) -> dict[str, np.ndarray]:
  # Module names are torchvision's (Conv2d_1a_3x3, Mixed_5b.branch1x1, ...), so the mapping is
  # mechanical: every BasicConv2d is "<path>.conv.weight" plus "<path>.bn.*".
  out = {}
  for name in read.names():
    match = re.fullmatch(r"(.+)\.conv\.weight", name)
    if match is None or match.group(1).startswith("AuxLogits"):
      continue
    path = match.group(1)
    target = path.replace(".", "/")
    out.update(_conv(read, f"{path}.conv", f"{target}/conv", bias=False))
    for torch_name, ours in _BN_NAMES.items():
      out[f"{target}/bn/{ours}"] = read(f"{path}.bn.{torch_name}")
  return out


def _zeros(*shape):
  return np.zeros(shape, np.float32)


_TORCHVISION = "https://download.pytorch.org/models/"
_LPIPS = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/"


def _lpips_spec(net: str, backbone: str, backbone_file: str, convert_fn, note: str = "") -> Spec:
  """LPIPS = a torchvision backbone file + the LPIPS package's heads file `<net>.pth`."""
  return Spec(
      name=f"lpips_{net}",
      description=f"LPIPS v0.1, {backbone} backbone {note}".strip() + ".",
      sources=(Source(backbone_file, f"torchvision {backbone} ImageNet weights",
                      _TORCHVISION + backbone_file),
               Source(f"{net}.pth", f"LPIPS v0.1 linear heads for {backbone}",
                      _LPIPS + f"{net}.pth")),
      build=lambda: (lpips.LPIPS(net), (_zeros(1, 64, 64, 3), _zeros(1, 64, 64, 3))),
      convert=convert_fn,
      ignored=(r"classifier\..*",))


SPECS: dict[str, Spec] = {spec.name: spec for spec in (
    Spec(
        name="vgg19",
        description="VGG-19 features (torchvision ImageNet weights) for the perceptual loss "
                    "(GM-SRM eq. 11).",
        sources=(Source("vgg19-dcbb9e9d.pth", "torchvision VGG-19 ImageNet weights",
                        _TORCHVISION + "vgg19-dcbb9e9d.pth"),),
        build=lambda: (vgg19.VGG(vgg19.VGG19_BLOCKS, ("pool5",)), (_zeros(1, 64, 64, 3),)),
        convert=lambda read: _convert_vgg(read, vgg19.VGG19_BLOCKS),
        ignored=(r"classifier\..*",)),
    _lpips_spec("alex", "AlexNet", "alexnet-owt-7be5be79.pth", _convert_lpips_alex,
                "(the LPIPS default)"),
    _lpips_spec("vgg", "VGG-16", "vgg16-397923af.pth", _convert_lpips_vgg),
    Spec(
        name="inception_fid",
        description="FID Inception-v3 (TF 2015-12-05 graph as ported by pytorch-fid), pool-3.",
        sources=(Source("pt_inception-2015-12-05-6726825d.pth",
                        "pytorch-fid's port of the TF FID Inception weights",
                        "https://github.com/mseitzer/pytorch-fid/releases/download/"
                        "fid_weights/pt_inception-2015-12-05-6726825d.pth"),),
        build=lambda: (inception.FIDInceptionV3(inception.MIN_IMAGE_SIZE),
                       (_zeros(1, inception.MIN_IMAGE_SIZE, inception.MIN_IMAGE_SIZE, 3),)),
        convert=_convert_inception,
        # The 1008-way classifier and, if present, the auxiliary head are not features.
        ignored=(r"fc\..*", r"AuxLogits\..*", r".*\.num_batches_tracked")),
)}


def _spec(model: str) -> Spec:
  if model not in SPECS:
    raise WeightsError(f"Unknown model {model!r}; one of {sorted(SPECS)}.")
  return SPECS[model]


def expected_shapes(model: str) -> dict[str, tuple[int, ...]]:
  """{flax path: shape} of the model's full parameter tree (abstract, nothing computed)."""
  module, inputs = _spec(model).build()
  variables = jax.eval_shape(module.init, jax.random.key(0), *inputs)
  flat = traverse_util.flatten_dict(variables["params"], sep="/")
  return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def random_params(model: str, seed: int = 0) -> dict[str, Any]:
  """A parameter tree of the model's shapes with He-scaled random values.

  For benchmarks (same cost as the real weights) and tests of the plumbing; the values mean
  nothing. Batch-norm variances and scales are kept near 1 and LPIPS heads non-negative, so
  activations stay finite through deep stacks.
  """
  rng = np.random.default_rng(seed)
  arrays = {}
  for path, shape in expected_shapes(model).items():
    if path.endswith("kernel"):
      value = rng.standard_normal(shape, np.float32) * np.sqrt(2.0 / np.prod(shape[:-1]))
      if path.startswith("lin"):
        value = np.abs(value)
    elif path.endswith(("var", "scale")):
      value = rng.uniform(0.5, 1.5, shape)
    else:
      value = rng.normal(0.0, 0.1, shape)
    arrays[path] = np.asarray(value, np.float32)
  return traverse_util.unflatten_dict(arrays, sep="/")


def convert_command(model: str, output: str = "") -> str:
  spec = _spec(model)
  return (f"python -m gmsrm_jax.weights convert --model={model} "
          f"--output={output or f'weights/{model}.npz'} "
          + " ".join(source.file for source in spec.sources))


def _fix_hint(model: str, path: str) -> str:
  files = ", ".join(f"{s.file} ({s.url})" for s in _spec(model).sources)
  return (f"Create it from the published file(s) {files} with:\n  "
          f"{convert_command(model, path)}\n(see {DOCS}).")


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """A published state dict: a torch `.pth`/`.pt`/`.bin` (needs torch) or an `.npz`."""
  if not os.path.isfile(path):
    raise WeightsError(f"Weights source {path} does not exist.")
  if path.endswith(".npz"):
    with np.load(path, allow_pickle=False) as data:
      return {name: data[name] for name in data.files}
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise WeightsError(
        f"Reading {path} needs PyTorch (pip install torch; it is not a dependency of this "
        "project). Alternatively, where torch is available, save the same names as .npz:\n"
        "  python -c \"import sys, torch, numpy as np; sd = torch.load(sys.argv[1], "
        "map_location='cpu', weights_only=True); np.savez(sys.argv[2], **{k: v.numpy() "
        f"for k, v in sd.items()}})\" {path} {os.path.splitext(path)[0]}.npz\n"
        "and convert the .npz.") from None
  # weights_only=True: tensors and plain containers only, never arbitrary pickled code.
  state = torch.load(path, map_location="cpu", weights_only=True)
  if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
    state = state["state_dict"]
  return {name: value.detach().cpu().numpy() for name, value in state.items()}


def sha256(path: str) -> str:
  """Hex sha256 of a file, read in 1 MiB blocks."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _tree_problems(arrays: Mapping[str, np.ndarray], model: str) -> list[str]:
  """Differences between {path: array} and the model's parameter tree, one line each."""
  expected = expected_shapes(model)
  problems = [f"missing {path} {shape}" for path, shape in expected.items() if path not in arrays]
  problems += [f"unexpected {path} {tuple(arrays[path].shape)}" for path in arrays
               if path not in expected]
  problems += [f"shape of {path}: file {tuple(arrays[path].shape)}, model {shape}"
               for path, shape in expected.items()
               if path in arrays and tuple(arrays[path].shape) != shape]
  return problems


def convert(model: str, sources: Sequence[str], output: str) -> dict[str, np.ndarray]:
  """Converts published file(s) into the project format at `output`; returns the arrays."""
  spec = _spec(model)
  merged: dict[str, np.ndarray] = {}
  for path in sources:
    for name, value in read_state_dict(path).items():
      if name in merged:
        raise WeightsError(f"{name!r} appears in more than one of {list(sources)}.")
      merged[name] = value
  read = _Reader(merged, sources)
  arrays = spec.convert(read)
  unused = [name for name in merged if name not in read.used
            and not any(re.fullmatch(pattern, name) for pattern in spec.ignored)]
  if unused:
    raise WeightsError(f"{', '.join(sources)} hold entries the {model} model has no place for "
                       f"(wrong file?): {unused[:8]}{' ...' if len(unused) > 8 else ''}")
  problems = _tree_problems(arrays, model)
  if problems:
    raise WeightsError(f"{', '.join(sources)} do not fit the {model} model:\n  "
                       + "\n  ".join(problems[:20]))
  save(model, arrays, output,
       provenance=[f"{os.path.basename(path)} sha256={sha256(path)}" for path in sources])
  return arrays


def save(model: str, arrays: Mapping[str, np.ndarray], output: str,
         provenance: Sequence[str] = ()) -> None:
  """Writes {flax path: array} in the project format, after checking it against the model."""
  problems = _tree_problems(arrays, model)
  if problems:
    raise WeightsError(f"Arrays for {output} do not fit the {model} model:\n  "
                       + "\n  ".join(problems[:20]))
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  np.savez(output, __format__=np.array(FORMAT), __model__=np.array(model),
           __sources__=np.array(list(provenance), dtype=str),
           **{path: np.asarray(value, np.float32) for path, value in arrays.items()})


def _read_converted(model: str, path: str) -> dict[str, np.ndarray]:
  if not path:
    raise WeightsError(f"No {model} weights file given. " + _fix_hint(model, ""))
  if not os.path.isfile(path):
    raise WeightsError(f"{model} weights file {path} does not exist. " + _fix_hint(model, path))
  try:
    with np.load(path, allow_pickle=False) as data:
      arrays = {name: data[name] for name in data.files}
  except (OSError, ValueError) as error:
    raise WeightsError(f"Cannot read {path} as a converted weights file ({error}). "
                       + _fix_hint(model, path)) from error
  if "__format__" not in arrays or str(arrays["__format__"]) != FORMAT:
    raise WeightsError(f"{path} is not a converted weights file (no {FORMAT!r} marker); "
                       "published files must be converted first. " + _fix_hint(model, path))
  if str(arrays["__model__"]) != model:
    raise WeightsError(f"{path} holds {str(arrays['__model__'])!r} weights, not {model!r}. "
                       + _fix_hint(model, path))
  return {name: value for name, value in arrays.items() if name not in _META_KEYS}


def check(model: str, path: str) -> list[str]:
  """Problems of a converted file against the model ([] when it fits)."""
  try:
    arrays = _read_converted(model, path)
  except WeightsError as error:
    return [str(error)]
  problems = _tree_problems(arrays, model)
  problems += [f"non-finite values in {name}" for name, value in arrays.items()
               if not np.all(np.isfinite(value))]
  return problems


def load(model: str, path: str) -> dict[str, Any]:
  """The parameter tree (nested dict of float32 numpy arrays) from a converted file.

  Raises:
    WeightsError: the file is missing, not converted, for another model, or its tree differs
      from the model's; the message names the file and the command that makes a good one.
  """
  arrays = _read_converted(model, path)
  problems = _tree_problems(arrays, model)
  if problems:
    raise WeightsError(f"{path} does not match the {model} model:\n  "
                       + "\n  ".join(problems[:20]) + "\n" + _fix_hint(model, path))
  return traverse_util.unflatten_dict(arrays, sep="/")


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m gmsrm_jax.weights",
                                   description=__doc__.split("\n\n")[0].strip())
  verbs = parser.add_subparsers(dest="verb", required=True)
  verbs.add_parser("list", help="models and the published files each needs")
  convert_parser = verbs.add_parser("convert", help="published file(s) -> project format")
  convert_parser.add_argument("--model", required=True, choices=sorted(SPECS))
  convert_parser.add_argument("--output", required=True)
  convert_parser.add_argument("sources", nargs="+", help=".pth or .npz state dicts")
  check_parser = verbs.add_parser("check", help="verify a converted file against the model")
  check_parser.add_argument("--model", required=True, choices=sorted(SPECS))
  check_parser.add_argument("path")
  args = parser.parse_args(argv)

  try:
    if args.verb == "list":
      for spec in SPECS.values():
        print(f"{spec.name}: {spec.description}")
        for source in spec.sources:
          print(f"    {source.file}  ({source.what})  {source.url}")
    elif args.verb == "convert":
      arrays = convert(args.model, args.sources, args.output)
      count = sum(int(np.prod(a.shape)) for a in arrays.values())
      print(f"Wrote {args.output}: {args.model}, {len(arrays)} arrays, {count:,} parameters.")
    else:
      problems = check(args.model, args.path)
      if problems:
        print(f"{args.path} does NOT match {args.model}:", *problems, sep="\n  ")
        return 1
      print(f"{args.path}: OK ({args.model}).")
  except WeightsError as error:
    print(f"error: {error}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
