"""Input pipeline throughput at 256x256 with masks: images/s and images/s per core.

Run from the repository root:
  python benchmarks/bench_input_pipeline.py [--num_batches 100] [--threads 2 4] [--data_dir DIR]

Prepares synthetic_scenes/256 truncated to --num_examples per split (stored 384x320, PNG) into
a temporary data_dir unless --data_dir already holds one, then times the real training
iterator of configs/base.py (resize shorter side to 320, random 256 crop, flip, training
mask, global batch 8, one process) after a warm-up. Also prints the single-threaded cost of
each stage, which is where to look when the target (>= 300 images/s per core) is missed.
"""

import argparse
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # For `configs`.

from configs import base  # pylint: disable=g-import-not-at-top
from gmsrm_jax import masks  # pylint: disable=g-import-not-at-top
from gmsrm_jax.data import decode  # pylint: disable=g-import-not-at-top
from gmsrm_jax.data import pipeline  # pylint: disable=g-import-not-at-top
from gmsrm_jax.data import preprocess  # pylint: disable=g-import-not-at-top
from gmsrm_jax.data.prepare import prepare  # pylint: disable=g-import-not-at-top


def _config(data_dir: str, threads: int):
  config = base.get_config()  # Paper setting: 320 -> 256 crops, batch 8.
  config.data.name = "synthetic_scenes"
  config.data.builder_config = "256"
  config.data.data_dir = data_dir
  config.data.num_threads = threads
  return config


def stage_costs(config, count: int = 64) -> dict[str, float]:
  """Milliseconds per image of each stage, single-threaded."""
  records = pipeline.open_split(config, "train")
  encoded = [records[i]["image"] for i in range(min(count, len(records)))]
  data = config.data
  timings = {}

  def timed(name, fn):
    fn(0)
    start = time.perf_counter()
    for i in range(len(encoded)):
      fn(i)
    timings[name] = (time.perf_counter() - start) / len(encoded) * 1e3

  timed("read record", lambda i: records[i]["image"])
  timed("decode PNG 384x320", lambda i: decode.decode_pil(encoded[i]))
  decoded = [decode.decode_pil(b) for b in encoded]
  timed("resize+crop+flip+float", lambda i: preprocess.train_image(
      decoded[i], resize_shorter=data.resize_shorter, crop_size=data.crop_size,
      random_flip=True, rng=np.random.default_rng(i)))
  timed("training mask", lambda i: masks.training_mask(config.masks, data.crop_size, seed=0,
                                                       step=0, index=i))
  return timings


def throughput(config, num_batches: int, warmup: int = 5) -> float:
  """Images per second of the training iterator, after `warmup` batches."""
  iterator = pipeline.create_train_iterator(config, start_step=0, process_index=0,
                                            process_count=1)
  for _ in range(warmup):
    next(iterator)
  start = time.perf_counter()
  for _ in range(num_batches):
    batch = next(iterator)
  elapsed = time.perf_counter() - start
  assert batch["image"].shape[1:] == (256, 256, 3) and batch["mask"].shape[1:] == (256, 256, 1)
  return num_batches * config.train.batch_size / elapsed


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_batches", type=int, default=100)
  parser.add_argument("--num_examples", type=int, default=512,
                      help="Examples per split to prepare (synthetic_scenes/256 truncated).")
  parser.add_argument("--threads", type=int, nargs="+", default=None,
                      help="Grain thread counts to try (default: the number of cores).")
  parser.add_argument("--data_dir", default="", help="Reuse a prepared data_dir.")
  args = parser.parse_args(argv)
  cores = os.cpu_count() or 1
  with tempfile.TemporaryDirectory() as scratch:
    data_dir = args.data_dir or scratch
    start = time.perf_counter()
    prepare("synthetic_scenes", "256", data_dir, max_examples_per_split=args.num_examples)
    print(f"prepared/loaded synthetic_scenes/256 ({args.num_examples} per split) in "
          f"{time.perf_counter() - start:.1f} s")
    config = _config(data_dir, cores)
    print("single-threaded stage costs (ms/image):")
    for name, ms in stage_costs(config).items():
      print(f"  {name:24s} {ms:6.2f}")
    for threads in args.threads or [cores]:
      config.data.num_threads = threads
      rate = throughput(config, args.num_batches)
      print(f"threads={threads:2d} cores={cores}: {rate:7.0f} images/s, "
            f"{rate / cores:6.0f} images/s per core (target >= 300)")


if __name__ == "__main__":
  main()
