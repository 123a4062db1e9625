"""Device-to-host reads on XLA:CPU, made visible to JAX's transfer guard (for the loop tests).

XLA:CPU hands its buffers to the host without a copy, so JAX's guard never sees those reads
(jax-ml/jax#16602), while on GPU/TPU every read is a guarded transfer. `enforce_on_cpu` makes
reads of CPU arrays raise DeviceRead where the current device-to-host level disallows them:
float/int/bool, .tolist(), jax.device_get. Not np.asarray, which numpy serves through the
buffer protocol without asking JAX.
"""

import jax
from jax._src import array as jax_array


class DeviceRead(RuntimeError):
  """A device value was read where the transfer guard disallows it."""


def enforce_on_cpu(monkeypatch) -> None:
  read = jax_array.ArrayImpl._value

  def guarded_read(self):
    if jax.config.jax_transfer_guard_device_to_host in ("disallow", "disallow_explicit"):
      raise DeviceRead(f"device-to-host read of {self.dtype}{list(self.shape)}")
    return read.fget(self)

  monkeypatch.setattr(jax_array.ArrayImpl, "_value", property(guarded_read))
