"""The device mesh and the two shardings every array of this project uses.

Neutral ground: the model packages (`stylegan/`, `models/`) place loaded weights with these
without importing the training code (`gmsrm_jax/train/parallel.py` builds on them).
"""

from typing import Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over every device of every process (default): pure data parallelism."""
  return Mesh(np.asarray(jax.devices() if devices is None else devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))
