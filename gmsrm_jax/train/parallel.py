"""Mesh, shardings, multi-process start-up and global batches (jit + NamedSharding, no pmap)."""

import collections
from typing import Any, Callable, Iterable, Iterator

from absl import logging
import jax
from jax.sharding import Mesh
import numpy as np

from gmsrm_jax.mesh import DATA_AXIS, batch_sharded, make_mesh, replicated  # noqa: F401


def maybe_initialize_distributed(coordinator_address: str = "", num_processes: int = 0,
                                 process_id: int = -1) -> None:
  """Joins a multi-process job when asked to; a single-process run needs nothing.

  With no coordinator address the job is single-process, except on TPU pods and similar
  managed clusters, where the entry point may call `jax.distributed.initialize()` with no
  arguments (pass --coordinator_address=auto).
  """
  if coordinator_address:
    # CPU processes need a collectives backend to talk to each other; the setting only affects
    # the CPU client, so it is harmless on GPU/TPU hosts. It must precede backend start-up,
    # hence no device query here.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator_address == "auto":
      jax.distributed.initialize()
    else:
      jax.distributed.initialize(coordinator_address=coordinator_address,
                                 num_processes=num_processes, process_id=process_id)
    logging.info("Joined distributed job: process %d of %d", jax.process_index(),
                 jax.process_count())


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
  if global_batch_size % mesh.devices.size:
    raise ValueError(f"Global batch size {global_batch_size} is not divisible by the "
                     f"{mesh.devices.size} devices of the mesh.")


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's slice of the batch into global arrays sharded on 'data'."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def prefetch_global_batches(local_batches: Iterable[dict[str, np.ndarray]], mesh: Mesh,
                            ahead: int = 1) -> Iterator[dict[str, jax.Array]]:
  """global_batch of each local batch, in order, with the next `ahead` already sent.

  Sending to the devices is asynchronous, so the copy of step t + 1's batch runs while step t
  computes (double buffering with ahead = 1: one extra batch held on the devices). Every
  process sends its batches in the same order, as global_batch requires.
  """
  sent = collections.deque()
  for local_batch in local_batches:
    sent.append(global_batch(local_batch, mesh))
    if len(sent) > ahead:
      yield sent.popleft()
  yield from sent


def create_sharded(init_fn: Callable[[], Any], mesh: Mesh) -> Any:
  """Builds the tree directly on the devices, replicated; the host never holds a full copy."""
  return jax.jit(init_fn, out_shardings=replicated(mesh))()
