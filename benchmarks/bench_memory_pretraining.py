"""Stage-1 (generative memory) step cost, phase by phase: G main, G path length, D main, D R1.

  python benchmarks/bench_memory_pretraining.py --configs=memory_synthetic:tiny,memory_synthetic
  python benchmarks/bench_memory_pretraining.py --configs=memory_places2 --notime
  python benchmarks/bench_memory_pretraining.py --configs=memory_places2 --nocompile

For each config: every phase jitted on its own and each variant of the train step (the lazy
phases it runs: "pl+r1", "plain", "pl", "r1"; `mp.step_variants`), on this machine's default
device, batch = config.train.batch_size. Prints compile seconds, the median seconds per call
over --steps timed calls after a warm-up (skipped with --notime, e.g. for 256x256 on a CPU),
and XLA's cost-analysis FLOPs per image (of the compiled program; with --nocompile, of the
lowered one: seconds instead of minutes at 256², nothing compiled or run), then the amortised
FLOPs per step: the variants weighted by how often steps pick them over one period of the
intervals.
"""

import collections
import functools
import importlib
import math
import statistics
import sys
import time

from absl import app
from absl import flags
import jax
import numpy as np

sys.path.insert(0, __file__.rsplit("/benchmarks/", 1)[0])
from gmsrm_jax.train import memory_pretraining as mp  # pylint: disable=g-import-not-at-top

_CONFIGS = flags.DEFINE_list("configs", ["memory_synthetic:tiny", "memory_synthetic"],
                             "configs/<module>[:variant] to measure.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed calls per phase.")
_TIME = flags.DEFINE_bool("time", True, "Run the phases (not only compile + cost analysis).")
_COMPILE = flags.DEFINE_bool("compile", True,
                             "Compile; --nocompile: FLOPs of the lowered programs only.")

PHASES = (("G main", mp.generator_main), ("G path length", mp.generator_path_length),
          ("D main", mp.discriminator_main), ("D R1", mp.discriminator_r1))


def _config(name: str):
  module, _, variant = name.partition(":")
  return importlib.import_module(f"configs.{module}").get_config(variant)


def _measure(fn, args, timed: bool) -> dict[str, float]:
  jitted = jax.jit(fn)
  if not _COMPILE.value:
    return {"compile_s": float("nan"), "flops": jitted.lower(*args).cost_analysis()["flops"]}
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  result = {"compile_s": time.perf_counter() - start,
            "flops": (compiled.cost_analysis() or {}).get("flops", float("nan"))}
  if timed:
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(_STEPS.value):
      start = time.perf_counter()
      jax.block_until_ready(compiled(*args))
      times.append(time.perf_counter() - start)
    result["call_s"] = statistics.median(times)
  return result


def bench(name: str) -> list[tuple[str, dict[str, float]]]:
  config = _config(name)
  batch, size = config.train.batch_size, config.data.crop_size
  components = mp.create_components(config)
  init = functools.partial(mp.init_state, components, config, jax.random.PRNGKey(0))
  real = jax.numpy.asarray(np.random.default_rng(0).uniform(-1, 1, (batch, size, size, 3)),
                           jax.numpy.float32)
  if _COMPILE.value:
    state = jax.jit(init)()
  else:
    state, real = jax.eval_shape(init), jax.ShapeDtypeStruct(real.shape, real.dtype)
  key = jax.random.PRNGKey(1)
  timed = _TIME.value and _COMPILE.value
  rows = []
  for label, phase in PHASES:
    rows.append((label, _measure(functools.partial(phase, components, config),
                                 (state, real, key), timed)))
  for name, step in mp.step_variants(config).items():
    rows.append((f"step {name}", _measure(functools.partial(step, components, config),
                                          (state, {"image": real}), timed)))
  for _, row in rows:
    row["gflop_per_image"] = row["flops"] / batch / 1e9
  return rows


def amortised_gflop_per_image(config, rows) -> float:
  """The variants' FLOPs weighted by how often a step picks each (one period of intervals)."""
  period = math.lcm(*mp.lazy_phases(config).values())
  picks = collections.Counter(mp.pick_variant(config, step) for step in range(period))
  per_variant = {label.removeprefix("step "): row["gflop_per_image"] for label, row in rows}
  return sum(count * per_variant[name] for name, count in picks.items()) / period


def main(argv):
  del argv
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}")
  for name in _CONFIGS.value:
    config = _config(name)
    print(f"\n{name}: {config.data.crop_size}x{config.data.crop_size}, batch "
          f"{config.train.batch_size}, pl every {config.loss.pl_interval}, R1 every "
          f"{config.loss.r1_interval}")
    print(f"{'phase':>14} {'compile s':>10} {'s/call':>8} {'GFLOP/img':>10}")
    rows = bench(name)
    for label, row in rows:
      call = f"{row['call_s']:8.4f}" if "call_s" in row else f"{'-':>8}"
      compile_s = f"{row['compile_s']:10.2f}" if _COMPILE.value else f"{'-':>10}"
      print(f"{label:>14} {compile_s} {call} {row['gflop_per_image']:>10.3f}")
    print(f"amortised step: {amortised_gflop_per_image(config, rows):.3f} GFLOP/img")


if __name__ == "__main__":
  app.run(main)
