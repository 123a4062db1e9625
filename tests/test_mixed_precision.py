"""Mixed precision (`config.train.compute_dtype = "bfloat16"`, docs/DESIGN.md P1, P2).

For every model family, the same initial state and batches go through the jitted step in
float32 and in bfloat16: the bfloat16 step convolves in bfloat16 and sums in float32 (its
lowered StableHLO), tracks the float32 one within the tolerances docs/PERFORMANCE.md derives
("bf16 tolerance figures"), and returns a state with exactly the float32 state's dtypes.
Evaluation and sampling of a bfloat16 run never see a bfloat16 value. The places kept in
float32 (demodulation, normalisation statistics, the KL, the perceptual loss' reduction) are
checked against float64 references.
"""

import dataclasses
import functools
import re
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base as base_config
from configs import gmsrm as gmsrm_config
from configs import memory_synthetic
from configs import unet_cicm as cicm_config
from gmsrm_jax import config_checks
from gmsrm_jax import evaluation
from gmsrm_jax import losses
from gmsrm_jax import precision
from gmsrm_jax import weights as weights_lib
from gmsrm_jax.features import inception
from gmsrm_jax.models import layers
from gmsrm_jax.stylegan import layers as stylegan_layers
from gmsrm_jax.train import memory_pretraining as mp
from gmsrm_jax.train import state as state_lib
from gmsrm_jax.train import step as step_lib
from test_train_step import _batch  # pylint: disable=g-bad-import-order

NUM_STEPS = 2
PERCEPTUAL_TOLERANCE = 1e-3  # Measured 0.8-4.1e-4 over 10 draws (docs/PERFORMANCE.md).


@dataclasses.dataclass
class Family:
  config: Any
  create_components: Callable
  init_state: Callable  # (components, config) -> state
  train_step: Callable  # (components, config, state, batch) -> (state, metrics)
  batch: Callable  # step -> batch


def _inpainting(config) -> Family:
  size = config.data.crop_size
  return Family(
      config, state_lib.create_components,
      lambda components, config: state_lib.init_state(components, jax.random.PRNGKey(0),
                                                      (1, size, size, 3)),
      step_lib.train_step,
      lambda i: _batch(batch_size=config.train.batch_size, size=size, seed=i))


def _base():
  """configs/base.py:tiny with one encoder level and the demos' prior and residual head (the
  part of the model that stays float32), the adversarial term on."""
  config = base_config.get_config("tiny")
  config.model.encoder_channels = config.disc.channels = (8,)
  config.model.hole_fill = "pyramid"
  config.model.residual_output = True
  return _inpainting(config)


def _unet_cicm():
  config = cicm_config.get_config("tiny")
  config.model.unet_channels = (8, 16)
  return _inpainting(config)


def _gmsrm():
  """GM-SRM stage 2 (tiny) with one encoder level and a one-block memory (16²) queried at the
  bottleneck with conditional noise (eq. 8)."""
  config = gmsrm_config.get_config("tiny")
  config.model.encoder_channels = config.disc.channels = (8,)
  config.model.memory.architecture.start_resolution = 16
  return _inpainting(config)


def _stage1() -> Family:
  config = memory_synthetic.get_config("tiny")
  config.data.crop_size = 4  # One 4² block each side: every layer kind, the fewest layers.
  return Family(
      config, mp.create_components,
      lambda components, config: mp.init_state(components, config, jax.random.PRNGKey(0)),
      # Both lazy regularisers (R1, path length) on every step, so their bfloat16 versions are
      # compared too (the loop runs this variant on steps divisible by both intervals).
      functools.partial(mp.train_step, regularize=("pl", "r1")),
      lambda i: {"image": _batch(batch_size=config.train.batch_size, size=4, seed=i)["image"]})


FAMILIES = {
    "base": _base,
    "unet_cicm": _unet_cicm,
    "gmsrm": _gmsrm,
    "memory_stage1": _stage1,
}


# Init and steps compile without LLVM's optimisations and with XLA:CPU's older loop emitters:
# a third of the compile time of these tiny graphs (4.2 s instead of 10.7 s for stage 1,
# measured), the same XLA graphs; both dtypes are compiled alike and nothing here is timed.
_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


@dataclasses.dataclass
class Run:
  states: list  # Host copies after 0 .. NUM_STEPS steps.
  metrics: list  # Host metrics of each step.
  hlo: str  # The lowered step (StableHLO text).


def initial_state(family: Family):
  """The float32 state both compute dtypes start from (init does not depend on the dtype)."""
  components = family.create_components(family.config)
  init = functools.partial(family.init_state, components, family.config)
  return jax.device_get(jax.jit(init).lower().compile(_COMPILER_OPTIONS)())


