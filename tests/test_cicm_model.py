"""CICM inside networks: UNet-CICM, the wrapper on the foundation network, regions and the ratio
target (eq. 7), where the eq. 8 gradients go, the CICM objective (eqs. 5-6) and the configs."""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import unet_cicm as cicm_config
from gmsrm_jax import models
from gmsrm_jax import objectives
from gmsrm_jax import visualize
from gmsrm_jax.memory import cicm
from gmsrm_jax.models import cicm_module
from gmsrm_jax.train import loop

SIZE = 32


def _inputs(batch=2, seed=0):
  image = jax.random.uniform(jax.random.key(seed), (batch, SIZE, SIZE, 3), minval=-1, maxval=1)
  mask = jnp.zeros((batch, SIZE, SIZE, 1)).at[:, 4:14, 6:20].set(1.0).at[1, 20:30, 20:30].set(1.0)
  return image, mask


def _tiny(ablation=""):
  return cicm_config.get_config("tiny" + (f",{ablation}" if ablation else ""))


def _init(generator, image, mask):
  # An rbg key: initialisers on threefry keys take XLA ~5x longer to compile on CPU.
  return jax.jit(functools.partial(generator.init, train=False))(
      {"params": jax.random.key(1, impl="rbg")}, image, mask)


_JITTED_APPLY = {}


def _apply(generator, variables, image, mask, *, train):
  """((prediction, terms), written collections), jitted once per module and mode (op-by-op
  flax is slow on CPU)."""
  key = (id(generator), train)
  if key not in _JITTED_APPLY:
    _JITTED_APPLY[key] = (generator, jax.jit(functools.partial(
        generator.apply, train=train, mutable=["memory", "diagnostics"])))
  return _JITTED_APPLY[key][1](variables, image, mask)


@pytest.fixture(scope="module")
def unet_cicm():
  config = _tiny()
  generator = models.create_generator(config.model)
  image, mask = _inputs()
  return config, generator, _init(generator, image, mask)


def test_unet_has_fifteen_convolutions_and_cicm_adds_the_ratio_head(unet_cicm):
  _, _, variables = unet_cicm
  convs = [path for path, leaf in flax.traverse_util.flatten_dict(variables["params"]).items()
           if path[-1] == "kernel" and leaf.ndim == 4]
  assert len([p for p in convs if p[0] == "backbone"]) == 15
  assert [p for p in convs if p[0] != "backbone"] == [("cicm", "ratio_head", "kernel")]
  memory = variables["memory"]["cicm"]
  assert memory["anchors"].shape == (5, 16) and memory["features"].shape == (5, 8, 16)


def test_regions_and_corrupted_ratio_target_match_a_loop():
  image, mask = _inputs()
  grid = (4, 4)
  complete = cicm_module.complete_regions(mask, grid)
  target = cicm_module.corrupted_ratio_target(image, mask, grid)
  corrupted_input = np.asarray(image) * (1 - np.asarray(mask))
  for b in range(2):
    for i in range(4):
      for j in range(4):
        block = (b, slice(8 * i, 8 * i + 8), slice(8 * j, 8 * j + 8))
        assert bool(complete[b, i, j]) == (np.asarray(mask)[block].max() == 0)
        differs = np.abs(corrupted_input[block] - np.asarray(image)[block]).max(-1) > 1 / 255
        np.testing.assert_allclose(target[b, i, j], differs.mean(), rtol=1e-6)
  # A hole over content equal to the fill value is not a corruption of the input.
  flat = jnp.zeros_like(image)
  np.testing.assert_array_equal(cicm_module.corrupted_ratio_target(flat, mask, grid), 0.0)
  with pytest.raises(ValueError, match="region grid"):
    cicm_module.complete_regions(mask, (5, 5))


def _bottleneck_features(generator, variables, image, mask):
  """F as the plain UNet computes it with the same backbone parameters."""
  _, state = jax.jit(functools.partial(
      generator.backbone.apply, mutable=["intermediates"],
      capture_intermediates=lambda module, name: module.name == "bottleneck"))(
          {"params": variables["params"]["backbone"]}, image, mask)
  return state["intermediates"]["bottleneck"]["__call__"][0]


