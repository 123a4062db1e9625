"""The asynchronous loop (issue #13): no step reads a device value and the next batch is sent
ahead.

The loop runs every step's body under JAX's device-to-host transfer guard at the level of
config.train.device_to_host_guard. The stage-1 loop test (test_memory_pretraining.py) trains
all its steps at "disallow_explicit"; here, the guard is shown to stop a run whose step body
reads, and the prefetch order is checked.
"""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny_run
import transfer_guard
from gmsrm_jax.train import loop
from gmsrm_jax.train import parallel


def test_the_guard_check_sees_reads(monkeypatch):
  transfer_guard.enforce_on_cpu(monkeypatch)
  value = jax.jit(lambda x: x + 1)(jnp.zeros(3))
  with jax.transfer_guard_device_to_host("disallow_explicit"):
    for read in (lambda: float(value[0]), lambda: jax.device_get(value), value.tolist):
      with pytest.raises(transfer_guard.DeviceRead):
        read()
  assert value.tolist() == [1.0, 1.0, 1.0]


def test_a_read_in_the_step_body_stops_the_guarded_run(
    tiny_data_dir, finished_tiny_run, tmp_path, monkeypatch):
  transfer_guard.enforce_on_cpu(monkeypatch)
  prefetch = parallel.prefetch_global_batches

  def prefetch_waiting_for_the_device(local_batches, mesh):
    for batch in prefetch(local_batches, mesh):
      float(jnp.sum(batch["image"]))  # A per-step sync, as in a prefetcher that checks data.
      yield batch

  monkeypatch.setattr(parallel, "prefetch_global_batches", prefetch_waiting_for_the_device)
  workdir = str(tmp_path / "run")
  shutil.copytree(finished_tiny_run[0], workdir)
  config = tiny_run.config(tiny_data_dir, 6)
  config.train.device_to_host_guard = "disallow_explicit"
  # Raised at the first step's batch, before any step compiles.
  with pytest.raises(transfer_guard.DeviceRead):
    loop.train_and_evaluate(config, workdir)


def test_batches_are_sent_one_step_ahead_in_order():
  mesh = parallel.make_mesh()
  read = []

  def local_batches():
    for step in range(3):
      read.append(step)
      yield {"image": np.full((8, 2), step, np.float32)}

  batches = parallel.prefetch_global_batches(local_batches(), mesh)
  for step in range(3):
    batch = next(batches)
    # Step t's batch comes out once step t + 1's is on its way; none past the last.
    assert read == list(range(min(step + 2, 3)))
    assert batch["image"].sharding == parallel.batch_sharded(mesh)
    np.testing.assert_array_equal(batch["image"], np.full((8, 2), step))
  assert next(batches, None) is None
