"""StyleGAN2 objectives: non-saturating logistic GAN loss, R1 and path-length regularizers.

All means run over the batch given; under jit with the batch sharded on the mesh they are
global means, so every device applies the same update.
"""

from typing import Callable

import jax
import jax.numpy as jnp

from gmsrm_jax.stylegan import layers


def generator_loss(fake_logits: jax.Array) -> jax.Array:
  """Non-saturating logistic loss: E[softplus(-D(G(z)))] = -E[log sigmoid(D(G(z)))]."""
  return jnp.mean(jax.nn.softplus(-fake_logits))


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """E[softplus(D(G(z)))] + E[softplus(-D(x))]."""
  return jnp.mean(jax.nn.softplus(fake_logits)) + jnp.mean(jax.nn.softplus(-real_logits))


def r1_penalty(discriminate: Callable[[jax.Array], jax.Array], real: jax.Array) -> jax.Array:
  """Per-image ||grad_x D(x)||^2 on real images (Mescheder et al. 2018); [B].

  The gradient is of the batch sum of logits, as in StyleGAN2: with minibatch-std the logits
  of one image depend weakly on the others, and this is the penalty those implementations use.
  """
  grads = jax.grad(lambda x: jnp.sum(discriminate(x)))(real)
  return jnp.sum(jnp.square(grads), axis=(1, 2, 3))


def path_lengths(synthesize: Callable[[jax.Array], jax.Array], latents: jax.Array,
                 key: jax.Array) -> jax.Array:
  """||J_w^T y||_2 per sample for y ~ N(0, I) / sqrt(H W) (StyleGAN2 eq. 4); [B].

  `latents` [B, num_blocks, w_dim]; the squared norm is summed over w_dim and averaged over
  blocks, as StyleGAN2 does over its per-layer w copies. One forward and one VJP; an outer
  gradient differentiates through both.
  """
  image, vjp = jax.vjp(synthesize, latents)
  height, width = image.shape[1:3]
  noise = layers.standard_normal(key, image.shape, image.dtype) / jnp.sqrt(height * width)
  (grads,) = vjp(noise)
  return jnp.sqrt(jnp.mean(jnp.sum(jnp.square(grads), axis=2), axis=1))
