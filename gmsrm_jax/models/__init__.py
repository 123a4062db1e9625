"""Model registry: configs name a generator and a discriminator, this builds them."""

import ml_collections

from gmsrm_jax.models.base import BaseInpaintingNet, composite, masked_input
from gmsrm_jax.models.discriminator import PatchDiscriminator


def create_generator(model_config: ml_collections.ConfigDict):
  if model_config.name == "base":
    return BaseInpaintingNet(encoder_channels=tuple(model_config.encoder_channels),
                             stem_channels=model_config.stem_channels,
                             ca_reduction=model_config.ca_reduction)
  raise ValueError(f"Unknown model.name {model_config.name!r}; known: 'base'.")


def create_discriminator(disc_config: ml_collections.ConfigDict):
  return PatchDiscriminator(channels=tuple(disc_config.channels))


__all__ = ["BaseInpaintingNet", "PatchDiscriminator", "composite", "create_discriminator",
           "create_generator", "masked_input"]
