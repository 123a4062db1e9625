"""Input pipelines: grain over `tfds` array_record data sources (random access).

Training batches are a pure function of (config.seed, step, process slot); see docs/DATA.md:

  * global example position   p = step * global_batch + process_index * local_batch + j
  * epoch, offset             = divmod(p, N);  record = permutation(seed, epoch)[offset]
  * crop/flip RNG and mask    from (seed, step, g) with g = process_index * local_batch + j,
                              the example's index within the GLOBAL batch.

So the step is the whole iterator state: resuming at `start_step=s` replays exactly the
batches an uninterrupted run sees from step s (no repeats, no skips), and a run on P processes
sees the same global batches as on 1 (process i holds rows i*B_local ... (i+1)*B_local - 1).
Each process reads only its own examples. Grain only adds parallelism: a thread pool builds
whole batches ahead of the consumer, delivered in step order.
"""

from collections.abc import Iterator, Mapping, Sequence
import functools
import math
import threading
import zlib

from absl import logging
import grain
import jax
import ml_collections
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from gmsrm_jax import config_checks
from gmsrm_jax import masks
from gmsrm_jax.data import builders
from gmsrm_jax.data import decode
from gmsrm_jax.data import preprocess

# Independent RNG streams, derived from names so they never collide with another module's.
_SHUFFLE_STREAM = zlib.crc32(b"gmsrm_jax.data.shuffle")
_AUGMENT_STREAM = zlib.crc32(b"gmsrm_jax.data.augment")
# A bad record is replaced by the next good one; this many bad records in a row means the
# dataset itself is broken, which should stop the run rather than loop.
_MAX_SUBSTITUTIONS = 64
# Storage damage (changed bytes: the record cannot even be read) is substituted like an
# undecodable image while it is rare; a shard file with more unreadable records than this
# fraction stops the run, naming the file.
MAX_DAMAGED_FRACTION = 0.01
# MapDataset needs a length; training is unbounded in practice (2**62 steps).
_UNBOUNDED = 2**62

Batch = dict[str, np.ndarray]