def train(family: Family, state, compute_dtype: str) -> Run:
  """NUM_STEPS jitted steps from `state` with `train.compute_dtype = compute_dtype`."""
  config = family.config.copy_and_resolve_references()
  config.train.compute_dtype = compute_dtype
  components = family.create_components(config)
  lowered = jax.jit(functools.partial(family.train_step, components, config)).lower(
      state, family.batch(0))
  step = lowered.compile(_COMPILER_OPTIONS)
  states, metrics = [state], []
  for i in range(NUM_STEPS):
    state, step_metrics = step(state, family.batch(i))
    states.append(jax.device_get(state))
    metrics.append(jax.device_get(step_metrics))
  return Run(states, metrics, lowered.as_text())


def convolution_dtypes(hlo: str) -> dict[str, int]:
  """{element type: number of convolutions producing it} in StableHLO text."""
  counts = {}
  for element in re.findall(r"stablehlo\.convolution.*->\s*tensor<[^>]*x(\w+)>\s*$", hlo,
                            re.MULTILINE):
    counts[element] = counts.get(element, 0) + 1
  return counts


def half_precision_sums(hlo: str) -> list[str]:
  """The reductions in StableHLO text that add bfloat16 operands (max/min ones are exact)."""
  pretty = re.findall(r"stablehlo\.reduce(?:_window)?\(.*applies stablehlo\.add.*: \((.*)\) ->",
                      hlo)
  generic = [m.group(1) for m in re.finditer(
      r'"stablehlo\.reduce(?:_window)?"\((?:.|\n)*?\n\s*\}\) : \(([^)]*)\)', hlo)
             if "stablehlo.add" in m.group(0)]
  return [types for types in pretty + generic if "bf16" in types]


def _global_norm(tree) -> float:
  return float(np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64)))
                           for x in jax.tree.leaves(tree))))


def _relative(a, b) -> float:
  """|b - a| / |a| of two trees (global norms)."""
  return _global_norm(jax.tree.map(np.subtract, b, a)) / _global_norm(a)


def deviations(f32: Run, bf16: Run) -> dict[str, float]:
  """How far the bfloat16 run is from the float32 one, each relative to the float32 value:

  loss: the largest over loss terms and steps of |l_bf16 - l_f32| / max(|l_f32|, 1e-3)
    (terms below 1e-3 compared at that scale);
  grad/g, grad/d: the first step's gradients, read from Adam's first moment after it (a
    linear function of them);
  update/g, update/d: the parameters' total change over the NUM_STEPS steps.
  """
  out = {"loss": max(abs(float(b[name]) - float(a[name])) / max(abs(float(a[name])), 1e-3)
                     for a, b in zip(f32.metrics, bf16.metrics)
                     for name in a if name.startswith("loss/"))}
  for part in ("g", "d"):
    first_moment = lambda run, p=part: getattr(run.states[1], f"{p}_opt_state")[0].mu
    if _global_norm(first_moment(f32)):
      out[f"grad/{part}"] = _relative(first_moment(f32), first_moment(bf16))
    change = lambda run, p=part: jax.tree.map(np.subtract, getattr(run.states[-1], f"{p}_params"),
                                               getattr(run.states[0], f"{p}_params"))
    if _global_norm(change(f32)):
      out[f"update/{part}"] = _relative(change(f32), change(bf16))
  return out


