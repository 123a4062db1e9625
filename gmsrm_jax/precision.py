"""Mixed precision (`config.train.compute_dtype`): the policy the train steps apply.

Parameters, optimizer states, the EMA and every carried statistic are stored and updated in
float32 whatever the compute dtype, so checkpoints of the two modes are interchangeable. A
bfloat16 step casts the parameters (trainable and frozen) INSIDE its loss functions, where
flax layers (dtype=None) and the StyleGAN layers then compute in bfloat16 and from where the
gradients come back in float32 through the casts; the generator casts its own encoder input
(after the float32 prior), the discriminator gets bfloat16 images. Outputs return to float32
before any loss, and every sum of the differentiated step accumulates in float32
(`sums_in_float32`). The places that must not round to bfloat16 (the CICM memory, StyleGAN2's
demodulation, the KL of GM-SRM's noise heads) promote themselves with `at_least_float32`;
flax takes normalisation statistics in float32 itself. Evaluation and inference never apply
the policy: they run in float32 (docs/DESIGN.md P1, P2).
"""

from typing import Any, Callable

import jax
from jax.extend import core as jex_core
from jax.extend.core import primitives
import jax.numpy as jnp
import ml_collections

COMPUTE_DTYPES = ("float32", "bfloat16")


def compute_dtype(config: ml_collections.ConfigDict) -> jnp.dtype:
  """The dtype convolutions and activations run in during training."""
  # Configs saved before the field existed trained in float32 (config_checks.ADDED_FIELDS).
  name = config.train.get("compute_dtype", "float32")
  if name not in COMPUTE_DTYPES:
    raise ValueError(f"config.train.compute_dtype = {name!r}; use one of {COMPUTE_DTYPES}.")
  return jnp.dtype(name)


def _floating(x) -> bool:
  return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def _half_precision(x) -> bool:
  return _floating(x) and jnp.finfo(jnp.result_type(x)).bits < 32


def to_compute(tree: Any, dtype: jnp.dtype) -> Any:
  """Floating leaves of `tree` in `dtype`; the identity for float32, so a float32 step traces
  exactly as it did before the policy existed (and float64 tests stay float64)."""
  if dtype == jnp.float32:
    return tree
  return jax.tree.map(lambda x: x.astype(dtype) if _floating(x) else x, tree)


def at_least_float32(x: jax.Array) -> jax.Array:
  """`x` in float32 when it is in a half-precision dtype; otherwise `x` itself (float32 and
  float64 unchanged)."""
  wider = jnp.promote_types(x.dtype, jnp.float32)
  return x if wider == x.dtype else x.astype(wider)


def to_float32(tree: Any) -> Any:
  """`at_least_float32` on every floating leaf: outputs of the compute dtype before losses."""
  return jax.tree.map(lambda x: at_least_float32(x) if _floating(x) else x, tree)


# Sums whose accumulation XLA runs in the operand's dtype: on CPU a bfloat16 reduce_sum adds in
# bfloat16 (measured: 0.80 for a 4,096-term sum whose value is 0.04), and the transposes of
# broadcasts that autodiff emits (the gradient of every bias, style and noise strength) are
# such sums. Dots and convolutions accumulate in float32 on CPU, GPU and TPU.
_SUMS = (primitives.reduce_sum_p, primitives.reduce_window_sum_p, primitives.cumsum_p)


def sums_in_float32(fun: Callable[..., Any], dtype: jnp.dtype) -> Callable[..., Any]:
  """`fun` with every sum of half-precision values accumulated in float32 and rounded once.

  `fun` (typically a `jax.value_and_grad`) is traced to a jaxpr, which is then evaluated with
  those sums widened, nested jits included. The identity for a float32 `dtype`.
  """
  if dtype == jnp.float32:
    return fun

  def wrapped(*args):
    closed, out_shape = jax.make_jaxpr(fun, return_shape=True)(*args)
    outputs = _evaluate(closed.jaxpr, closed.consts, jax.tree.leaves(args))
    return jax.tree.unflatten(jax.tree.structure(out_shape), outputs)

  return wrapped


def value_and_grad(fun: Callable[..., Any], dtype: jnp.dtype, **kwargs) -> Callable[..., Any]:
  """`jax.value_and_grad(fun, **kwargs)` with its sums in float32 (`sums_in_float32`)."""
  return sums_in_float32(jax.value_and_grad(fun, **kwargs), dtype)


def _evaluate(jaxpr: jex_core.Jaxpr, consts: list[Any], args: list[Any]) -> list[Any]:
  """`jax.core.eval_jaxpr` with the sums of `_SUMS` widened to float32."""
  env = {}
  read = lambda var: var.val if isinstance(var, jex_core.Literal) else env[var]
  env.update(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))
  for eqn in jaxpr.eqns:
    inputs = [read(var) for var in eqn.invars]
    if eqn.primitive is primitives.jit_p:
      inner = eqn.params["jaxpr"]
      outputs = _evaluate(inner.jaxpr, inner.consts, inputs)
    else:
      with eqn.ctx.manager:
        if eqn.primitive in _SUMS and _half_precision(inputs[0]):
          narrow = inputs[0].dtype
          outputs = eqn.primitive.bind(inputs[0].astype(jnp.float32), **eqn.params)
          outputs = outputs.astype(narrow)
        else:
          outputs = eqn.primitive.bind(*inputs, **eqn.primitive.get_bind_params(eqn.params))
      if not eqn.primitive.multiple_results:
        outputs = [outputs]
    env.update(zip(eqn.outvars, outputs))
  return [read(var) for var in jaxpr.outvars]