def _prepared_builder(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  data = config.data
  return builders.load_builder(data.name, data.builder_config, data.data_dir, data.manual_dir)


def open_split(config: ml_collections.ConfigDict, split: str) -> Sequence[Mapping[str, object]]:
  """Random-access records of a prepared split, images left as encoded bytes.

  Raises:
    builders.DatasetNotPreparedError: the dataset was not prepared (the message says how).
  """
  # Our own decoding (not TFDS's) so that a damaged record can be skipped and counted.
  return _prepared_builder(config).as_data_source(
      split, decoders={"image": tfds.decode.SkipDecoding()})


def dataset_info(config: ml_collections.ConfigDict) -> tfds.core.DatasetInfo:
  """TFDS info of the prepared dataset, e.g. `.splits["train"].num_examples`."""
  return _prepared_builder(config).info


def check_prepared(config: ml_collections.ConfigDict, splits: Sequence[str]) -> None:
  """Raises, before any model work, if the dataset is not prepared (DatasetNotPreparedError
  with the command that prepares it) or lacks one of `splits` (ValueError naming the field)."""
  available = dataset_info(config).splits
  for field in splits:
    split = config.data[field]
    try:
      available[split]  # TFDS split strings, slices included: "train[:3744]", "train[90%:]".
    except ValueError as error:
      raise ValueError(f"config.data.{field} = {split!r}: not a split of the prepared dataset "
                       f"{config.data.name}, which has {sorted(available)} (slices such as "
                       f"'train[:90%]' work): {error}") from None


def num_examples(config: ml_collections.ConfigDict, split: str) -> int:
  return dataset_info(config).splits[split].num_examples


class DatasetDamagedError(RuntimeError):
  """Too many records of a prepared dataset cannot be read or decoded; re-prepare it."""


class RobustImages:
  """Decoded RGB images by record index; a record that fails to read or decode is replaced.

  The substitute for a bad record k is the first good record among k+1, k+2, ... (mod N): a
  function of k alone, so substitution keeps runs deterministic and resumable. Every
  substitution is counted in `skipped` and logged (rate-limited). A record that cannot even be
  read (damaged storage) is substituted the same way, counted as corrupt; its shard file is
  then read through once, and more than MAX_DAMAGED_FRACTION unreadable records in it raise
  DatasetDamagedError naming the file and `fix`.

  `shards` are (file, number of records) in record order (TFDS's split info); without them
  the records count as one file named `what`.
  """

  def __init__(self, records: Sequence[Mapping[str, object]], what: str, *,
               shards: Sequence[tuple[str, int]] = (), fix: str = "re-prepare it"):
    if not len(records):
      raise ValueError(f"{what} has no examples.")
    self._records = records
    self.skipped = decode.SkipCounter(what)
    self._shards = list(shards) or [(what, len(records))]
    self._shard_starts = np.cumsum([0] + [count for _, count in self._shards])
    self._fix = fix
    self._lock = threading.Lock()
    self._unreadable = {}  # shard -> (unreadable record indices, over the threshold)

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> Image.Image:
    attempts = min(_MAX_SUBSTITUTIONS, len(self._records))
    for attempt in range(attempts):
      record_index = (index + attempt) % len(self._records)
      try:
        return decode.decode_pil(self._read(record_index))
      except decode.DecodeError as e:
        self.skipped.record(e.reason, f"record {record_index}: {e.detail}")
    raise DatasetDamagedError(f"{attempts} consecutive records from {index} failed to decode; "
                              f"the dataset is damaged: {self._fix}")

  def _read(self, record_index: int) -> bytes:
    try:
      return self._records[record_index]["image"]
    except Exception as error:  # pylint: disable=broad-except
      # array_record reports damaged bytes as RuntimeError ("Corrupted Riegeli/records file:
      # chunk data hash mismatch"), but any failure to read a record means the same.
      shard = int(np.searchsorted(self._shard_starts, record_index, side="right")) - 1
      self._check_shard(shard)
      raise decode.DecodeError(decode.CORRUPT, f"unreadable in {self._shards[shard][0]} "
                               f"({type(error).__name__}: {error})") from error

  def _check_shard(self, shard: int) -> None:
    path, count = self._shards[shard]
    with self._lock:
      if shard not in self._unreadable:
        start = int(self._shard_starts[shard])
        unreadable = []
        for record_index in range(start, start + count):
          try:
            self._records[record_index]
          except Exception:  # pylint: disable=broad-except
            unreadable.append(record_index)
        too_many = len(unreadable) > MAX_DAMAGED_FRACTION * count
        self._unreadable[shard] = unreadable, too_many
        if not too_many:
          logging.error("%s: %d of %d records cannot be read (damaged storage): %s. Each is "
                        "replaced by the next readable record and counted as corrupt.", path,
                        len(unreadable), count, unreadable[:20])
    unreadable, too_many = self._unreadable[shard]
    if too_many:
      raise DatasetDamagedError(
          f"{path}: {len(unreadable)} of {count} records cannot be read, more than the "
          f"{MAX_DAMAGED_FRACTION:.0%} that training substitutes; the prepared dataset is "
          f"damaged: {self._fix}")


def robust_split(config: ml_collections.ConfigDict, split: str) -> RobustImages:
  """RobustImages over a prepared split, with its shard files and the command that rebuilds it."""
  data = config.data
  builder = _prepared_builder(config)
  info = builder.info.splits[split]
  fix = (f"delete {builder.data_dir} and prepare it again:\n  "
         + builders.prepare_command(data.name, data.builder_config, data.data_dir,
                                    data.manual_dir))
  return RobustImages(open_split(config, split), f"{data.name}/{split}",
                      shards=list(zip(map(str, info.filepaths), info.shard_lengths)), fix=fix)


def _process_slot(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count}).")
  return process_index, process_count


def _local_batch_size(global_batch: int, process_count: int, what: str) -> int:
  if global_batch % process_count:
    raise ValueError(f"{what} {global_batch} is not divisible by the {process_count} "
                     "processes; every process must hold the same number of rows.")
  return global_batch // process_count


def _read_options(config: ml_collections.ConfigDict) -> grain.ReadOptions:
  # Elements are whole batches, so the prefetch buffer counts batches, like config.data.prefetch.
  return grain.ReadOptions(num_threads=config.data.num_threads,
                           prefetch_buffer_size=max(1, config.data.prefetch))