# Measured deviations of the families above (docs/PERFORMANCE.md, "bf16 tolerance figures"),
# times two: what bfloat16 rounding costs these tiny models on their first steps.
TOLERANCES = {
    "base": {"loss": 0.003, "grad/g": 0.006, "grad/d": 0.55, "update/g": 0.3, "update/d": 0.7},
    "unet_cicm": {"loss": 0.007, "grad/g": 0.05, "grad/d": 0.035, "update/g": 0.25,
                  "update/d": 0.2},
    "gmsrm": {"loss": 0.002, "grad/g": 0.03, "grad/d": 0.015, "update/g": 0.25,
              "update/d": 0.05},
    "memory_stage1": {"loss": 0.06, "grad/g": 0.04, "grad/d": 0.15, "update/g": 0.45,
                      "update/d": 0.25},
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def runs(request):
  """(family name, {compute dtype: Run}) from one initial state and the same batches."""
  family = FAMILIES[request.param]()
  state = initial_state(family)
  return request.param, {dtype: train(family, state, dtype) for dtype in ("float32", "bfloat16")}


def test_bfloat16_step_convolves_in_bfloat16_and_sums_in_float32(runs):
  _, runs = runs
  f32_convolutions = convolution_dtypes(runs["float32"].hlo)
  assert set(f32_convolutions) == {"f32"}
  # Every convolution of the step, forward and backward, G and D: none left in float32.
  assert convolution_dtypes(runs["bfloat16"].hlo) == {"bf16": f32_convolutions["f32"]}
  assert half_precision_sums(runs["bfloat16"].hlo) == []
  assert "bf16" not in runs["float32"].hlo  # The float32 step is the one of before.


def test_state_keeps_the_float32_dtypes(runs):
  """Checkpoints of the two modes are interchangeable: same tree, same dtypes, every step."""
  _, runs = runs
  dtypes = lambda tree: jax.tree.map(lambda x: np.asarray(x).dtype, tree)
  for f32_state, bf16_state in zip(runs["float32"].states, runs["bfloat16"].states):
    assert dtypes(bf16_state) == dtypes(f32_state)
  assert {x.dtype for x in jax.tree.leaves(runs["bfloat16"].states[-1])
          if np.issubdtype(x.dtype, np.floating)} == {np.dtype(np.float32)}


def test_bfloat16_tracks_float32(runs):
  name, runs = runs
  measured = deviations(runs["float32"], runs["bfloat16"])
  assert set(measured) == set(TOLERANCES[name])
  for quantity, tolerance in TOLERANCES[name].items():
    assert measured[quantity] <= tolerance, (quantity, measured)
  if name == "base":
    # The residual head adds a float32 prior: known pixels come out exact, as in float32.
    assert float(runs["bfloat16"].metrics[0]["loss/rec_known"]) == 0.0


def test_evaluation_and_sampling_of_a_bfloat16_run_stay_float32(runs):
  """Nothing downstream of training reads compute_dtype: a bfloat16 run is evaluated (LPIPS
  and FID networks included) and sampled in float32 (and exports its float32 state)."""
  name, runs = runs
  family = FAMILIES[name]()
  config = family.config.copy_and_resolve_references()
  config.train.compute_dtype = "bfloat16"
  components = family.create_components(config)
  state = runs["bfloat16"].states[-1]
  if name == "memory_stage1":
    lowered = jax.jit(functools.partial(mp.sample_images, components, config,
                                        num_images=2)).lower(
        state.ema_params, state.g_state["w_avg"], jax.random.PRNGKey(0))
  else:
    # The metric networks score completed images whatever the family: lowered once.
    abstract = lambda model: jax.tree.map(
        lambda shape: jax.ShapeDtypeStruct(shape, jnp.float32),
        flax.traverse_util.unflatten_dict(weights_lib.expected_shapes(model), sep="/"),
        is_leaf=lambda x: isinstance(x, tuple))
    with_networks = name == "base"
    batch = {**family.batch(0), "weight": np.ones(config.train.batch_size, np.float32)}
    lowered = jax.jit(functools.partial(
        evaluation.batch_metrics, components, "alex", inception.MIN_IMAGE_SIZE)).lower(
            step_lib.inference_variables(config, state),
            abstract("lpips_alex") if with_networks else None,
            abstract("inception_fid") if with_networks else None, batch)
  assert "bf16" not in lowered.as_text()


def test_demodulation_is_rounded_once():
  """StyleGAN2 eq. 3 from bfloat16 weights and styles: computed in float32 and rounded to
  bfloat16 once, i.e. the exact value correctly rounded (computed in bfloat16, rounding the
  squares' sum, the matmul and the rsqrt each, 15% of these values were not)."""
  rng = np.random.default_rng(0)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 64, 32)) / 24, jnp.bfloat16)
  styles = jnp.asarray(1 + 0.3 * rng.standard_normal((8, 64)), jnp.bfloat16)
  out = jax.jit(stylegan_layers.demodulation)(kernel, styles)
  assert out.dtype == jnp.bfloat16
  kernel64, styles64 = np.asarray(kernel, np.float64), np.asarray(styles, np.float64)
  exact = 1 / np.sqrt(np.square(styles64) @ np.sum(np.square(kernel64), axis=(0, 1)) + 1e-8)
  assert np.mean(np.asarray(out) == exact.astype(jnp.bfloat16)) >= 0.99  # Near-ties aside.


