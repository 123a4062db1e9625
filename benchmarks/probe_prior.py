"""The parameter-free prior against scikit-image's biharmonic inpainting, no training.

  python benchmarks/probe_prior.py [--split='train[3744:]'] [--bins=20-30,40-50,50-60]
      [--variants=32:0,32:64,32:256]

For each mask bin of the base demo's evaluation (its first 64 images of `--split`, one fixed
mask each), prints the PSNR / SSIM of biharmonic inpainting and of `models.base.pyramid_fill`
with J Jacobi and R biharmonic Richardson steps per pyramid level (`J:R`), composited the same
way. DESIGN Q11 quotes its output. Then, per variant, the median time of one call on a
training batch of those images (--time_batch of them; the cost a train step pays for the
prior; docs/PERFORMANCE.md).
"""

import statistics
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, __file__.rsplit("/benchmarks/", 1)[0])

_SPLIT = flags.DEFINE_string("split", "train[3744:]", "Images (a validation split by default).")
_BINS = flags.DEFINE_list("bins", ["20-30", "40-50", "50-60"], "Mask bins.")
_VARIANTS = flags.DEFINE_list("variants", ["32:0", "32:64", "32:256"],
                              "Jacobi:Richardson steps per level.")
_IMAGES = flags.DEFINE_integer("num_images", 64, "Images per bin.")
_TIME_BATCH = flags.DEFINE_integer("time_batch", 16, "Images per timed call (0: no timing).")


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from configs import base as base_config  # pylint: disable=g-import-not-at-top
  from gmsrm_jax import baselines  # pylint: disable=g-import-not-at-top
  from gmsrm_jax import metrics  # pylint: disable=g-import-not-at-top
  from gmsrm_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from gmsrm_jax.models import base  # pylint: disable=g-import-not-at-top

  config = base_config.get_config("demo")
  config.data.eval_split = _SPLIT.value

  def scores(output, image):  # The means of evaluation's per-image PSNR and SSIM.
    output, image = metrics.to_unit(output), metrics.to_unit(image)
    return float(np.mean(metrics.psnr(output, image))), float(np.mean(metrics.ssim(output, image)))

  fills = {v: jax.jit(lambda i, m, j=int(v.split(":")[0]), r=int(v.split(":")[1]):
                      base.composite(base.pyramid_fill(i, m, j, r), i, m))
           for v in _VARIANTS.value}
  for bin_name in _BINS.value:
    batches = list(pipeline.create_eval_iterator(config, mask_spec=("bin", bin_name),
                                                 num_images=_IMAGES.value))
    real = np.concatenate([np.asarray(b["weight"]) > 0 for b in batches])
    image = np.concatenate([np.asarray(b["image"]) for b in batches])[real]
    mask = np.concatenate([np.asarray(b["mask"]) for b in batches])[real]
    row = {"biharmonic": scores(baselines.inpaint("biharmonic", image, mask), image)}
    row.update({f"prior {v}": scores(fill(image, mask), image) for v, fill in fills.items()})
    print(f"{bin_name}: " + "  ".join(f"{k} {p:.2f} / {s:.4f}" for k, (p, s) in row.items()),
          flush=True)
  if _TIME_BATCH.value:
    image, mask = image[:_TIME_BATCH.value], mask[:_TIME_BATCH.value]
    for variant, fill in fills.items():
      seconds = []
      for _ in range(21):
        start = time.perf_counter()
        jax.block_until_ready(fill(image, mask))
        seconds.append(time.perf_counter() - start)
      print(f"prior {variant}: {1e3 * statistics.median(seconds[1:]):.1f} ms per call on "
            f"{len(image)} images of {image.shape[1]}x{image.shape[2]}", flush=True)


if __name__ == "__main__":
  app.run(main)