def _empty_batch(local_batch: int, crop_size: int) -> Batch:
  return {"image": np.empty((local_batch, crop_size, crop_size, 3), np.float32),
          "mask": np.empty((local_batch, crop_size, crop_size, 1), np.float32)}


class TrainBatches:
  """step -> this process's preprocessed batch of that step, with masks (see module docs).

  One grain element is one whole local batch, built into preallocated arrays: no stacking
  copy, and grain's per-element overhead is paid once per batch. Grain's threads build
  several batches at once (PIL decoding and large NumPy operations release the GIL).
  """

  def __init__(self, images: RobustImages, config: ml_collections.ConfigDict, *,
               process_index: int, local_batch: int):
    self._images = images
    self._config = config
    self._process_index = process_index
    self._local_batch = local_batch
    self._global_batch = config.train.batch_size
    self._seed = config.seed
    if self._seed < 0:
      raise ValueError(f"config.seed must be non-negative, got {self._seed}.")
    preprocess.check_sizes(config.data.resize_shorter, config.data.crop_size)
    # Per instance; two entries because a batch can straddle an epoch boundary.
    self._permutation = functools.lru_cache(maxsize=2)(self._make_permutation)

  def _make_permutation(self, epoch: int) -> np.ndarray:
    rng = np.random.default_rng([self._seed, _SHUFFLE_STREAM, epoch])
    return rng.permutation(len(self._images)).astype(np.int64)

  def record_index(self, step: int, index_in_global_batch: int) -> int:
    position = step * self._global_batch + index_in_global_batch
    epoch, offset = divmod(position, len(self._images))
    return int(self._permutation(epoch)[offset])

  def __call__(self, step: int) -> Batch:
    data = self._config.data
    batch = _empty_batch(self._local_batch, data.crop_size)
    for row in range(self._local_batch):
      index = self._process_index * self._local_batch + row  # Within the global batch.
      image = self._images[self.record_index(step, index)]
      rng = np.random.default_rng([self._seed, _AUGMENT_STREAM, step, index])
      preprocess.train_image(image, resize_shorter=data.resize_shorter,
                             crop_size=data.crop_size, random_flip=data.random_flip, rng=rng,
                             out=batch["image"][row])
      batch["mask"][row, ..., 0] = masks.training_mask(
          self._config.masks, data.crop_size, seed=self._seed, step=step, index=index)
    return batch


def create_train_iterator(config: ml_collections.ConfigDict, *, start_step: int,
                          process_index: int | None = None,
                          process_count: int | None = None) -> Iterator[Batch]:
  """Batches for steps start_step, start_step + 1, ... for this process.

  Each batch: {"image": float32 [B_local, H, W, 3] in [-1, 1], "mask": float32
  [B_local, H, W, 1] with 1 = hole}, B_local = config.train.batch_size // process_count.
  Process i's rows are rows [i * B_local, (i + 1) * B_local) of the global batch.
  """
  process_index, process_count = _process_slot(process_index, process_count)
  local_batch = _local_batch_size(config.train.batch_size, process_count,
                                  "config.train.batch_size")
  images = robust_split(config, config.data.train_split)
  batches = TrainBatches(images, config, process_index=process_index, local_batch=local_batch)
  dataset = (grain.MapDataset.range(start_step, start_step + _UNBOUNDED)
             .map(batches)
             .to_iter_dataset(_read_options(config)))
  return iter(dataset)


def eval_mask_fn(config: ml_collections.ConfigDict, mask_spec: tuple[str, object]):
  """image index -> the fixed float32 [H, W] mask of that image under `mask_spec`.

  ("bin", name): config.eval.mask_dir's MaskFolder if set, else `masks.mask_in_bin` seeded by
  (`eval_mask_seed(config)`, image index); ("center", area_ratio): the centered square hole.
  """
  size = config.data.crop_size
  kind, value = mask_spec
  if kind == "center":
    mask = masks.center_mask(size, float(value))
    return lambda index: mask
  if kind != "bin":
    raise ValueError(f"Unknown mask_spec {mask_spec!r}; use ('bin', name) or ('center', ratio).")
  if value not in masks.HOLE_RATIO_BINS:
    raise ValueError(f"Unknown hole-ratio bin {value!r}; one of {list(masks.HOLE_RATIO_BINS)}.")
  if config.eval.mask_dir:
    folder = _mask_folder(config.eval.mask_dir, size, config.eval.mask_invert)
    return lambda index: folder.mask_for(index, value)
  seed = eval_mask_seed(config)
  return lambda index: masks.mask_in_bin(config.masks, size, seed=seed, index=index,
                                         bin_name=value)