def test_sums_in_float32_accumulate_gradients_in_float32():
  """The gradient of a bfloat16 bias (a sum over 4,096 terms that nearly cancel), also
  inside a nested jit: rounded once from the exact sum."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((16, 16, 16, 8))
  x[8:] = -x[:8] + 0.01 * rng.standard_normal((8, 16, 16, 8))
  x = jnp.asarray(x, jnp.bfloat16)
  add_bias = jax.jit(lambda features, bias: features + bias)
  loss = lambda bias: jnp.sum((add_bias(x, bias.astype(jnp.bfloat16)) * x).astype(jnp.float32))
  grad = jax.jit(precision.sums_in_float32(jax.grad(loss), jnp.bfloat16))(jnp.zeros(8))
  exact = np.sum(np.asarray(x, np.float64), axis=(0, 1, 2))
  assert grad.dtype == jnp.float32
  np.testing.assert_allclose(grad, exact, rtol=2.0**-8)
  # float32: the function itself, untouched.
  assert precision.sums_in_float32(loss, jnp.float32) is loss


def test_instance_norm_statistics_are_float32():
  """ReLU(IN(Conv(x))) with bfloat16 params and input whose channels sit far from zero: the
  statistics in bfloat16 would be off by a unit of the mean (0.03 here, a whole std)."""
  rng = np.random.default_rng(0)
  x = 8.0 + 0.05 * rng.standard_normal((2, 8, 8, 4))
  params = {"conv": {"kernel": np.eye(4)[None, None]},  # A 1x1 conv passing x through.
            "norm": {"scale": np.ones(4), "bias": np.zeros(4)}}
  bf16 = lambda tree: precision.to_compute(jax.tree.map(jnp.asarray, tree), jnp.bfloat16)
  out = jax.jit(layers.ConvNormReLU(4, kernel_size=1).apply)({"params": bf16(params)}, bf16(x))
  assert out.dtype == jnp.bfloat16
  rounded = np.asarray(jnp.asarray(x, jnp.bfloat16), np.float64)
  mean, std = rounded.mean(axis=(1, 2)), rounded.std(axis=(1, 2))
  exact = np.maximum((rounded - mean[:, None, None]) / np.sqrt(std[:, None, None]**2 + 1e-6), 0)
  np.testing.assert_allclose(np.asarray(out, np.float64), exact, atol=0.02)


def test_gmsrm_computes_the_kl_and_carries_the_memory_in_float32():
  """The model itself, before the step's casts: bfloat16 prediction, float32 KL (eq. 9)."""
  family = FAMILIES["gmsrm"]()
  components = family.create_components(family.config)
  state = jax.eval_shape(functools.partial(family.init_state, components, family.config))
  bf16 = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.bfloat16), tree)
  variables = step_lib.generator_variables(bf16(state.g_params), state.g_state,
                                           bf16(state.frozen))
  batch = family.batch(0)
  prediction, aux, _, diagnostics = jax.eval_shape(functools.partial(
      step_lib.generator_forward, components, train=True, compute_dtype=jnp.bfloat16),
      variables, batch["image"], batch["mask"], rng=jax.random.PRNGKey(0))
  assert prediction.dtype == jnp.bfloat16
  assert aux["kl"].dtype == jnp.float32
  assert {x.dtype for x in jax.tree.leaves(diagnostics)} == {jnp.dtype(jnp.float32)}


def test_perceptual_loss_runs_in_its_weights_dtype_and_reduces_in_float32():
  rng = np.random.default_rng(0)
  shapes = weights_lib.expected_shapes("vgg19")
  params = flax.traverse_util.unflatten_dict(
      {path: rng.standard_normal(shape).astype(np.float32) * (
          np.sqrt(2 / np.prod(shape[:-1])) if path.endswith("kernel") else 0.1)
       for path, shape in shapes.items() if path.split("/")[0] in ("conv1_1", "conv1_2",
                                                                    "conv2_1")}, sep="/")
  batch = _batch(batch_size=2, size=16)
  prediction, target = batch["image"][:1] * 0.9, batch["image"][1:]
  loss = jax.jit(functools.partial(losses.perceptual_loss, layers=("relu1_1", "relu2_1")))
  f32 = loss(params, prediction, target)
  bf16_params = precision.to_compute(params, jnp.bfloat16)
  bf16 = loss(bf16_params, prediction, target)
  assert bf16.dtype == jnp.float32
  np.testing.assert_allclose(bf16, f32, rtol=PERCEPTUAL_TOLERANCE)
  hlo = loss.lower(bf16_params, prediction, target).as_text()
  assert set(convolution_dtypes(hlo)) == {"bf16"} and half_precision_sums(hlo) == []


def test_compute_dtype_config_field():
  config = base_config.get_config("tiny")
  assert precision.compute_dtype(config) == jnp.float32
  config.train.compute_dtype = "bfloat16"
  config_checks.validate(config)
  assert precision.compute_dtype(config) == jnp.bfloat16
  config.train.compute_dtype = "float16"
  with pytest.raises(config_checks.ConfigError, match="train.compute_dtype = 'float16'"):
    config_checks.validate(config)
  # Runs saved before the field existed trained in float32.
  assert config_checks.ADDED_FIELDS["train.compute_dtype"] == "float32"
  del config.train.compute_dtype
  assert precision.compute_dtype(config) == jnp.float32
