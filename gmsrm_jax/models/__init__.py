"""Model registry: configs name a generator and a discriminator, this builds them."""

import ml_collections

from gmsrm_jax.models import cicm_module
from gmsrm_jax.models import unet_cicm
from gmsrm_jax.models.base import BaseInpaintingNet, composite, masked_input
from gmsrm_jax.models.cicm_module import WithCICM
from gmsrm_jax.models.discriminator import PatchDiscriminator
from gmsrm_jax.models.unet_cicm import UNet

_CICM_SUFFIX = "_cicm"  # "<backbone>_cicm": the backbone equipped with CICM (cicm_module).


def _backbone(name: str, model_config: ml_collections.ConfigDict):
  """(module, path of its lowest-resolution feature map) for a backbone name."""
  if name == "base":
    widths = tuple(model_config.encoder_channels)
    return (BaseInpaintingNet(encoder_channels=widths, stem_channels=model_config.stem_channels,
                              ca_reduction=model_config.ca_reduction),
            f"encoder/block_{len(widths) - 1}")
  if name == "unet":
    return UNet(channels=tuple(model_config.unet_channels)), unet_cicm.FEATURE_MODULE
  raise ValueError(f"Unknown model.name {model_config.name!r}; known: 'base', 'unet', "
                   "'base_cicm', 'unet_cicm'.")


def create_generator(model_config: ml_collections.ConfigDict):
  name = model_config.name
  with_cicm = name.endswith(_CICM_SUFFIX)
  backbone, feature_module = _backbone(name.removesuffix(_CICM_SUFFIX), model_config)
  if not with_cicm:
    return backbone
  return WithCICM(backbone=backbone,
                  feature_module=model_config.cicm.feature_module or feature_module,
                  cicm=cicm_module.create_memory(model_config.cicm))


def create_discriminator(disc_config: ml_collections.ConfigDict):
  return PatchDiscriminator(channels=tuple(disc_config.channels),
                            logit_bias=disc_config.get("logit_bias", True))


__all__ = ["BaseInpaintingNet", "PatchDiscriminator", "UNet", "WithCICM", "composite",
           "create_discriminator", "create_generator", "masked_input"]
