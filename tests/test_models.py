"""Shapes and equation-level behaviour of the base network, discriminator and losses."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmsrm_jax import losses
from gmsrm_jax import models
from gmsrm_jax.models import base
from gmsrm_jax.models import layers


def test_channel_attention_matches_squeeze_excitation():
  x = jax.random.normal(jax.random.key(0), (2, 5, 5, 8))
  module = layers.ChannelAttention(reduction=4)
  variables = module.init(jax.random.key(1), x)
  p = variables["params"]
  pooled = np.asarray(x).mean(axis=(1, 2))
  hidden = np.maximum(pooled @ np.asarray(p["squeeze"]["kernel"]) + np.asarray(p["squeeze"]["bias"]), 0)
  scale = 1 / (1 + np.exp(-(hidden @ np.asarray(p["excite"]["kernel"]) + np.asarray(p["excite"]["bias"]))))
  np.testing.assert_allclose(module.apply(variables, x), np.asarray(x) * scale[:, None, None],
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size,widths", [(32, (8, 16)), (64, (8, 16, 32))])
def test_base_net_shapes_and_range(size, widths):
  net = models.BaseInpaintingNet(encoder_channels=widths, stem_channels=4, ca_reduction=2)
  image = jax.random.uniform(jax.random.key(0), (2, size, size, 3), minval=-1, maxval=1)
  mask = jnp.zeros((2, size, size, 1)).at[:, 4:12, 4:12].set(1.0)
  variables = net.init(jax.random.key(1), image, mask)
  prediction, aux = net.apply(variables, image, mask)
  assert prediction.shape == image.shape and aux == {}
  assert float(jnp.max(jnp.abs(prediction))) <= 1.0
  encoder_shapes = [f.shape for f in models.base.Encoder(widths, 4, 2).apply(
      {"params": variables["params"]["encoder"]}, models.masked_input(image, mask))]
  assert encoder_shapes == [(2, size >> i, size >> i, c) for i, c in enumerate((4, *widths))]


@pytest.mark.parametrize("hole_fill,residual", [("zero", False), ("pyramid", True)])
def test_base_net_ignores_hole_pixels(hole_fill, residual):
  """The hole content is zeroed (or replaced by the fill of the known pixels) before the
  encoder, so it cannot leak into the prediction."""
  net = models.BaseInpaintingNet(encoder_channels=(8, 16), stem_channels=4, ca_reduction=2,
                                 hole_fill=hole_fill, residual_output=residual)
  image = jax.random.uniform(jax.random.key(0), (1, 32, 32, 3), minval=-1, maxval=1)
  mask = jnp.zeros((1, 32, 32, 1)).at[:, 8:20, 8:20].set(1.0)
  other = image.at[:, 8:20, 8:20].set(0.7)
  variables = net.init(jax.random.key(1), image, mask)
  np.testing.assert_array_equal(net.apply(variables, image, mask)[0],
                                net.apply(variables, other, mask)[0])


def test_pyramid_fill():
  fill = jax.jit(base.pyramid_fill)
  image = jax.random.uniform(jax.random.key(0), (2, 37, 53, 3), minval=-1, maxval=1)
  # No holes: the image itself, at odd sizes too.
  np.testing.assert_allclose(fill(image, jnp.zeros((2, 37, 53, 1))), image, atol=1e-6)
  # A constant image stays constant whatever the holes.
  mask = (jax.random.uniform(jax.random.key(1), (2, 37, 53, 1)) < 0.5).astype(jnp.float32)
  np.testing.assert_allclose(fill(jnp.full_like(image, 0.3), mask), 0.3, atol=1e-5)
  # Smooth content is continued smoothly into a hole (a horizontal ramp, a 10-px-wide hole).
  ramp = jnp.broadcast_to(jnp.linspace(-1, 1, 64)[None, None, :, None], (1, 64, 64, 3))
  hole = jnp.zeros((1, 64, 64, 1)).at[:, 20:40, 27:37].set(1.0)
  filled = fill(ramp, hole)
  assert float(jnp.max(jnp.abs(filled - ramp) * hole)) < 0.15  # The ramp steps 0.032 per px.
  # Known pixels of the network's prior are the image's, exactly; nothing of the holes leaks.
  encoder_input, prior = base.network_input(image, mask, "pyramid")
  known = np.broadcast_to(np.asarray(mask) == 0, image.shape)
  np.testing.assert_array_equal(np.asarray(prior)[known], np.asarray(image)[known])
  np.testing.assert_array_equal(encoder_input[..., 3:], mask)
  other = image * (1 - mask) + 0.9 * mask
  np.testing.assert_array_equal(base.network_input(other, mask, "pyramid")[1], prior)


def test_the_priors_neighbour_sum_repeats_the_border():
  """The fused form (zero pad + border count) is numpy's edge-padded 4-neighbour sum, also
  on the one-pixel-high levels of a wide image's pyramid."""
  for shape in [(2, 5, 7, 3), (1, 1, 4, 3)]:
    x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    expected = (padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2]
                + padded[:, 1:-1, 2:])
    np.testing.assert_allclose(base._neighbour_sum(x), expected, atol=1e-6)  # pylint: disable=protected-access


