"""GM-SRM stage 2's equations in the network, each against an independent computation:
eq. 9's KL (closed form and Monte Carlo), eq. 8's sampled noise, eq. 7's recursion (a
hand-written loop over the recorded decoder features), and the Table IV switches."""

import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import gmsrm as gmsrm_config
from gmsrm_jax import config_checks
from gmsrm_jax import losses
from gmsrm_jax import models
from gmsrm_jax import objectives
from gmsrm_jax import weights
from gmsrm_jax.models import gmsrm
from gmsrm_jax.models.base import Decoder, Encoder
import reference_nets as ref  # tests/ is on the path under pytest.

# 32x32 images, encoder widths (4, 8): decoder inputs at 8 (bottleneck) and 16, output 32.
# Memory blocks at 4 (coarser than the bottleneck), 8 and 16; none at 32.
IMAGE = 32
W_DIM = 8


def _net(conditional_noise=True, progressive=True, kl_layer_weights=()):
  memory = gmsrm.GenerativeMemory(resolution=16, start_resolution=4, channel_base=64,
                                  channel_max=8, w_dim=W_DIM)
  return gmsrm.GMSRMNet(encoder_channels=(4, 8), stem_channels=4, generative_memory=memory,
                        ca_reduction=4, conditional_noise=conditional_noise,
                        progressive=progressive, head_channels=4,
                        kl_layer_weights=kl_layer_weights)


def _inputs(batch=2):
  key = jax.random.key(0)
  image = jax.random.uniform(key, (batch, IMAGE, IMAGE, 3), minval=-1, maxval=1)
  mask = (jax.random.uniform(jax.random.fold_in(key, 1), (batch, IMAGE, IMAGE, 1)) < 0.3
          ).astype(jnp.float32)
  return image, mask


def _params(net, image, mask):
  params = net.init({"params": jax.random.key(1), "noise": jax.random.key(2)}, image, mask)[
      "params"]
  # A non-zero w_avg, so the test sees whether eq. 3 adds it.
  params["generative_memory"]["w_avg"] = jnp.linspace(-1.0, 1.0, W_DIM)
  return params


def _record(net, params, image, mask, seed=3):
  """Runs the net and records every memory-block call, decoder-level output and encoder output."""
  calls = {"blocks": [], "levels": {}, "encoder": None}

  def spy(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, gmsrm.GenerativeMemory) and context.method_name == "block":
      index, _, _, latent, noise, encoder_features = args
      calls["blocks"].append({"index": index, "latent": latent, "noise": noise,
                              "encoder_features": encoder_features})
    elif isinstance(context.module, Decoder) and context.method_name == "level":
      calls["levels"][args[0]] = out
    elif isinstance(context.module, Encoder) and context.method_name == "__call__":
      calls["encoder"] = out
    return out

  with nn.intercept_methods(spy):
    (prediction, aux), _ = net.apply({"params": params}, image, mask,
                                     rngs={"noise": jax.random.key(seed)},
                                     mutable=[gmsrm.DIAGNOSTICS])
  return prediction, aux, calls


