"""Inpainting latency and throughput through the one-call API (gmsrm_jax.inpaint.Inpainter).

  python benchmarks/bench_inpaint.py --variants=demo,paper --sizes=256,512 --batches=1,16
  ("paper" is configs/base.py without a variant: the paper-width base network)

Per variant, size and batch: the first call (compilation included) and the median of --calls
warm calls, in seconds, and warm images per second. uint8 images with a centred hole of a
quarter of the area; random weights (the speed does not depend on the values). Runs on the
default device, with what else runs on the machine: note the load next to the numbers.
"""

import statistics
import sys
import time

from absl import app
from absl import flags
import jax
import numpy as np

sys.path.insert(0, __file__.rsplit("/benchmarks/", 1)[0])
from configs import base as base_config  # pylint: disable=g-import-not-at-top
from gmsrm_jax import inpaint  # pylint: disable=g-import-not-at-top
from gmsrm_jax import models  # pylint: disable=g-import-not-at-top

_VARIANTS = flags.DEFINE_list("variants", ["demo", "paper"], "configs/base.py variants.")
_SIZES = flags.DEFINE_list("sizes", ["256", "512"], "Square image sizes.")
_BATCHES = flags.DEFINE_list("batches", ["1", "16"], "Batch sizes.")
_CALLS = flags.DEFINE_integer("calls", 3, "Timed warm calls per case.")


def inpainter(variant: str) -> inpaint.Inpainter:
  config = base_config.get_config("" if variant == "paper" else variant)
  size = config.data.crop_size
  zeros = np.zeros((1, size, size, 3), np.float32)
  variables = jax.jit(lambda key: models.create_generator(config.model).init(
      {"params": key, "noise": key}, zeros, zeros[..., :1]))(jax.random.key(0))
  return inpaint.Inpainter(inpaint.Loaded(config, variables, 0, f"random {variant}"))


def bench(model: inpaint.Inpainter, size: int, batch: int) -> dict[str, float]:
  images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
  holes = np.zeros((size, size), bool)
  holes[size // 4:3 * size // 4, size // 4:3 * size // 4] = True
  start = time.perf_counter()
  model(images, holes)
  first = time.perf_counter() - start
  times = []
  for _ in range(_CALLS.value):
    start = time.perf_counter()
    model(images, holes)
    times.append(time.perf_counter() - start)
  warm = statistics.median(times)
  return {"first": first, "warm": warm, "img_per_s": batch / warm}


def main(argv):
  del argv
  print(f"device: {jax.devices()[0].device_kind}, {jax.device_count()} device(s)")
  print("| variant | size | batch | first call (s) | warm call (s) | img/s |")
  print("|---|---|---|---|---|---|")
  for variant in _VARIANTS.value:
    model = inpainter(variant)
    for size in map(int, _SIZES.value):
      for batch in map(int, _BATCHES.value):
        r = bench(model, size, batch)
        print(f"| {variant} | {size} | {batch} | {r['first']:.2f} | {r['warm']:.3f} "
              f"| {r['img_per_s']:.2f} |", flush=True)


if __name__ == "__main__":
  app.run(main)
