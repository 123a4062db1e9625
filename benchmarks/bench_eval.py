"""Evaluation throughput with and without LPIPS / FID, and the cost of each feature network.

  python benchmarks/bench_eval.py --variant= --batch=8     # the paper's 256x256 base model
  python benchmarks/bench_eval.py --variant=demo --batch=16

Random weights (the cost of a network does not depend on its values). Prints, for the jitted
per-batch evaluation function (`evaluation.batch_metrics`: generator forward, composite,
PSNR/SSIM/NCC/LMSE/L1, then optionally LPIPS-Alex and the FID Inception features of the
output): compile seconds and steady-state images per second. Then the feature networks alone
(seconds per image; FID resizes every image to 299x299, so its cost is the same at any input
size), and the host-side Fréchet distance at D = 2048 by both routes of
`fid.fid_from_statistics`.
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
from gmsrm_jax import evaluation  # pylint: disable=g-import-not-at-top
from gmsrm_jax import weights  # pylint: disable=g-import-not-at-top
from gmsrm_jax.features import fid  # pylint: disable=g-import-not-at-top
from gmsrm_jax.features import inception  # pylint: disable=g-import-not-at-top
from gmsrm_jax.features import lpips  # pylint: disable=g-import-not-at-top
from gmsrm_jax.train import parallel  # pylint: disable=g-import-not-at-top
from gmsrm_jax.train import tasks  # pylint: disable=g-import-not-at-top

_VARIANT = flags.DEFINE_string("variant", "", "configs/base.py variant ('' = paper 256x256).")
_BATCH = flags.DEFINE_integer("batch", 8, "Evaluation batch size.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls after one warm-up.")


def _time(compiled, *args) -> float:
  """Median seconds of `repeats` calls after a warm-up call."""
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _compile(fn, *args):
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  return compiled, time.perf_counter() - start


def main(argv):
  del argv
  config = base_config.get_config(_VARIANT.value)
  batch_size, size = _BATCH.value, config.data.crop_size
  mesh = parallel.make_mesh()
  task = tasks.get(config)
  components = task.create_components(config)
  state = parallel.create_sharded(
      functools.partial(task.init_state, components, config, jax.random.key(0)), mesh)
  rng = np.random.default_rng(0)
  batch = jax.device_put({
      "image": rng.uniform(-1, 1, (batch_size, size, size, 3)).astype(np.float32),
      "mask": (rng.uniform(size=(batch_size, size, size, 1)) < 0.3).astype(np.float32),
      "weight": np.ones((batch_size,), np.float32)}, parallel.batch_sharded(mesh))
  replicated = parallel.replicated(mesh)
  lpips_params = jax.device_put(weights.random_params("lpips_alex"), replicated)
  fid_params = jax.device_put(weights.random_params("inception_fid"), replicated)
  print(f"{jax.devices()[0].platform} x{jax.device_count()}, variant {_VARIANT.value!r}, "
        f"batch {batch_size} at {size}x{size}")

  base_rate = None
  for name, with_lpips, with_fid in (("metrics only", False, False), ("+ LPIPS", True, False),
                                     ("+ FID", False, True), ("+ LPIPS + FID", True, True)):
    fn = functools.partial(evaluation.batch_metrics, components, "alex",
                           inception.FID_IMAGE_SIZE)
    args = (state.ema_params, state.g_state, lpips_params if with_lpips else None,
            fid_params if with_fid else None, batch)
    compiled, compile_s = _compile(fn, *args)
    rate = batch_size / _time(compiled, *args)
    base_rate = base_rate or rate
    print(f"eval step {name:14s} compile {compile_s:6.1f} s   {rate:7.2f} img/s   "
          f"({base_rate / rate:.2f}x the time of metrics only)")

  images = batch["image"]
  for name, fn, args in (
      ("LPIPS-Alex", functools.partial(lpips.lpips_distance, net="alex"),
       (lpips_params, images, images)),
      ("FID Inception (299)", functools.partial(inception.fid_features,
                                                image_size=inception.FID_IMAGE_SIZE),
       (fid_params, images))):
    compiled, compile_s = _compile(fn, *args)
    seconds = _time(compiled, *args)
    print(f"{name:20s} compile {compile_s:6.1f} s   {1e3 * seconds / batch_size:7.1f} ms/image")

  for count in (1000, 3000):
    real, fake = fid.FeatureStatistics(2048), fid.FeatureStatistics(2048)
    real.update(np.abs(rng.normal(size=(count, 2048))))
    fake.update(np.abs(rng.normal(size=(count, 2048))) + 0.01)
    start = time.perf_counter()
    fid.fid_from_statistics(real, fake)
    first = time.perf_counter() - start
    start = time.perf_counter()
    fid.fid_from_statistics(real, fake)  # The real set's square root is cached by now.
    again = time.perf_counter() - start
    route = "N x N (rows kept)" if count <= 2048 else "D x D"
    print(f"Frechet distance, {count} vs {count} images, {route}: first {first:.2f} s, "
          f"next setting {again:.2f} s")


if __name__ == "__main__":
  app.run(main)
