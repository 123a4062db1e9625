"""Train-step time and compile time of a config on this machine's default device.

  python benchmarks/bench_train_step.py --variants=tiny,demo,
  (an empty variant name is the paper-scale 256x256 config)
  python benchmarks/bench_train_step.py --variants=demo --compute_dtypes=float32,bfloat16

Prints, per variant and compute dtype (`config.train.compute_dtype`): compile seconds (lower +
compile of the jitted step), then the median seconds per step over --steps timed steps after
one warm-up, and images per second.
"""

import functools
import statistics
import sys
import time

from absl import app
from absl import flags
import jax
import numpy as np

sys.path.insert(0, __file__.rsplit("/benchmarks/", 1)[0])
from configs import base as base_config  # pylint: disable=g-import-not-at-top
from gmsrm_jax.train import parallel  # pylint: disable=g-import-not-at-top
from gmsrm_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
from gmsrm_jax.train import step as step_lib  # pylint: disable=g-import-not-at-top

_VARIANTS = flags.DEFINE_list("variants", ["tiny", "demo", ""], "configs/base.py variants.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per variant.")
_COMPUTE_DTYPES = flags.DEFINE_list("compute_dtypes", ["float32"],
                                    "config.train.compute_dtype values to time.")


def bench(variant: str, compute_dtype: str = "float32") -> dict[str, float]:
  config = base_config.get_config(variant)
  config.train.compute_dtype = compute_dtype
  return bench_config(config)


def bench_config(config) -> dict[str, float]:
  """Compile and step times of `config`'s train step on random data."""
  mesh = parallel.make_mesh()
  size, batch_size = config.data.crop_size, config.train.batch_size
  components = state_lib.create_components(config)
  state = parallel.create_sharded(functools.partial(
      state_lib.init_state, components, jax.random.PRNGKey(0), (1, size, size, 3)), mesh)
  rng = np.random.default_rng(0)
  batch = {"image": rng.uniform(-1, 1, (batch_size, size, size, 3)).astype(np.float32),
           "mask": (rng.uniform(size=(batch_size, size, size, 1)) < 0.3).astype(np.float32)}
  batch = jax.device_put(batch, parallel.batch_sharded(mesh))
  replicated = parallel.replicated(mesh)
  jitted = jax.jit(functools.partial(step_lib.train_step, components, config),
                   in_shardings=(replicated, parallel.batch_sharded(mesh)),
                   out_shardings=(replicated, replicated), donate_argnums=0)
  start = time.perf_counter()
  compiled = jitted.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  flops = (compiled.cost_analysis() or {}).get("flops", float("nan"))
  state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(_STEPS.value):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  step_s = statistics.median(times)
  return {"image": size, "batch": batch_size, "compile_s": compile_s, "step_s": step_s,
          "img_per_s": batch_size / step_s, "gflop_per_step": flops / 1e9}


def main(argv):
  del argv
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}")
  print(f"{'variant':>8} {'dtype':>9} {'image':>6} {'batch':>6} {'compile s':>10} "
        f"{'step s':>8} {'img/s':>8} {'GFLOP/step':>11}")
  for variant in _VARIANTS.value:
    for compute_dtype in _COMPUTE_DTYPES.value:
      r = bench(variant, compute_dtype)
      print(f"{variant or 'paper':>8} {compute_dtype:>9} {r['image']:>6} {r['batch']:>6} "
            f"{r['compile_s']:>10.2f} {r['step_s']:>8.3f} {r['img_per_s']:>8.1f} "
            f"{r['gflop_per_step']:>11.1f}", flush=True)


if __name__ == "__main__":
  app.run(main)