def test_training_writes_the_generalized_memory_and_inference_only_reads_it(unet_cicm):
  config, generator, variables = unet_cicm
  image, mask = _inputs()
  (prediction, terms), new = _apply(generator, variables, image, mask, train=True)
  features = _bottleneck_features(generator, variables, image, mask)
  old = cicm.CICMState(**variables["memory"]["cicm"])
  expected = jax.jit(cicm.context_generalization, static_argnums=3)(
      old, features.reshape(-1, 16),
      cicm_module.complete_regions(mask, (4, 4)).reshape(-1), generator.cicm.options)
  for name in ("anchors", "features", "injected"):
    np.testing.assert_allclose(new["memory"]["cicm"][name], getattr(expected, name),
                               rtol=1e-5, atol=1e-6)
  assert set(terms) == {"ratio", "inter", "intra"}
  diagnostics = new["diagnostics"]["cicm"]
  assert float(jnp.sum(diagnostics["set_regions"])) == float(
      jnp.sum(cicm_module.complete_regions(mask, (4, 4))))
  assert diagnostics["anchor_similarity"].shape == (5, 5)

  (inferred, _), unchanged = _apply(generator, variables, image, mask, train=False)
  np.testing.assert_array_equal(inferred, prediction)  # Both read the memory before the step.
  for name, value in variables["memory"]["cicm"].items():
    np.testing.assert_array_equal(unchanged["memory"]["cicm"][name], value)
  assert "diagnostics" not in unchanged
  # The memory is part of the model: another memory gives another inpainting.
  other = jax.tree.map(lambda x: x, variables)
  other["memory"] = new["memory"]
  assert not np.allclose(_apply(generator, other, image, mask, train=False)[0][0], prediction)


@pytest.mark.parametrize("ablation", ["", "anchor_only", "kmeans"])
def test_no_ground_truth_reaches_the_prediction(ablation):
  """Training mode: the memory update runs too, and still the hole content changes nothing."""
  config = _tiny(ablation)
  generator = models.create_generator(config.model)
  image, mask = _inputs()
  other = image.at[:, 4:14, 6:20].set(0.3)  # Different content under the hole.
  apply = jax.jit(functools.partial(generator.apply, train=True, mutable=["memory"]))
  variables = _init(generator, image, mask)
  np.testing.assert_array_equal(apply(variables, image, mask)[0][0],
                                apply(variables, other, mask)[0][0])


@pytest.fixture(scope="module")
def term_gradients(unet_cicm):
  """(train, mask) -> {term: {layer: squared gradient norm}} for CICM's loss terms.

  One jacobian of all terms per train flag, compiled once (masks are arguments)."""
  _, generator, variables = unet_cicm
  jacobians = {}

  def gradients(train, mask):
    if train not in jacobians:
      def terms(params, image, mask):
        (_, out), _ = generator.apply({**variables, "params": params}, image, mask,
                                      train=train, mutable=["memory", "diagnostics"])
        return out
      jacobians[train] = jax.jit(jax.jacrev(terms))
    norms = {}
    for term, grads in jacobians[train](variables["params"], _inputs()[0], mask).items():
      norms[term] = {}
      for path, g in flax.traverse_util.flatten_dict(grads).items():
        layer = path[1] if path[0] == "backbone" else "/".join(path[:2])
        norms[term][layer] = norms[term].get(layer, 0.0) + float(jnp.sum(jnp.square(g)))
    return norms

  return gradients


ENCODER = ("enc_0", "down_1", "enc_1", "down_2", "enc_2", "down_3", "enc_3", "bottleneck")
DECODER = ("up_2", "dec_2", "up_1", "dec_1", "up_0", "dec_0", "out_conv")


