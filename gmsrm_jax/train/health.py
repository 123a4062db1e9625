"""Finiteness of the train state, tracked on the device and read only when it matters.

The loop carries a small `Health` pytree next to the state: the first step whose loss terms or
new state held a NaN/inf, and which state fields did. Updating it is part of the jitted step,
so ordinary steps never wait for the device; the host reads it at log and checkpoint steps
(big_vision's pattern), where it waits for the device anyway. A non-finite state is therefore
never checkpointed, and the error names the first bad step, the window it was found in and
the terms.
"""

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

# The frozen params are loaded, never written by a step (tests prove them bit-identical), so
# checking them every step would only cost bandwidth.
_UNCHECKED_FIELDS = ("frozen",)
_LOSS_PREFIX = "loss/"
LOSSES = "loss terms"


class NonFiniteError(FloatingPointError):
  """A loss term or the train state became NaN/inf; nothing from that step on is saved."""


@flax.struct.dataclass
class Health:
  first_bad_step: jax.Array  # int32; -1 while every step so far was finite.
  # At the first bad step: [any loss term non-finite, then one entry per checked state field].
  bad: jax.Array


def checked_fields(state: Any) -> tuple[str, ...]:
  return tuple(f.name for f in dataclasses.fields(state) if f.name not in _UNCHECKED_FIELDS)


def _all_finite(tree: Any) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def finite_fields(state: Any) -> jax.Array:
  """bool [len(checked_fields(state))]: whether every float leaf of each field is finite."""
  return jnp.stack([_all_finite(getattr(state, name)) for name in checked_fields(state)])


def initial(state: Any) -> Health:
  return Health(first_bad_step=jnp.array(-1, jnp.int32),
                bad=jnp.zeros(1 + len(checked_fields(state)), bool))


def update(health: Health, metrics: dict[str, jax.Array], new_state: Any) -> Health:
  """Traced inside the step: records the first step (= new_state.step) that was not finite."""
  losses = {k: v for k, v in metrics.items() if k.startswith(_LOSS_PREFIX)}
  bad = ~jnp.concatenate([_all_finite(losses)[None], finite_fields(new_state)])
  first = (health.first_bad_step < 0) & jnp.any(bad)
  return Health(first_bad_step=jnp.where(first, new_state.step, health.first_bad_step),
                bad=jnp.where(first, bad, health.bad))


def nonfinite_loss_terms(summed_metrics: dict[str, Any]) -> list[str]:
  """Loss terms whose sum over the log window is not finite (host values)."""
  return sorted(k for k, v in summed_metrics.items()
                if k.startswith(_LOSS_PREFIX) and not np.all(np.isfinite(v)))


def check(health: Health, state: Any, *, checked_through: int, last_check: int,
          last_checkpoint: int | None, summed_metrics: dict[str, Any] | None = None) -> None:
  """Raises NonFiniteError if `health` (host values) recorded a bad step.

  `last_check` is the step of the previous read, so the window is (last_check,
  checked_through]; `summed_metrics` (the metrics summed over the current log window, on the
  device; read only when something was not finite) names the loss terms.
  """
  first = int(health.first_bad_step)
  if first < 0:
    return
  names = [LOSSES, *(f"state.{name}" for name in checked_fields(state))]
  terms = [name for name, bad in zip(names, np.asarray(health.bad)) if bad]
  if LOSSES in terms and summed_metrics:
    named = nonfinite_loss_terms(jax.device_get(summed_metrics))
    terms[terms.index(LOSSES)] = ", ".join(named) or LOSSES
  saved = (f"the last checkpoint is step {last_checkpoint}" if last_checkpoint is not None
           else "no checkpoint was written")
  raise NonFiniteError(
      f"Non-finite values first at step {first}: {', '.join(terms)} (found when checking "
      f"steps {last_check + 1}-{checked_through}). Stopping without checkpointing any state "
      f"from step {first} on; {saved}. Resuming repeats the same steps: lower the learning "
      "rate or a loss weight, or restore an earlier checkpoint with --step=N.")


def nonfinite_fields(state: Any) -> list[str]:
  """Host check of a whole state (e.g. a restored one): the fields holding NaN/inf."""
  finite = np.asarray(jax.device_get(jax.jit(finite_fields)(state)))
  return [name for name, ok in zip(checked_fields(state), finite) if not ok]
