"""Compile time of every model family at 256²: the state's init and the train step the loop runs.

  python benchmarks/bench_compile.py                      # all four families, cache off
  python benchmarks/bench_compile.py --families=memory --compilation_cache_dir=/tmp/jax_cache

Each family runs in a fresh process (JAX keeps compiled pieces in memory, so a second family
in one process would be measured warm). Per family: "init" is trace + compile of the jitted
init (`loop.init_function`, replicated outputs), "step" is trace + compile of each step
variant the loop jits (`loop.jit_train_steps`: the step with its health update, donation and
shardings), on abstract inputs, so nothing runs and no data or weight file is needed (the
frozen loss networks, e.g. VGG-19, enter as shapes). With --compilation_cache_dir each family
is measured twice, cold then warm (the second process finds the first one's executables).

Families: base (configs/base.py), unet_cicm (configs/unet_cicm.py), memory (stage 1,
configs/memory_places2.py) and gmsrm (stage 2, configs/gmsrm.py:places2; its memory is the
randomly initialised one, as in benchmarks/bench_gmsrm.py).
"""

import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, __file__.rsplit("/benchmarks/", 1)[0])

FAMILIES = {"base": "configs.base:", "unet_cicm": "configs.unet_cicm:",
            "memory": "configs.memory_places2:", "gmsrm": "configs.gmsrm:places2"}

_FAMILIES = flags.DEFINE_list("families", list(FAMILIES), "Families to measure.")
_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir", "",
    "If set: train.compilation_cache_dir for the measurement, run cold then warm.")
_ONE = flags.DEFINE_string("one", "", "Internal: measure this family in this process.")


def _config(family: str):
  import importlib  # pylint: disable=g-import-not-at-top
  module, variant = FAMILIES[family].split(":")
  return importlib.import_module(module).get_config(variant or None)


def _abstract_loss_networks(task, config, sharding):
  """The loss networks' shapes (VGG-19 for GM-SRM's eq. 11) without reading a weights file."""
  import jax  # pylint: disable=g-import-not-at-top
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  from gmsrm_jax import objectives  # pylint: disable=g-import-not-at-top
  from gmsrm_jax import weights  # pylint: disable=g-import-not-at-top
  del task
  if not config.loss.get("perceptual_weight", 0.0):
    return {}
  flat = {path: jax.ShapeDtypeStruct(shape, jax.numpy.float32, sharding=sharding)
          for path, shape in weights.expected_shapes(objectives.VGG19).items()}
  return {objectives.VGG19: traverse_util.unflatten_dict(flat, sep="/")}


def measure(family: str) -> dict[str, list[float]]:
  """Seconds to trace and compile the init and each step variant of `family` (`_compile`)."""
  import jax  # pylint: disable=g-import-not-at-top
  from gmsrm_jax.train import health  # pylint: disable=g-import-not-at-top
  from gmsrm_jax.train import loop  # pylint: disable=g-import-not-at-top
  from gmsrm_jax.train import parallel  # pylint: disable=g-import-not-at-top
  from gmsrm_jax.train import tasks  # pylint: disable=g-import-not-at-top

  config = _config(family)
  config.train.compilation_cache_dir = _CACHE_DIR.value
  mesh = parallel.make_mesh()
  task = tasks.get(config)
  components = task.create_components(config)
  replicated = parallel.replicated(mesh)
  result = {}
  with loop.compilation_cache(config.train.compilation_cache_dir):
    init_fn, abstract = loop.abstract_train_state(config, task, components, mesh)
    _compile(result, "init", jax.jit(init_fn, out_shardings=replicated))
    size, batch_size = config.data.crop_size, config.train.batch_size
    batch_sharding = parallel.batch_sharded(mesh)
    batch = {"image": jax.ShapeDtypeStruct((batch_size, size, size, 3), jax.numpy.float32,
                                           sharding=batch_sharding),
             "mask": jax.ShapeDtypeStruct((batch_size, size, size, 1), jax.numpy.float32,
                                          sharding=batch_sharding)}
    device_health = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
        jax.eval_shape(health.initial, abstract))
    loss_networks = _abstract_loss_networks(task, config, replicated)
    steps = loop.jit_train_steps(config, task, components, mesh)
    for name, step in steps.items():
      _compile(result, f"step {name}" if len(steps) > 1 else "step", step, abstract, batch,
               loss_networks, device_health)
  return result


def _compile(result: dict[str, list[float]], name: str, jitted, *args) -> None:
  """result[name] = [wall s, CPU s of this process (all threads), wall s of trace + lower]."""
  wall, cpu = time.perf_counter(), time.process_time()
  lowered = jitted.lower(*args)
  lowered_wall = time.perf_counter() - wall
  lowered.compile()
  result[name] = [time.perf_counter() - wall, time.process_time() - cpu, lowered_wall]


def _run_child(family: str) -> dict[str, list[float]]:
  output = subprocess.run(
      [sys.executable, __file__, f"--one={family}",
       f"--compilation_cache_dir={_CACHE_DIR.value}"],
      check=True, capture_output=True, text=True).stdout
  return json.loads(output.strip().splitlines()[-1])


def main(argv):
  del argv
  if _ONE.value:
    print(json.dumps(measure(_ONE.value)))
    return
  import jax  # pylint: disable=g-import-not-at-top
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, load average "
        f"{os.getloadavg()[0]:.1f}; seconds of trace + compile, wall (CPU of the process; wall of "
        "trace + lower)")
  runs = ("cold", "warm") if _CACHE_DIR.value else ("",)
  for family in _FAMILIES.value:
    for run in runs:
      result = _run_child(family)
      wall, cpu = (sum(times[i] for times in result.values()) for i in (0, 1))
      parts = ", ".join(f"{name} {w:.1f} ({c:.1f}; lower {l:.1f})"
                        for name, (w, c, l) in result.items())
      print(f"{family:>10} {run:>5} {FAMILIES[family]:<24} total {wall:6.1f} ({cpu:.1f}): "
            f"{parts}; load {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
  app.run(main)
