"""Inpainting losses of GM-SRM (eqs. 10-13). Images in [-1, 1], masks 1 = hole."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from gmsrm_jax import metrics
from gmsrm_jax import precision
from gmsrm_jax.features import vgg19


def reconstruction_losses(prediction: jax.Array, target: jax.Array, mask: jax.Array
                          ) -> dict[str, jax.Array]:
  """The two L1 terms of eq. 10, each a mean over all pixels and channels of the batch.

  Normalising both terms by the full image size (as PConv's L_valid / L_hole do) keeps the
  weight gamma meaningful: a larger hole contributes proportionally more hole loss.
  """
  abs_error = jnp.abs(prediction - target)
  return {
      "rec_known": jnp.mean(abs_error * (1.0 - mask)),
      "rec_hole": jnp.mean(abs_error * mask),
  }


def reconstruction_loss(losses: dict[str, jax.Array], gamma: float) -> jax.Array:
  """L_rec = L_known-L1 + gamma * L_corrupted-L1 (eq. 10, gamma = 10 in the paper)."""
  return losses["rec_known"] + gamma * losses["rec_hole"]


def structural_loss(completed: jax.Array, target: jax.Array) -> jax.Array:
  """1 - SSIM of the composited output, the batch mean: the evaluation's own SSIM
  (metrics.ssim, Wang et al. 2004) as a loss, as in Zhao et al. 2017's mixed L1 + (MS-)SSIM
  restoration loss. Neither paper has it; config.loss.ssim_weight enables it (DESIGN Q14)."""
  return 1.0 - jnp.mean(metrics.ssim(metrics.to_unit(completed), metrics.to_unit(target),
                                     centred_moments=False))


def generator_adversarial_loss(fake_logits: jax.Array) -> jax.Array:
  """Eq. 12: L_adv = -E[D(G(I))]."""
  return -jnp.mean(fake_logits)


def discriminator_hinge_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """Eq. 13 read as the hinge loss of SN-GANs: E[relu(1 - D(real))] + E[relu(1 + D(fake))].

  Eq. 13 as printed is linear in D and unbounded; with eq. 12 as the generator loss and a
  spectral-normalised D (ref. [45]) it is the hinge loss that is meant (see docs/DESIGN.md).
  """
  return jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits))


def perceptual_loss(vgg_params, prediction: jax.Array, target: jax.Array,
                    layers: Sequence[str] = vgg19.PERCEPTUAL_LAYERS) -> jax.Array:
  """Eq. 11: sum over VGG-19 layers l of ||f_l(pred) - f_l(GT)||_1 / (C_l H_l W_l), batch mean.

  `vgg_params` are the frozen VGG-19 weights (`gmsrm_jax.weights.load("vgg19", path)`), passed
  in rather than trained. Images in [-1, 1]; both go through the network in one call. The
  target's features get no gradient (the ground truth is data, not a function of G). The
  network runs in its weights' dtype; the distances are reduced in float32.
  """
  features = vgg19.vgg19_features(vgg_params, jnp.concatenate([prediction, target]), layers)
  loss = 0.0
  for name in layers:
    pred_features, target_features = jnp.split(precision.at_least_float32(features[name]), 2)
    # mean over (B, H, W, C) = batch mean of the per-image 1/(C H W)-normalised L1 norms.
    loss = loss + jnp.mean(jnp.abs(pred_features - jax.lax.stop_gradient(target_features)))
  return loss
