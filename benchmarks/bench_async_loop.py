"""Step time with and without a host sync per step, at tiny size, through the loop's pieces.

  python benchmarks/bench_async_loop.py --configs=base:tiny,memory_synthetic:tiny

For each config, the loop's jitted step variants (`loop.jit_train_steps`) run --steps steps on
the real input pipeline (the config's synthetic scenes, prepared into --data_dir) three ways,
alternated --repeats times in one process:
  async+prefetch  the loop: batches sent one step ahead (`parallel.prefetch_global_batches`),
                  no device value read until the end;
  async           each batch sent when its step starts, no read;
  sync            as async, plus a read of the health flags after every step (what the loop did
                  before issue #10 with the loss: the host waits for every step).
Prints the median milliseconds per step (wall time of the steps / steps, the last one waited
for) and steps per second.
"""

import functools
import importlib
import itertools
import os
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import jax

sys.path.insert(0, __file__.rsplit("/benchmarks/", 1)[0])
from gmsrm_jax.data import pipeline  # pylint: disable=g-import-not-at-top
from gmsrm_jax.data.prepare import prepare  # pylint: disable=g-import-not-at-top
from gmsrm_jax.train import health  # pylint: disable=g-import-not-at-top
from gmsrm_jax.train import loop  # pylint: disable=g-import-not-at-top
from gmsrm_jax.train import parallel  # pylint: disable=g-import-not-at-top
from gmsrm_jax.train import tasks  # pylint: disable=g-import-not-at-top

_CONFIGS = flags.DEFINE_list("configs", ["base:tiny", "memory_synthetic:tiny"],
                             "configs/<module>:<variant> to measure.")
_STEPS = flags.DEFINE_integer("steps", 200, "Steps per measurement.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Measurements per mode (alternated).")
_DATA_DIR = flags.DEFINE_string("data_dir", os.path.join(tempfile.gettempdir(), "bench_data"),
                                "Where the configs' synthetic scenes are prepared.")

MODES = ("async+prefetch", "async", "sync")


def _config(name: str):
  module, _, variant = name.partition(":")
  config = importlib.import_module(f"configs.{module}").get_config(variant)
  config.data.data_dir = _DATA_DIR.value
  prepare(config.data.name, config.data.builder_config, _DATA_DIR.value)
  return config


def bench(name: str) -> dict[str, list[float]]:
  """Seconds per step of each mode, one entry per repeat."""
  config = _config(name)
  mesh = parallel.make_mesh()
  task = tasks.get(config)
  components = task.create_components(config)
  state = parallel.create_sharded(loop.init_function(config, task, components), mesh)
  loss_networks = loop.load_loss_networks(config, task, mesh)
  train_steps = loop.jit_train_steps(config, task, components, mesh)
  device_health = jax.device_put(health.initial(state), parallel.replicated(mesh))
  step = 0

  def run(mode: str, num_steps: int) -> float:
    nonlocal state, device_health, step
    local = pipeline.create_train_iterator(config, start_step=step)
    # The first batch before the clock starts: grain starts its threads at the first request.
    local = itertools.islice(itertools.chain([next(local)], local), num_steps)
    if mode == "async+prefetch":
      batches = parallel.prefetch_global_batches(local, mesh)
    else:
      batches = map(functools.partial(parallel.global_batch, mesh=mesh), local)
    start = time.perf_counter()
    for batch in batches:
      step_fn = train_steps[task.variant_for_step(config, step)]
      state, _, device_health = step_fn(state, batch, loss_networks, device_health)
      if mode == "sync":
        jax.device_get(device_health)
      step += 1
    jax.block_until_ready(state)
    return (time.perf_counter() - start) / num_steps

  # Compiles every variant and fills the input pipeline's threads once.
  run("async", len(train_steps) * 4)
  times = {mode: [] for mode in MODES}
  for _ in range(_REPEATS.value):
    for mode in MODES:
      times[mode].append(run(mode, _STEPS.value))
  return times


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, load average "
        f"{os.getloadavg()[0]:.1f}; {_STEPS.value} steps x {_REPEATS.value} repeats")
  print(f"{'config':>24} {'mode':>15} {'ms/step':>9} {'steps/s':>8}   all ms/step")
  for name in _CONFIGS.value:
    for mode, seconds in bench(name).items():
      median = statistics.median(seconds)
      print(f"{name:>24} {mode:>15} {1e3 * median:>9.2f} {1 / median:>8.1f}   "
            + " ".join(f"{1e3 * s:.2f}" for s in seconds), flush=True)


if __name__ == "__main__":
  app.run(main)
