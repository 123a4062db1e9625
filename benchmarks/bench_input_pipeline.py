"""Input pipeline throughput at 256x256 with masks: images/s and images/s per core.

Run from the repository root:
  python benchmarks/bench_input_pipeline.py [--dataset synthetic|photos] [--num_batches 100]
      [--threads 2 4] [--data_dir DIR]

--dataset synthetic: synthetic_scenes/256 truncated to --num_examples per split (stored
  384x320 PNG).
--dataset photos: image_folder/256 made from scikit-image's bundled photographs (astronaut,
  coffee, rocket, ...; offline), each saved under several crops so the folder holds
  --num_examples files; prepared as usual (shorter side 320, JPEG q95).
The dataset goes into a temporary data_dir unless --data_dir already holds one. Then the real
training iterator of configs/base.py (resize shorter side to 320, random 256 crop, flip,
training mask, global batch 8, one process) is timed after a warm-up. The single-threaded
cost of each stage is printed too: where to look when the target (>= 300 images/s per core)
is missed.
"""

import argparse
import os
import pathlib
import resource
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


_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
           "immunohistochemistry", "retina")


def _photo_folder(directory: pathlib.Path, count: int) -> None:
  """`count` JPEGs (quality 90, like typical camera files) cut from scikit-image's photos."""
  import skimage.data  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  photos = [getattr(skimage.data, name)() for name in _PHOTOS]
  rng = np.random.default_rng(0)
  directory.mkdir(parents=True, exist_ok=True)
  for i in range(count):
    photo = photos[i % len(photos)]
    height, width = photo.shape[:2]
    # Random crops of at least 280 pixels a side, so every file passes min_side=256.
    crop_h = int(rng.integers(min(280, height), height + 1))
    crop_w = int(rng.integers(min(280, width), width + 1))
    top, left = int(rng.integers(0, height - crop_h + 1)), int(rng.integers(0, width - crop_w + 1))
    Image.fromarray(photo[top:top + crop_h, left:left + crop_w]).save(
        directory / f"photo{i:05d}.jpg", quality=90)


def prepare_dataset(dataset: str, data_dir: str, num_examples: int) -> str:
  """Prepares the benchmark dataset; returns its name."""
  if dataset == "synthetic":
    prepare("synthetic_scenes", "256", data_dir, max_examples_per_split=num_examples)
    return "synthetic_scenes"
  folder = pathlib.Path(data_dir) / "photos_manual"
  if not folder.exists():
    _photo_folder(folder, num_examples)
  prepare("image_folder", "256", data_dir, str(folder))
  return "image_folder"


def _config(name: str, data_dir: str, threads: int):
  config = base.get_config()  # Paper setting: 320 -> 256 crops, batch 8.
  config.data.name = name
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
  timed("decode", lambda i: decode.decode_pil(encoded[i]))
  decoded = [decode.decode_pil(b) for b in encoded]
  timed("resize+crop+flip+float", lambda i: preprocess.train_image(
      decoded[i], resize_shorter=data.resize_shorter, crop_size=data.crop_size,
      random_flip=True, rng=np.random.default_rng(i)))
  timed("training mask", lambda i: masks.training_mask(config.masks, data.crop_size, seed=0,
                                                       step=0, index=i))
  return timings


def throughput(config, num_batches: int, warmup: int = 5) -> tuple[float, float]:
  """(images per second, images per CPU-second) of the training iterator, after a warm-up.

  Images per CPU-second divides by the CPU time this process actually used (all threads), so
  it stays meaningful on a shared machine where other work steals cores.
  """
  iterator = pipeline.create_train_iterator(config, start_step=0, process_index=0,
                                            process_count=1)
  for _ in range(warmup):
    next(iterator)
  cpu_start, start = _cpu_seconds(), time.perf_counter()
  for _ in range(num_batches):
    batch = next(iterator)
  elapsed, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
  assert batch["image"].shape[1:] == (256, 256, 3) and batch["mask"].shape[1:] == (256, 256, 1)
  images = num_batches * config.train.batch_size
  return images / elapsed, images / cpu


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dataset", choices=("synthetic", "photos"), default="synthetic")
  parser.add_argument("--num_batches", type=int, default=100)
  parser.add_argument("--num_examples", type=int, default=512,
                      help="synthetic: examples per split; photos: files in the folder.")
  parser.add_argument("--threads", type=int, nargs="+", default=None,
                      help="Grain thread counts to try (default: the number of cores).")
  parser.add_argument("--data_dir", default="", help="Reuse a prepared data_dir.")
  args = parser.parse_args(argv)
  cores = os.cpu_count() or 1
  with tempfile.TemporaryDirectory() as scratch:
    data_dir = args.data_dir or scratch
    start = time.perf_counter()
    name = prepare_dataset(args.dataset, data_dir, args.num_examples)
    print(f"prepared/loaded {name}/256 in {time.perf_counter() - start:.1f} s")
    config = _config(name, data_dir, cores)
    print("single-threaded stage costs (ms/image):")
    for name, ms in stage_costs(config).items():
      print(f"  {name:24s} {ms:6.2f}")
    for threads in args.threads or [cores]:
      config.data.num_threads = threads
      rate, per_cpu_second = throughput(config, args.num_batches)
      print(f"threads={threads:2d} cores={cores}: {rate:6.0f} images/s = {rate / cores:4.0f} "
            f"per core; {per_cpu_second:4.0f} images per CPU-second used (target >= 300)")


if __name__ == "__main__":
  main()