def test_biharmonic_relaxation_of_the_pyramid_fill():
  """The Richardson steps move the fill towards scikit-image's biharmonic inpainting (an
  independent solver) on a curved surface, where a harmonic fill sags; known pixels stay."""
  from skimage.restoration import inpaint_biharmonic  # pylint: disable=g-import-not-at-top
  x = jnp.linspace(-1, 1, 64)
  bowl = jnp.broadcast_to((x[None, :]**2 + 0.5 * x[:, None]**2 - 0.5)[None, :, :, None],
                          (1, 64, 64, 3))
  hole = jnp.zeros((1, 64, 64, 1)).at[:, 14:42, 20:44].set(1.0)
  in_hole = np.broadcast_to(np.asarray(hole[0]) > 0, (64, 64, 3))
  reference = inpaint_biharmonic(np.array(bowl[0]), in_hole[..., 0].copy(), channel_axis=-1)
  fill = jax.jit(base.pyramid_fill, static_argnums=(2, 3))
  error = lambda steps: np.abs(np.asarray(fill(bowl, hole, 32, steps))[0] - reference)[in_hole]
  harmonic, relaxed = error(0), error(256)
  # Measured: max 0.153 -> 0.095, mean error about halved.
  assert relaxed.max() < 0.75 * harmonic.max() and relaxed.mean() < 0.7 * harmonic.mean()
  image = jax.random.uniform(jax.random.key(0), (2, 37, 53, 3), minval=-1, maxval=1)
  mask = (jax.random.uniform(jax.random.key(1), (2, 37, 53, 1)) < 0.6).astype(jnp.float32)
  filled = np.asarray(fill(image, mask, 32, 256))
  assert np.all(np.abs(filled) < 2.0)  # Stable on noise (overshoot is biharmonic's own).
  known = np.broadcast_to(np.asarray(mask) == 0, image.shape)
  np.testing.assert_allclose(filled[known], np.asarray(image)[known], atol=1e-6)


def test_residual_output_starts_at_the_prior():
  net = models.BaseInpaintingNet(encoder_channels=(8, 16), stem_channels=4, ca_reduction=2,
                                 hole_fill="pyramid", residual_output=True)
  image = jax.random.uniform(jax.random.key(0), (1, 32, 32, 3), minval=-1, maxval=1)
  mask = jnp.zeros((1, 32, 32, 1)).at[:, 8:20, 8:20].set(1.0)
  prediction, _ = net.apply(net.init(jax.random.key(1), image, mask), image, mask)
  np.testing.assert_array_equal(prediction, base.network_input(image, mask, "pyramid")[1])
  wrong = models.BaseInpaintingNet(encoder_channels=(8, 16), stem_channels=4,
                                   residual_output=True)
  with pytest.raises(ValueError, match="hole_fill='pyramid'"):
    wrong.init(jax.random.key(1), image, mask)


def test_composite_keeps_known_pixels():
  image = jnp.full((1, 4, 4, 3), 0.5)
  prediction = jnp.full((1, 4, 4, 3), -0.25)
  mask = jnp.zeros((1, 4, 4, 1)).at[:, :2].set(1.0)
  out = models.composite(prediction, image, mask)
  np.testing.assert_array_equal(out[:, :2], -0.25)
  np.testing.assert_array_equal(out[:, 2:], 0.5)


def test_discriminator_is_spectrally_normalised():
  disc = models.PatchDiscriminator(channels=(8, 16))
  image = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  mask = jnp.ones((2, 32, 32, 1))
  variables = disc.init(jax.random.key(1), image, mask, update_stats=False)
  for _ in range(30):  # Power iteration converges to the top singular value.
    _, updated = disc.apply(variables, image, mask, update_stats=True, mutable=["batch_stats"])
    variables = {**variables, **updated}
  kernel = np.asarray(variables["params"]["sn_0"]["conv_0"]["kernel"]) if "sn_0" in variables[
      "params"] else np.asarray(variables["params"]["conv_0"]["kernel"])
  sigma = np.linalg.svd(kernel.reshape(-1, kernel.shape[-1]), compute_uv=False)[0]
  stored = float(variables["batch_stats"]["sn_0"]["conv_0/kernel/sigma"])
  np.testing.assert_allclose(stored, sigma, rtol=1e-3)
  assert disc.apply(variables, image, mask, update_stats=False).shape == (2, 8, 8)


def test_reconstruction_losses_split_known_and_hole():
  target = jnp.zeros((1, 2, 2, 1))
  prediction = jnp.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 2, 2, 1)
  mask = jnp.array([1.0, 0.0, 0.0, 1.0]).reshape(1, 2, 2, 1)
  terms = losses.reconstruction_losses(prediction, target, mask)
  np.testing.assert_allclose(terms["rec_hole"], (1 + 4) / 4)
  np.testing.assert_allclose(terms["rec_known"], (2 + 3) / 4)
  np.testing.assert_allclose(losses.reconstruction_loss(terms, 10.0), 5 / 4 + 10 * 5 / 4)


def test_hinge_losses():
  real = jnp.array([2.0, 0.5])
  fake = jnp.array([-2.0, 0.5])
  np.testing.assert_allclose(losses.discriminator_hinge_loss(real, fake), 0.25 + 0.75)
  np.testing.assert_allclose(losses.generator_adversarial_loss(fake), 0.75)


@pytest.mark.parametrize("shape", [(3, 3, 8, 16), (7, 7, 4, 32), (64, 8), (1, 1, 5, 1)])
def test_flat_drawn_kernel_init_equals_flax_default(shape):
  """The cheaper-to-compile initializer gives flax's lecun_normal values bit for bit."""
  key = jax.random.key(3)
  np.testing.assert_array_equal(layers.lecun_normal_flat(key, shape),
                                nn.initializers.lecun_normal()(key, shape))
