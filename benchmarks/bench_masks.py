"""Milliseconds per mask for each generator, single-threaded, with the base config's parameters.

Run from the repository root:
  python benchmarks/bench_masks.py [--iterations 2000] [--sizes 256 64]

The data pipeline's budget is >= 300 images/s per core at 256x256, i.e. 3.3 ms per image for
decode, crop and mask together; a training mask should stay well under 1 ms.
"""

import argparse
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # For `configs`.

from configs import base  # pylint: disable=g-import-not-at-top
from gmsrm_jax import masks  # pylint: disable=g-import-not-at-top

KINDS = ("free_form", "rectangle", "training_mask", "mask_in_bin 50-60")


def _generator(kind: str, size: int, config):
  rng = np.random.default_rng(0)
  counter = iter(range(10**9))
  if kind == "free_form":
    return lambda: masks.free_form_mask(rng, size, **config.free_form)
  if kind == "rectangle":
    return lambda: masks.rectangle_mask(rng, size, **config.rect)
  if kind == "training_mask":
    return lambda: masks.training_mask(config, size, seed=0, step=0, index=next(counter))
  if kind == "mask_in_bin 50-60":
    return lambda: masks.mask_in_bin(config, size, seed=0, index=next(counter),
                                     bin_name="50-60")
  raise ValueError(kind)


def benchmark(sizes=(256, 64), iterations: int = 2000) -> dict[tuple[str, int], float]:
  """{(kind, size): milliseconds per mask}."""
  config = base.get_config().masks
  timings = {}
  for size in sizes:
    for kind in KINDS:
      make = _generator(kind, size, config)
      make()  # Warm-up: first-call imports and allocations.
      start = time.perf_counter()
      for _ in range(iterations):
        make()
      timings[(kind, size)] = (time.perf_counter() - start) / iterations * 1e3
  return timings


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--iterations", type=int, default=2000)
  parser.add_argument("--sizes", type=int, nargs="+", default=[256, 64])
  args = parser.parse_args(argv)
  for (kind, size), ms in benchmark(tuple(args.sizes), args.iterations).items():
    print(f"{kind:<20} {size:>4}x{size:<4} {ms:7.3f} ms/mask  ({1e3 / ms:8.0f} masks/s)")


if __name__ == "__main__":
  main()