def test_eq_8_gradients_reach_the_encoder_through_the_injected_features(term_gradients):
  """DESIGN.md: eq. 8 is computed on the memory after this step's injection, so its gradient
  reaches every layer that shapes the regional features, and nothing after them."""
  mask = _inputs()[1]
  norms = term_gradients(True, mask)
  for term in ("inter", "intra"):
    assert all(norms[term][name] > 0 for name in ENCODER), (term, norms[term])
    assert all(norms[term][name] == 0 for name in DECODER), (term, norms[term])
    assert norms[term]["cicm/ratio_head"] == 0
  # Nothing is injected outside training, nor from a batch without complete regions.
  holes = jnp.ones_like(mask).at[:, :, :1].set(0.0)
  for norms in (term_gradients(False, mask), term_gradients(True, holes)):
    for term in ("inter", "intra"):
      assert all(v == 0 for v in norms[term].values()), term


def test_ratio_loss_trains_the_ratio_head_and_the_encoder_only(term_gradients):
  norms = term_gradients(True, _inputs()[1])["ratio"]
  assert norms["cicm/ratio_head"] > 0 and all(norms[name] > 0 for name in ENCODER)
  assert all(norms[name] == 0 for name in DECODER)


def test_wrapper_equips_the_foundation_network():
  config = _tiny("base_cicm")
  generator = models.create_generator(config.model)
  assert isinstance(generator.backbone, models.BaseInpaintingNet)
  image, mask = _inputs()
  variables = _init(generator, image, mask)
  widths = config.model.encoder_channels
  assert variables["memory"]["cicm"]["features"].shape == (5, 8, widths[-1])
  (prediction, terms), new = _apply(generator, variables, image, mask, train=True)
  assert prediction.shape == image.shape and set(terms) == {"ratio", "inter", "intra"}
  assert not np.allclose(new["memory"]["cicm"]["features"],
                         variables["memory"]["cicm"]["features"])
  # Same backbone parameters without CICM: a different output (CICM sits in the data path).
  plain = jax.jit(generator.backbone.apply)({"params": variables["params"]["backbone"]}, image,
                                            mask)[0]
  assert not np.allclose(plain, prediction)

  wrong = cicm_module.WithCICM(backbone=generator.backbone, feature_module="encoder/nope",
                               cicm=generator.cicm)
  with pytest.raises(ValueError, match="exactly once"):
    jax.eval_shape(wrong.init, {"params": jax.random.key(1)}, image, mask)


def test_relativistic_average_losses_match_eqs_5_and_6():
  rng = np.random.default_rng(0)
  real, fake = rng.normal(size=(4, 3, 3)), rng.normal(size=(4, 3, 3)) + 0.5
  sigmoid = lambda z: 1 / (1 + np.exp(-z))
  d_real = sigmoid(real - fake.mean())  # D(real, fake), eq. 6.
  d_fake = sigmoid(fake - real.mean())  # D(fake, real).
  g_loss = -np.mean(np.log(1 - d_real)) - np.mean(np.log(d_fake))  # Eq. 5.
  d_loss = -np.mean(np.log(d_real)) - np.mean(np.log(1 - d_fake))
  np.testing.assert_allclose(objectives.relativistic_generator_loss(real, fake), g_loss,
                             rtol=1e-5)
  np.testing.assert_allclose(objectives.relativistic_discriminator_loss(real, fake), d_loss,
                             rtol=1e-5)


def test_cicm_objective_weights_eq_9():
  config = _tiny()
  objective = objectives.get(config.loss)
  image, mask = _inputs()
  prediction = jnp.zeros_like(image)
  terms = objective.generator_terms(image=image, mask=mask, prediction=prediction,
                                    real_logits=jnp.ones((2, 4, 4)),
                                    fake_logits=jnp.zeros((2, 4, 4)), loss_networks={})
  np.testing.assert_allclose(terms["inpaint"], np.mean(np.square(np.asarray(image))),
                             rtol=1e-6)
  terms.update(ratio=jnp.array(2.0), inter=jnp.array(3.0), intra=jnp.array(5.0))
  expected = (1.0 * terms["inpaint"] + 0.1 * terms["adv_g"] + 1.0 * 2.0 + 20 * 3.0
              - 0.5 * 5.0)
  np.testing.assert_allclose(objective.generator_total(terms, config.loss), expected,
                             rtol=1e-6)