def _f_c(params, x, level):
  """f_c by hand: 3x3 SAME conv + bias, leaky ReLU 0.2, spatial mean, the shared FC."""
  conv = params[f"query_conv_{level}"]
  h = jax.lax.conv_general_dilated(x, conv["kernel"], (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC")) + conv["bias"]
  h = jnp.mean(jnp.where(h > 0, h, 0.2 * h), axis=(1, 2))
  return h @ params["query_fc"]["kernel"] + params["query_fc"]["bias"]


def test_kl_matches_closed_form_and_monte_carlo():
  mu = np.array([0.0, 0.7, -1.3, 2.0])
  sigma = np.array([1.0, 0.5, 1.8, 0.2])
  kl = np.asarray(gmsrm.kl_to_standard_normal(jnp.asarray(mu), jnp.asarray(np.log(sigma))))
  # Textbook closed form: log(1/sigma) + (sigma^2 + mu^2) / 2 - 1/2.
  np.testing.assert_allclose(kl, np.log(1 / sigma) + (sigma**2 + mu**2) / 2 - 0.5, rtol=1e-6,
                             atol=1e-7)
  # Monte Carlo: E_q[log q(x) - log p(x)], x ~ N(mu, sigma^2).
  x = mu + sigma * np.random.default_rng(0).standard_normal((400_000, 4))
  log_q = -0.5 * ((x - mu) / sigma)**2 - np.log(sigma)
  log_p = -0.5 * x**2
  np.testing.assert_allclose(np.mean(log_q - log_p, axis=0), kl, atol=0.02)
  assert kl[0] == 0.0


def test_progressive_reasoning_follows_eq7_and_gm_bm_queries_with_c1():
  image, mask = _inputs()
  for progressive in (True, False):
    net = _net(progressive=progressive)
    params = _params(net, image, mask)
    _, _, calls = _record(net, params, image, mask)
    bottleneck = calls["encoder"][2]
    c1 = params["generative_memory"]["w_avg"] + _f_c(params, bottleneck, 2)  # Eq. 3.
    assert [c["index"] for c in calls["blocks"]] == [0, 1, 2]
    # Block 0 (4x4, coarser than the decoder) and block 1 (the bottleneck's 8x8) use c^1.
    np.testing.assert_allclose(calls["blocks"][0]["latent"], c1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(calls["blocks"][1]["latent"], c1, rtol=1e-5, atol=1e-6)
    # Block 2 (16x16) reads F_D^1, the first decoder block's output: c^2 = f_c(F_D^1) + c^1.
    c2 = c1 + _f_c(params, calls["levels"][1], 1) if progressive else c1
    np.testing.assert_allclose(calls["blocks"][2]["latent"], c2, rtol=1e-5, atol=1e-6)
    assert np.allclose(c1, c2) != progressive
    assert ("query_conv_1" in params) == progressive
    # F_E enters every block at a decoder resolution, none coarser.
    assert calls["blocks"][0]["encoder_features"] is None
    np.testing.assert_array_equal(calls["blocks"][2]["encoder_features"], calls["encoder"][1])


def test_conditional_noise_follows_the_predicted_distribution_and_feeds_the_kl():
  image, mask = _inputs(batch=4)
  net = _net()
  params = _params(net, image, mask)
  # The noise head's FC starts at zero (N(0, 1)); give its bias chosen mu and log sigma.
  wanted = {}
  for r, layers in ((4, 1), (8, 2), (16, 2)):
    width = 8 if r < 16 else 4
    rng = np.random.default_rng(r)
    mu = rng.uniform(-2, 2, (layers, width))
    log_sigma = rng.uniform(-1.0, 0.7, (layers, width))
    params[f"noise_fc_{r}"]["bias"] = jnp.asarray(
        np.stack([mu, log_sigma], axis=1).reshape(-1), jnp.float32)
    wanted[r] = (mu, np.exp(log_sigma))
  _, aux, calls = _record(net, params, image, mask)
  expected_kl = []
  for call, r in zip(calls["blocks"], (4, 8, 16)):
    mu, sigma = wanted[r]
    assert len(call["noise"]) == len(mu)
    for j, noise in enumerate(call["noise"]):
      samples = np.asarray(noise).reshape(-1, noise.shape[-1])  # [B*r*r, C]: per channel.
      stderr = sigma[j] / np.sqrt(samples.shape[0])
      assert np.all(np.abs(samples.mean(0) - mu[j]) < 5 * stderr + 1e-6), r
      np.testing.assert_allclose(samples.std(0), sigma[j], rtol=0.25 if r == 4 else 0.12)
      expected_kl.append(np.mean(np.log(1 / sigma[j]) + (sigma[j]**2 + mu[j]**2) / 2 - 0.5))
  # Eq. 9 with the default weights 1/(number of layers).
  np.testing.assert_allclose(aux["kl"], np.mean(expected_kl), rtol=1e-5)

  weights = (0.5, 1.0, 0.0, 2.0, 3.0)
  net = _net(kl_layer_weights=weights)
  _, aux, _ = _record(net, params, image, mask)
  np.testing.assert_allclose(aux["kl"], np.dot(weights, expected_kl), rtol=1e-5)
  with pytest.raises(ValueError, match="kl_layer_weights has 2 entries"):
    _record(_net(kl_layer_weights=(1.0, 1.0)), params, image, mask)


def test_gm_bm_uses_standard_noise_and_reports_no_kl():
  image, mask = _inputs()
  net = _net(conditional_noise=False, progressive=False)
  _, aux, calls = _record(net, _params(net, image, mask), image, mask)
  assert aux == {}
  for call in calls["blocks"]:
    for noise in call["noise"]:
      assert noise.shape[-1] == 1  # StyleGAN's single-channel noise, as in stage 1.


def test_frozen_split_keeps_only_the_adapters_of_the_memory_trainable():
  image, mask = _inputs()
  params = _params(_net(), image, mask)
  trainable, frozen = models.split_frozen(params)
  paths = lambda tree: {jax.tree_util.keystr(p)
                        for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}
  flat_frozen, flat_trainable = paths(frozen), paths(trainable)
  assert flat_frozen and all("generative_memory" in p and "encoder_fusion" not in p
                             for p in flat_frozen)
  assert any("encoder_fusion" in p for p in flat_trainable)
  assert not any("generative_memory" in p and "encoder_fusion" not in p for p in flat_trainable)
  merged = models.merge_frozen(trainable, frozen)
  assert jax.tree.structure(merged) == jax.tree.structure(params)


def test_the_memory_is_built_in_the_upsampling_form_of_its_stage1_config():
  for variant in ("tiny", "places2"):
    config = gmsrm_config.get_config(variant)
    stage1 = gmsrm_config.stage1_config(config.model.memory.stage1_config)
    assert config.model.memory.architecture.upsample == stage1.model.upsample == "transposed"
    assert gmsrm.create(config.model).generative_memory.upsample == "transposed"
  # A stage-2 config saved before the field existed: its memory was built the old way.
  del config.model.memory.architecture.upsample
  assert gmsrm.create(config.model).generative_memory.upsample == "fir_then_conv"
  config.model.memory.architecture.upsample = "bilinear"
  with pytest.raises(config_checks.ConfigError, match="memory.architecture.upsample"):
    config_checks.validate(config)


def test_eq14_weights_every_term_with_converted_vgg19(tmp_path):
  """λ1 L_rec + λ2 L_perc + λ3 L_adv + λ4 L_KL, the perceptual term from VGG-19 weights in
  the published layout passed through the real converter."""
  source, output = str(tmp_path / "published.npz"), str(tmp_path / "vgg19.npz")
  state_dict = ref.RandomStateDict(seed=3)
  ref.vgg_features(state_dict, np.zeros((1, 3, 32, 32)), ref.VGG19_CFG, stop_index=36)
  np.savez(source, **state_dict.arrays)
  weights.convert("vgg19", [source], output)
  config = gmsrm_config.get_config("places2")
  assert (config.loss.rec_weight, config.loss.perceptual_weight, config.loss.adv_weight,
          config.loss.kl_weight) == (1.0, 0.1, 0.01, 0.01)  # §III-D.
  config.loss.vgg19_weights = output
  networks = objectives.loss_networks(config.loss)
  objective = objectives.get(config.loss)
  image, mask = _inputs()
  prediction = jnp.tanh(image + 0.3)
  terms = objective.generator_terms(image=image, mask=mask, prediction=prediction,
                                    real_logits=jnp.ones(4), fake_logits=jnp.full(4, 0.5),
                                    loss_networks=networks)
  np.testing.assert_allclose(terms["perceptual"],
                             losses.perceptual_loss(networks["vgg19"], prediction, image),
                             rtol=1e-6)
  assert float(terms["perceptual"]) > 0
  terms["kl"] = jnp.asarray(3.0)
  rec = terms["rec_known"] + 10.0 * terms["rec_hole"]  # Eq. 10, gamma = 10.
  np.testing.assert_allclose(
      objective.generator_total(terms, config.loss),
      rec + 0.1 * terms["perceptual"] + 0.01 * -0.5 + 0.01 * 3.0, rtol=1e-6)
  # λ2 = 0 (CPU configs): no VGG-19 is loaded and the term is absent.
  config.loss.perceptual_weight = 0.0
  assert objectives.loss_networks(config.loss) == {}


def test_model_packages_do_not_import_the_training_code():
  """Layering: the memory and the models load without gmsrm_jax.train (or optax)."""
  script = ("import sys; import gmsrm_jax.stylegan, gmsrm_jax.models\n"
            "loaded = [m for m in sys.modules if m.startswith('gmsrm_jax.train') or\n"
            "          m.split('.')[0] == 'optax']\n"
            "assert not loaded, loaded\n")
  subprocess.run([sys.executable, "-c", script], check=True)
