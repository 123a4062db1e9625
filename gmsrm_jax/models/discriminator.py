"""Spectral-normalised conditional PatchGAN discriminator (GM-SRM eqs. 12-13, ref. [45]).

Conditioned on the mask: it sees Concat[image, mask], as SN-PatchGAN in DeepFill v2, so it can
judge the filled region against its known surroundings. Spectral-norm power-iteration vectors
live in the `batch_stats` collection; they depend on the weights only, never on the batch, so
they are identical on every device without any cross-device reduction.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from gmsrm_jax.models import layers


class PatchDiscriminator(nn.Module):
  channels: Sequence[int]
  # A relativistic loss (CICM eq. 6) compares C(x) with E[C(y)], so a logit bias cancels and
  # gets an exactly zero gradient, which in float is rounding noise that Adam amplifies.
  logit_bias: bool = True

  @nn.compact
  def __call__(self, image: jax.Array, mask: jax.Array, *, update_stats: bool) -> jax.Array:
    x = jnp.concatenate([image, mask], axis=-1)
    # The power iteration runs in float32 (the stored statistics promote it); the normalised
    # kernel returns to the input's dtype, so a bfloat16 step convolves in bfloat16.
    spectral_norm = lambda layer, name: nn.SpectralNorm(layer, dtype=x.dtype, name=name)
    for i, features in enumerate(self.channels):
      conv = layers.Conv(features, (4, 4), strides=2, padding="SAME", name=f"conv_{i}")
      x = nn.leaky_relu(spectral_norm(conv, f"sn_{i}")(x, update_stats=update_stats), 0.2)
    head = layers.Conv(1, (3, 3), padding="SAME", use_bias=self.logit_bias, name="logits")
    return spectral_norm(head, "sn_logits")(x, update_stats=update_stats)[..., 0]