def eval_mask_seed(config: ml_collections.ConfigDict) -> int:
  """The seed of the generated test masks: config.eval.mask_seed, or config.seed where that is
  -1 (and in configs saved before the field existed, which evaluated that way)."""
  seed = config_checks.added_field(config.eval, "eval.mask_seed")
  return config.seed if seed == -1 else seed


@functools.lru_cache(maxsize=2)
def _mask_folder(path: str, size: int, invert: bool) -> masks.MaskFolder:
  # Decoding a folder (12,000 PConv masks) takes a while; an evaluation makes one eval
  # iterator per bin, all sharing the folder.
  return masks.MaskFolder(path, size, invert=invert)


class EvalBatches:
  """Batch b -> test images b*G + i*B_local + row, their fixed masks, indices and weights."""

  def __init__(self, images: RobustImages, config: ml_collections.ConfigDict, mask_fn, *,
               num_images: int, process_index: int, local_batch: int):
    self._images = images
    self._config = config
    self._mask_fn = mask_fn
    self._num_images = num_images
    self._process_index = process_index
    self._local_batch = local_batch
    self._global_batch = config.eval.batch_size
    preprocess.check_sizes(config.data.resize_shorter, config.data.crop_size)

  def __call__(self, batch_index: int) -> Batch:
    data = self._config.data
    batch = _empty_batch(self._local_batch, data.crop_size)
    batch["index"] = np.empty((self._local_batch,), np.int32)
    batch["weight"] = np.empty((self._local_batch,), np.float32)
    for row in range(self._local_batch):
      index = (batch_index * self._global_batch + self._process_index * self._local_batch
               + row)
      real = index < self._num_images
      # Padding repeats image 0 with its mask, so every computation on it stays finite; its
      # weight of 0 removes it from the averages.
      source_index = index if real else 0
      preprocess.eval_image(self._images[source_index], resize_shorter=data.resize_shorter,
                            crop_size=data.crop_size, out=batch["image"][row])
      batch["mask"][row, ..., 0] = self._mask_fn(source_index)
      batch["index"][row] = index if real else -1
      batch["weight"][row] = float(real)
    return batch


def create_eval_iterator(config: ml_collections.ConfigDict, *, mask_spec: tuple[str, object],
                         num_images: int, process_index: int | None = None,
                         process_count: int | None = None) -> Iterator[Batch]:
  """Batches over the first `num_images` test images, each with ONE fixed mask per mask_spec.

  Every process yields ceil(num_images / config.eval.batch_size) batches of B_local =
  config.eval.batch_size // process_count rows (the same count everywhere, so collectives
  line up). Each batch: "image" [B_local, H, W, 3] (center crop), "mask" [B_local, H, W, 1],
  "index" int32 [B_local] (the test image index, -1 for padding) and "weight" float32
  [B_local] (1 real, 0 padding): average metrics as sum(weight * m) / sum(weight).
  """
  process_index, process_count = _process_slot(process_index, process_count)
  local_batch = _local_batch_size(config.eval.batch_size, process_count,
                                  "config.eval.batch_size")
  images = robust_split(config, config.data.eval_split)
  if num_images > len(images):
    logging.warning("Asked for %d test images but %s has %d; using all of them.", num_images,
                    config.data.eval_split, len(images))
  num_images = min(num_images, len(images))
  if num_images <= 0:
    raise ValueError(f"num_images must be positive, got {num_images}.")
  batches = EvalBatches(images, config, eval_mask_fn(config, mask_spec), num_images=num_images,
                        process_index=process_index, local_batch=local_batch)
  num_batches = math.ceil(num_images / config.eval.batch_size)
  dataset = grain.MapDataset.range(num_batches).map(batches).to_iter_dataset(
      _read_options(config))
  return iter(dataset)
