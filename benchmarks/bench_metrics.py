"""Times the jitted evaluation metrics on one batch.

Run:
  python benchmarks/bench_metrics.py --batch=8 --size=256

Prints compile time and the median steady-state time of each metric and of compute_all, then
the time of SSIM as a training loss (value and gradient, `loss.ssim_weight`) with the
evaluation's centred moments and with the one-pass matrix-product form the loss uses.
Reference (2-core CPU, batch 8 at 256x256x3): compute_all ~0.2-0.45 s depending on machine
load, of which SSIM (two-pass variances, 121 shifted terms) is ~80%; see docs/METRICS.md.
"""

import argparse
import statistics
import time

import jax
import numpy as np

from gmsrm_jax import metrics


def _time(fn, *args, repeats: int) -> tuple[float, float]:
  """Returns (compile + first call, median of `repeats` later calls) in seconds."""
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return first, statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--size", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()

  rng = np.random.default_rng(0)
  shape = (args.batch, args.size, args.size, 3)
  # Device-resident inputs, so the timings exclude the host-to-device copy.
  pred = jax.device_put(rng.random(shape, dtype=np.float32))
  target = jax.device_put(rng.random(shape, dtype=np.float32))
  print(f"{jax.devices()[0].platform} x{jax.device_count()}, batch {shape}")
  for name in ("compute_all", "psnr", "ssim", "ncc", "lmse", "l1"):
    first, steady = _time(jax.jit(getattr(metrics, name)), pred, target, repeats=args.repeats)
    print(f"{name:12s} compile+first {first:6.2f} s   run {steady * 1e3:8.1f} ms   "
          f"({steady * 1e3 / args.batch:.2f} ms/image)")
  for centred in (True, False):
    loss = lambda p, centred=centred: 1.0 - jax.numpy.mean(
        metrics.ssim(p, target, centred_moments=centred))
    first, steady = _time(jax.jit(jax.value_and_grad(loss)), pred, repeats=args.repeats)
    print(f"ssim loss + gradient, centred_moments={centred!s:5s} compile+first {first:6.2f} s"
          f"   run {steady * 1e3:8.1f} ms")


if __name__ == "__main__":
  main()
