"""Model registry: configs name a generator and a discriminator, this builds them.

`model.name` is a backbone from `_BACKBONES`, optionally with the suffix "_cicm" (the backbone
equipped with CICM, `cicm_module.WithCICM`). Frozen parameters (GM-SRM's pre-trained
generative memory) are part of a generator's parameter tree; `split_frozen` separates them so
they live in `TrainState.frozen`, outside the optimizer, and `merge_frozen` puts them back for
`apply`.
"""

import dataclasses
from typing import Any, Callable

import flax
import ml_collections

from gmsrm_jax import config_checks
from gmsrm_jax.models import base
from gmsrm_jax.models import cicm_module
from gmsrm_jax.models import gmsrm
from gmsrm_jax.models import unet_cicm
from gmsrm_jax.models.base import BaseInpaintingNet, composite, masked_input
from gmsrm_jax.models.cicm_module import WithCICM
from gmsrm_jax.models.discriminator import PatchDiscriminator
from gmsrm_jax.models.gmsrm import GMSRMNet
from gmsrm_jax.models.unet_cicm import UNet

_CICM_SUFFIX = "_cicm"


def _base(model_config):
  return BaseInpaintingNet(encoder_channels=tuple(model_config.encoder_channels),
                           stem_channels=model_config.stem_channels,
                           ca_reduction=model_config.ca_reduction,
                           output_skip=config_checks.added_field(model_config, "model.output_skip"),
                           **base.input_and_output_options(model_config))


def _bottleneck_of_encoder(model_config) -> str:
  return f"encoder/block_{len(model_config.encoder_channels) - 1}"


def _encoder_downsamplings(model_config) -> int:
  return len(model_config.encoder_channels)


# name -> (builder, path of its lowest-resolution feature map: where CICM plugs in, number of
# stride-2 layers between the image and that map).
_BACKBONES: dict[str, tuple[Callable, Callable, Callable]] = {
    "base": (_base, _bottleneck_of_encoder, _encoder_downsamplings),
    "unet": (lambda c: UNet(channels=tuple(c.unet_channels), **base.input_and_output_options(c)),
             lambda c: unet_cicm.FEATURE_MODULE, lambda c: len(c.unet_channels) - 1),
    "gmsrm": (gmsrm.create, _bottleneck_of_encoder, _encoder_downsamplings),
}
# Backbones that run at their trained size only: GM-SRM's generative memory is a StyleGAN
# synthesis network that grows square feature maps of fixed sizes from a learned 4x4 constant.
_FIXED_SIZE = ("gmsrm",)


@dataclasses.dataclass(frozen=True)
class Geometry:
  """The image sizes a generator accepts.

  stride: height and width must be multiples of it (the skip connections concatenate maps
    that halve and double `log2(stride)` times; CICM's regions tile the lowest map).
  fixed_size: the one (square) size the model runs at, or None for any multiple of stride.
  """
  stride: int
  fixed_size: int | None = None


def _backbone(model_config: ml_collections.ConfigDict) -> tuple[Callable, Callable, Callable]:
  name = model_config.name
  backbone_name = name.removesuffix(_CICM_SUFFIX)
  if backbone_name not in _BACKBONES:
    known = sorted([*_BACKBONES, *(f"{b}{_CICM_SUFFIX}" for b in _BACKBONES)])
    raise ValueError(f"Unknown model.name {name!r}; known: {known}.")
  return _BACKBONES[backbone_name]


def input_geometry(model_config: ml_collections.ConfigDict, trained_size: int) -> Geometry:
  """The sizes the generator of `model_config` (trained on `trained_size`² crops) accepts."""
  _, _, downsamplings = _backbone(model_config)
  fixed = model_config.name.removesuffix(_CICM_SUFFIX) in _FIXED_SIZE
  return Geometry(stride=2 ** downsamplings(model_config),
                  fixed_size=trained_size if fixed else None)


def shape_polymorphic(model_config: ml_collections.ConfigDict) -> bool:
  """Whether the generator traces with symbolic image sizes (jax.export): not with the pyramid
  prior, whose number of levels depends on the size."""
  return (model_config.name.removesuffix(_CICM_SUFFIX) not in _FIXED_SIZE
          and base.input_and_output_options(model_config)["hole_fill"] == "zero")


def create_generator(model_config: ml_collections.ConfigDict):
  build, feature_module, _ = _backbone(model_config)
  with_cicm = model_config.name.endswith(_CICM_SUFFIX)
  backbone = build(model_config)
  if not with_cicm:
    return backbone
  return WithCICM(backbone=backbone,
                  feature_module=model_config.cicm.feature_module or feature_module(model_config),
                  cicm=cicm_module.create_memory(model_config.cicm))


def create_discriminator(disc_config: ml_collections.ConfigDict):
  return PatchDiscriminator(channels=tuple(disc_config.channels),
                            logit_bias=disc_config.get("logit_bias", True))


def split_frozen(params: Any) -> tuple[Any, Any]:
  """Generator params -> (trainable, frozen); frozen is {} for models without frozen parts."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  trainable = {k: v for k, v in flat.items() if not gmsrm.is_frozen_param(k)}
  frozen = {k: v for k, v in flat.items() if gmsrm.is_frozen_param(k)}
  return (flax.traverse_util.unflatten_dict(trainable),
          flax.traverse_util.unflatten_dict(frozen))


def merge_frozen(trainable: Any, frozen: Any) -> Any:
  """Inverse of `split_frozen`: the full parameter tree `apply` needs."""
  if not frozen:
    return trainable
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(trainable))
  flat.update(flax.traverse_util.flatten_dict(flax.core.unfreeze(frozen)))
  return flax.traverse_util.unflatten_dict(flat)


def load_frozen(model_config: ml_collections.ConfigDict, abstract_frozen: Any, sharding) -> Any:
  """The pre-trained frozen parameters a fresh run starts from (file I/O, outside jit).

  Models without frozen parts return {}; GM-SRM loads the stage-1 memory its config names.
  """
  if not flax.traverse_util.flatten_dict(abstract_frozen):
    return {}
  return gmsrm.load_frozen(model_config, abstract_frozen, sharding)


__all__ = ["BaseInpaintingNet", "GMSRMNet", "Geometry", "PatchDiscriminator", "UNet", "WithCICM",
           "composite", "create_discriminator", "create_generator", "input_geometry",
           "load_frozen", "masked_input", "merge_frozen", "split_frozen"]