def test_hole_weighted_l1_form_replaces_eq_5_and_old_configs_read_as_eq_5():
  config = _tiny()
  objective = objectives.get(config.loss)
  image, mask = _inputs()
  prediction = 0.5 * image + 0.25
  terms = objective.generator_terms(image=image, mask=mask, prediction=prediction,
                                    real_logits=None, fake_logits=None, loss_networks={})
  error = np.abs(np.asarray(prediction) - np.asarray(image))
  hole = np.asarray(mask) * np.ones_like(error)
  hand_l1 = (np.mean(error * (1.0 - hole)) + config.loss.gamma * np.mean(error * hole))
  hand_l2 = np.mean(np.square(error))
  assert config.loss.inpaint_form == "l2"
  np.testing.assert_allclose(objective.generator_total(terms, config.loss), hand_l2,
                             rtol=1e-6)
  del config.loss.inpaint_form  # A config saved before the field existed: eq. 5.
  np.testing.assert_allclose(objective.generator_total(terms, config.loss), hand_l2,
                             rtol=1e-6)
  config.loss.inpaint_form = "hole_weighted_l1"
  np.testing.assert_allclose(objective.generator_total(terms, config.loss), hand_l1,
                             rtol=1e-6)
  assert not np.isclose(hand_l1, hand_l2)


def test_every_variant_and_ablation_builds_and_traces():
  """Shapes only (jax.eval_shape): the numbers of each code path are tested above."""
  image, mask = _inputs(batch=1)
  for ablation in cicm_config.ABLATIONS:
    config = _tiny(ablation)
    generator = models.create_generator(config.model)
    objective = objectives.get(config.loss)

    def total(image, mask):
      variables = generator.init({"params": jax.random.key(1)}, image, mask, train=False)
      (prediction, terms), _ = generator.apply(variables, image, mask, train=True,
                                               mutable=["memory", "diagnostics"])
      return prediction, objective.generator_total(
          {**objective.generator_terms(image=image, mask=mask, prediction=prediction,
                                       real_logits=jnp.zeros(3), fake_logits=jnp.zeros(3),
                                       loss_networks={}),
           **terms}, config.loss)

    prediction, loss = jax.eval_shape(total, image, mask)
    assert prediction.shape == image.shape and loss.shape == (), ablation
  assert _tiny("unet").model.name == "unet"
  assert _tiny("w_gt").model.cicm.ratio == "ground_truth"
  for variant in ("", "places2", "celeba", "demo"):
    config = cicm_config.get_config(variant)
    assert config.loss.objective == "cicm" and config.model.cicm.num_sets == 13
  paper = cicm_config.get_config("")
  assert paper.data.crop_size == 256 and paper.model.unet_channels[-1] == 512
  with pytest.raises(ValueError, match="ablation"):
    cicm_config.get_config("tiny,ruc")


def test_vectors_and_matrices_become_scalars_and_images_for_the_writer():
  scalars, images = loop.split_for_writer({"loss/a": np.array(1.5),
                                           "diag/sets": np.array([1.0, 2.0]),
                                           "diag/sim": np.array([[1.0, -1.0], [0.0, 1.0]])})
  assert scalars == {"loss/a": 1.5, "diag/sets/00": 1.0, "diag/sets/01": 2.0}
  heatmap = images["diag/sim"][0]
  assert heatmap.shape == (24, 24, 3) and heatmap.dtype == np.uint8
  np.testing.assert_array_equal(heatmap[0, 12], visualize.matrix_image(np.array([[-1.0]]))[0, 0])
  np.testing.assert_array_equal(heatmap[12, 0], [255, 255, 255])  # 0 is white.
