"""The StyleGAN2 memory's pieces against independent computations (StyleGAN2 eqs. 1-4)."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from gmsrm_jax import stylegan
from gmsrm_jax.stylegan import layers
from gmsrm_jax.stylegan import losses
from gmsrm_jax.stylegan import networks

TINY_MODEL = dict(z_dim=16, w_dim=16, resolution=16, start_resolution=4, channel_base=128,
                  channel_max=16, mapping_layers=2, mapping_lr_mul=0.01)


def _random_params(module, *args, **kwargs):
  """N(0, 1) parameters of `module`'s shapes, drawn on the host.

  The equalities tested below hold for any weights; flax's init would compile one threefry
  kernel per parameter (seconds on CPU) for nothing.
  """
  shapes = jax.eval_shape(module.init, {"params": jax.random.key(0), "noise": jax.random.key(0)},
                          *args, **kwargs)["params"]
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape), s.dtype), shapes)


def _per_sample_reference(x, kernel, styles, demodulate):
  """Conv of each sample with its own scaled weights, demodulation computed in float64."""
  outputs = []
  for b in range(x.shape[0]):
    weights = np.asarray(kernel, np.float64) * np.asarray(styles[b], np.float64)[None, None, :,
                                                                                 None]
    if demodulate:
      weights = weights / np.sqrt(np.sum(weights**2, axis=(0, 1, 2)) + 1e-8)
    outputs.append(layers.conv2d(x[b:b + 1], jnp.asarray(weights, jnp.float32)))
  return np.concatenate(outputs)


@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("fused", [False, True])
def test_modulated_conv_equals_per_sample_convolution(demodulate, fused):
  kx, kk, ks = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (3, 9, 9, 5))
  kernel = jax.random.normal(kk, (3, 3, 5, 7))
  styles = jax.random.normal(ks, (3, 5)) * 2.0 + 1.0
  got = jax.jit(lambda *a: layers.modulated_conv(*a, demodulate=demodulate, fused=fused))(
      x, kernel, styles)
  np.testing.assert_allclose(got, _per_sample_reference(x, kernel, styles, demodulate),
                             rtol=2e-5, atol=2e-5)


def _stylegan2_upsampling_reference(x, kernel, styles):
  """StyleGAN2's modulated upsampling conv, each sample alone in float64: modulated and
  demodulated weights; its stride-2 transposed conv (of the flipped kernel), i.e. zero
  insertion then the 'full' 3x3 cross-correlation, (2H+1) x (2W+1); then upfirdn2d's
  [1, 3, 3, 1] filter with gain 4 and pads (1, 1)."""
  x = np.asarray(x, np.float64)
  batch, height, width, channels = x.shape
  taps = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0 * 4.0
  outputs = []
  for b in range(batch):
    weights = np.asarray(kernel, np.float64) * np.asarray(styles[b], np.float64)[None, None, :,
                                                                                 None]
    weights = weights / np.sqrt(np.sum(weights**2, axis=(0, 1, 2)) + 1e-8)
    inserted = np.zeros((2 * height - 1, 2 * width - 1, channels))
    inserted[::2, ::2] = x[b]
    padded = np.pad(inserted, ((2, 2), (2, 2), (0, 0)))
    full = sum(padded[i:i + 2 * height + 1, j:j + 2 * width + 1] @ weights[i, j]
               for i in range(3) for j in range(3))
    full = np.pad(full, ((1, 1), (1, 1), (0, 0)))
    outputs.append(sum(taps[i, j] * full[i:i + 2 * height, j:j + 2 * width]
                       for i in range(4) for j in range(4)))
  return np.stack(outputs)


@pytest.mark.parametrize("fused", [False, True])
def test_upsampling_modulated_conv_is_stylegan2s_transposed_conv_and_filter(fused):
  rng = np.random.default_rng(30)
  x = rng.normal(size=(2, 5, 6, 3)).astype(np.float32)  # H != W: a swapped axis would show.
  kernel = rng.normal(size=(3, 3, 3, 4)).astype(np.float32)
  styles = (rng.normal(size=(2, 3)) * 2.0 + 1.0).astype(np.float32)

  @jax.jit
  def both_forms(x, kernel, styles):
    up = layers.modulated_conv(x, kernel, styles, fused=fused, up=True)
    # The form before issue #13: FIR upsampling, then the conv at the output resolution.
    after_fir = layers.modulated_conv(layers.upsample_2x(x), kernel, styles, fused=fused)
    return up, after_fir

  up, after_fir = both_forms(x, kernel, styles)
  assert up.shape == (2, 10, 12, 4)
  np.testing.assert_allclose(up, _stylegan2_upsampling_reference(x, kernel, styles),
                             rtol=1e-5, atol=1e-5)
  # The filters commute away from the border; on it the old form zero-pads the cropped map.
  np.testing.assert_allclose(up[:, 1:-1, 1:-1], after_fir[:, 1:-1, 1:-1], rtol=1e-5, atol=1e-5)
  for border in (up[:, 0] - after_fir[:, 0], up[:, :, -1] - after_fir[:, :, -1]):
    assert np.min(np.max(np.abs(border), axis=(1, 2))) > 1e-2


def test_demodulated_outputs_have_unit_variance_for_unit_variance_inputs():
  kx, kk, ks = jax.random.split(jax.random.key(1), 3)
  x = jax.random.normal(kx, (4, 48, 48, 32))
  kernel = jax.random.normal(kk, (3, 3, 32, 8)) * 5.0  # Any scale: demodulation removes it.
  styles = jax.random.uniform(ks, (4, 32), minval=0.1, maxval=3.0)
  y = layers.modulated_conv(x, kernel, styles, demodulate=True)[:, 1:-1, 1:-1]  # No padding.
  variance = np.var(np.asarray(y), axis=(1, 2))  # Per sample and output channel.
  np.testing.assert_allclose(variance, 1.0, atol=0.1)
  np.testing.assert_allclose(np.mean(variance), 1.0, atol=0.02)
  raw = layers.modulated_conv(x, kernel, styles, demodulate=False)[:, 1:-1, 1:-1]
  assert np.mean(np.var(np.asarray(raw), axis=(1, 2))) > 10.0  # Without it: far from 1.


def _fir_reference(x, gain, padding, stride=1, dilation=1):
  """upfirdn2d as a depthwise conv with the 4x4 [1, 3, 3, 1] outer-product kernel."""
  taps = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0 * gain
  kernel = jnp.asarray(np.tile(taps[:, :, None, None], (1, 1, 1, x.shape[-1])), x.dtype)
  return jax.lax.conv_general_dilated(
      x, kernel, (stride, stride), ((padding, padding),) * 2, lhs_dilation=(dilation,) * 2,
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1])


def test_fir_resampling_equals_the_2d_filter():
  x = jax.random.normal(jax.random.key(20), (2, 8, 6, 3))
  ones = jnp.ones((1, 8, 8, 1))

  @jax.jit
  def both(x, ones):
    ours = (layers.upsample_2x(x), layers.downsample_2x(x), layers.blur_for_strided_conv(x))
    references = (_fir_reference(x, 4.0, 2, dilation=2), _fir_reference(x, 1.0, 1, stride=2),
                  _fir_reference(x, 1.0, 2))
    return ours, references, layers.upsample_2x(ones), layers.downsample_2x(ones)

  ours, references, up, down = both(x, ones)
  for a, b in zip(ours, references):
    np.testing.assert_allclose(a, b, atol=1e-6)
  # Unit DC gain away from the zero-padded border.
  np.testing.assert_allclose(up[:, 1:-1, 1:-1], 1.0, rtol=1e-6)
  np.testing.assert_allclose(down[:, 1:-1, 1:-1], 1.0, rtol=1e-6)


def test_equalized_dense_scales_unit_weights_at_run_time():
  dense = layers.EqualDense(64, lr_mul=0.01)
  x = jax.random.normal(jax.random.key(2), (4096, 256))
  params = dense.init(jax.random.key(3), x)["params"]
  # Stored weights are N(0, 1/lr_mul); the effective ones N(0, 1/fan_in): unit in, unit out.
  assert 80 < np.std(params["kernel"]) < 120
  np.testing.assert_allclose(np.std(dense.apply({"params": params}, x)), 1.0, atol=0.05)


def test_minibatch_stddev_matches_explicit_groups():
  x = np.asarray(jax.random.normal(jax.random.key(4), (8, 3, 3, 4)))
  out = np.asarray(stylegan.minibatch_stddev(jnp.asarray(x), group_size=4, num_channels=2))
  assert out.shape == (8, 3, 3, 6)
  np.testing.assert_array_equal(out[..., :4], x)
  for m in range(2):  # Groups {m, m + 2, m + 4, m + 6}.
    members = x[m::2]
    std = np.sqrt(members.var(axis=0) + 1e-8)  # [3, 3, 4]
    expected = [std[..., :2].mean(), std[..., 2:].mean()]
    for member in range(m, 8, 2):
      np.testing.assert_allclose(out[member, :, :, 4:], np.broadcast_to(expected, (3, 3, 2)),
                                 rtol=1e-5)


def test_r1_penalty_equals_its_finite_difference_estimate():
  disc = networks.Discriminator(resolution=8, channel_base=32, channel_max=8,
                                mbstd_group_size=2)
  real = jax.random.normal(jax.random.key(5), (2, 8, 8, 3))
  params = _random_params(disc, real)
  with jax.enable_x64(True):
    params64 = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params)
    real64 = jnp.asarray(real, jnp.float64)
    discriminate = lambda x: disc.apply({"params": params64}, x)
    got = jax.jit(losses.r1_penalty, static_argnums=0)(discriminate, real64)

    @jax.jit
    def central_differences(x):
      eps = 1e-6
      total = lambda x: jnp.sum(discriminate(x))
      basis = jnp.eye(x.size, dtype=x.dtype).reshape(-1, *x.shape)
      return jax.vmap(lambda e: (total(x + eps * e) - total(x - eps * e)) / (2 * eps))(basis)

    grads = central_differences(real64).reshape(real64.shape)
    expected = jnp.sum(grads**2, axis=(1, 2, 3))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert np.all(np.asarray(got) > 0)


def test_path_lengths_of_a_linear_synthesis():
  # For image = A @ latents, J^T y = A^T y exactly.
  key_a, key_w, key_y = jax.random.split(jax.random.key(7), 3)
  matrix = jax.random.normal(key_a, (4 * 4 * 3, 2 * 5))
  synthesize = lambda lat: (lat.reshape(lat.shape[0], -1) @ matrix.T).reshape(-1, 4, 4, 3)
  latents = jax.random.normal(key_w, (3, 2, 5))
  got = jax.jit(losses.path_lengths, static_argnums=0)(synthesize, latents, key_y)
  y = layers.standard_normal(key_y, (3, 4, 4, 3)) / 4.0
  grads = (y.reshape(3, -1) @ matrix).reshape(3, 2, 5)
  np.testing.assert_allclose(got, np.sqrt(np.mean(np.sum(grads**2, axis=2), axis=1)),
                             rtol=1e-5)


def test_truncation_trick():
  latents = jax.random.normal(jax.random.key(8), (2, 3, 4))
  w_avg = jnp.arange(4.0)
  np.testing.assert_allclose(stylegan.truncate(latents, w_avg, 0.0),
                             np.broadcast_to(w_avg, latents.shape))
  np.testing.assert_allclose(stylegan.truncate(latents, w_avg, 1.0), latents, rtol=1e-6)
  half = stylegan.truncate(latents, w_avg, 0.5, cutoff=2)
  np.testing.assert_allclose(half[:, :2], w_avg + 0.5 * (latents[:, :2] - w_avg), rtol=1e-6)
  np.testing.assert_array_equal(half[:, 2:], latents[:, 2:])


@pytest.fixture(scope="module")
def generator_and_params():
  generator = networks.Generator(**TINY_MODEL)
  return generator, _random_params(generator, jnp.zeros((1, 16)))


def test_fused_and_non_fused_generator_agree(generator_and_params):
  generator, params = generator_and_params
  z = jax.random.normal(jax.random.key(10), (3, 16))
  noise = networks.sample_noise(jax.random.key(11), (4, 8, 16), 3)
  run = jax.jit(lambda fused: generator.apply({"params": params}, z, noise=noise, fused=fused),
                static_argnums=0)
  np.testing.assert_allclose(run(True), run(False), rtol=1e-4, atol=1e-5)


def test_memory_blocks_with_external_latents_noise_and_encoder_features(generator_and_params):
  generator, params = generator_and_params
  synthesis = networks.SynthesisNetwork(16, 4, channel_base=128, channel_max=16)
  latents = jax.random.normal(jax.random.key(12), (2, 3, 16))
  noise = networks.sample_noise(jax.random.key(13), synthesis.resolutions, 2)
  encoder = {8: jax.random.normal(jax.random.key(15), (2, 8, 8, 5))}

  @functools.partial(jax.jit, static_argnums=3)
  def run(synthesis_params, noise, encoder, blockwise=False):
    variables = {"params": synthesis_params}
    image, features = synthesis.apply(variables, latents, noise=noise, encoder_features=encoder)
    if not blockwise:
      return image, features
    # Block by block, as stage 2 interleaves the memory with its decoder.
    x = rgb = None
    for i, r in enumerate(synthesis.resolutions):
      x, rgb = synthesis.apply(variables, i, x, rgb, latents[:, i], noise[i], encoder.get(r),
                               method="block")
    return image, features, rgb, x

  image, features = run(params["synthesis"], noise, {})
  assert {r: f.shape for r, f in features.items()} == {4: (2, 4, 4, 16), 8: (2, 8, 8, 16),
                                                       16: (2, 16, 16, 8)}
  # Supplied noise is used: other noise, other image.
  other_noise = networks.sample_noise(jax.random.key(14), synthesis.resolutions, 2)
  assert not np.allclose(run(params["synthesis"], other_noise, {})[0], image)

  # Encoder features go through an identity-initialised adapter: the memory's output is
  # unchanged until stage 2 trains the adapter, and the frozen part is the stage-1 tree.
  with_adapter = jax.eval_shape(synthesis.init, jax.random.key(16), latents, noise=noise,
                                encoder_features=encoder)["params"]
  frozen, adapters = stylegan.split_adapters(with_adapter)
  assert jax.tree.structure(frozen) == jax.tree.structure(params["synthesis"])
  assert list(adapters) == ["b8"]
  # The adapter's own initial values (it fuses after the upsampling conv: the 8x8 block's width).
  adapters = {"b8": {"encoder_fusion": networks.EncoderFusion().init(
      jax.random.key(17), jnp.zeros((2, 8, 8, 16)), encoder[8])["params"]}}
  merged = stylegan.merge_adapters(params["synthesis"], adapters)
  adapted, _, block_rgb, block_x = run(merged, noise, encoder, True)
  # Exactly equal op by op; jitted, the two programs fuse differently: float32 rounding on
  # outputs of magnitude ~20.
  np.testing.assert_allclose(adapted, image, rtol=1e-5, atol=1e-5)
  # Block by block (stage 2's progressive reasoning) computes the same thing.
  np.testing.assert_allclose(block_rgb, image, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(block_x, features[16], rtol=1e-5, atol=1e-5)
  trained = stylegan.merge_adapters(params["synthesis"],
                                    jax.tree.map(lambda a: a + 0.1, adapters))
  _, changed_features, _, _ = run(trained, noise, encoder, True)
  np.testing.assert_array_equal(changed_features[4], features[4])  # Below the fused level.
  assert not np.allclose(changed_features[8], features[8])


def test_memory_block_upsampling_forms_share_weights_and_agree_away_from_the_border():
  """Old exports ("fir_then_conv") load into either form; the forms differ only within 2 px
  of the border (the upsampling conv's 1 px, widened by the block's second 3x3 conv)."""
  rng = np.random.default_rng(31)
  normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  previous, rgb, latent = normal(2, 4, 4, 6), normal(2, 4, 4, 3), normal(2, 8)
  noise = [normal(2, 8, 8, 1), normal(2, 8, 8, 1)]
  blocks = {form: networks.MemoryBlock(5, 8, is_first=False, upsample=form)
            for form in networks.UPSAMPLE_FORMS}
  shapes = {form: jax.eval_shape(block.init, jax.random.key(0), previous, rgb, latent, noise)
            for form, block in blocks.items()}
  assert shapes["transposed"] == shapes["fir_then_conv"]
  params = _random_params(blocks["transposed"], previous, rgb, latent, noise)
  outputs = jax.jit(lambda params: {form: block.apply({"params": params}, previous, rgb,
                                                      latent, noise)
                                    for form, block in blocks.items()})(params)
  (x, skip), (old_x, old_skip) = outputs["transposed"], outputs["fir_then_conv"]
  assert x.shape == old_x.shape == (2, 8, 8, 5) and skip.shape == (2, 8, 8, 3)
  for new, old in ((x, old_x), (skip, old_skip)):
    np.testing.assert_allclose(new[:, 2:-2, 2:-2], old[:, 2:-2, 2:-2], rtol=1e-5, atol=1e-5)
    assert not np.allclose(new[:, :2], old[:, :2], atol=1e-3)


def test_export_load_round_trip_and_mismatches(generator_and_params, tmp_path):
  _, params = generator_and_params
  model = ml_collections.ConfigDict(TINY_MODEL)
  w_avg = jnp.linspace(-1.0, 1.0, 16)
  path = stylegan.export_memory(str(tmp_path / "memory"), params=params, w_avg=w_avg,
                                model_config=model, step=7)
  memory = stylegan.load_memory(path, model)
  assert memory.step == 7
  np.testing.assert_array_equal(memory.w_avg, w_avg)
  for a, b in zip(jax.tree.leaves(memory.params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  assert stylegan.load_memory(path).model_config.channel_max == 16  # Stored architecture.

  # TINY_MODEL has no `upsample`, like exports made before the field: they were made with
  # FIR upsampling then the conv, are built so when loaded as stored, and are refused as
  # another architecture under the new form (same array shapes, other numbers).
  assert stylegan.load_memory(path).synthesis_network().upsample == "fir_then_conv"
  old_form = ml_collections.ConfigDict({**TINY_MODEL, "upsample": "fir_then_conv"})
  assert stylegan.load_memory(path, old_form).synthesis_network().upsample == "fir_then_conv"
  with pytest.raises(stylegan.MemoryMismatchError, match=r"model\.upsample: exported "
                     r"'fir_then_conv', requested 'transposed'"):
    stylegan.load_memory(path, ml_collections.ConfigDict({**TINY_MODEL,
                                                          "upsample": "transposed"}))

  wider = ml_collections.ConfigDict({**TINY_MODEL, "channel_max": 32})
  with pytest.raises(stylegan.MemoryMismatchError, match=r"model\.channel_max: exported 16, "
                     r"requested 32"):
    stylegan.load_memory(path, wider)
  # Arrays that do not fit the architecture the export claims: the leaf is named.
  lying = stylegan.export_memory(str(tmp_path / "lying"), params=params, w_avg=w_avg,
                                 model_config=wider, step=7)
  with pytest.raises(stylegan.MemoryMismatchError, match=r"params/synthesis/b4/const"):
    stylegan.load_memory(lying, wider)
  with pytest.raises(FileNotFoundError, match="memory_pretraining"):
    stylegan.load_memory(str(tmp_path / "nothing"))
