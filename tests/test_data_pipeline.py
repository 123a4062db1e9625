"""Preprocessing and the input pipelines: shapes, ranges, determinism, exact resume, sharding."""

import itertools

import numpy as np
from PIL import Image
import pytest

from configs import base
from gmsrm_jax import masks
from gmsrm_jax.data import builders
from gmsrm_jax.data import decode
from gmsrm_jax.data import pipeline
from gmsrm_jax.data import preprocess


@pytest.fixture
def config(tiny_data_dir):
  config = base.get_config("tiny")
  config.data.data_dir = tiny_data_dir
  return config


def _batches(config, start_step, count, **kwargs):
  return list(itertools.islice(
      pipeline.create_train_iterator(config, start_step=start_step, **kwargs), count))


def _gradient_image(width, height):
  xs = np.linspace(0, 255, width)[None, :, None]
  ys = np.linspace(0, 255, height)[:, None, None]
  return Image.fromarray(np.broadcast_to((xs + ys) / 2, (height, width, 3)).astype(np.uint8))


# Preprocessing.

@pytest.mark.parametrize("size", [(48, 40), (40, 48), (36, 36), (300, 37)])
def test_train_image_shape_and_range(size):
  rng = np.random.default_rng(0)
  out = preprocess.train_image(_gradient_image(*size), resize_shorter=36, crop_size=32,
                               random_flip=True, rng=rng)
  assert out.shape == (32, 32, 3) and out.dtype == np.float32
  assert -1 <= out.min() and out.max() <= 1


def test_resize_makes_the_shorter_side_resize_shorter():
  assert decode.resize_shorter_side(_gradient_image(48, 40), 36).size == (43, 36)
  assert decode.resize_shorter_side(_gradient_image(40, 48), 36).size == (36, 43)
  assert decode.resize_shorter_side(_gradient_image(20, 30), 36).size == (36, 54)  # Upscale.


@pytest.mark.parametrize("size", [(450, 300), (1000, 900), (48, 40), (37, 300)])
def test_resized_crop_equals_resize_then_crop(size):
  # Only the crop window is resampled; it must match resizing everything and then cropping.
  image = Image.fromarray(np.random.default_rng(3).integers(0, 256, size[::-1] + (3,),
                                                             np.uint8))
  shorter, crop = (320, 256) if min(size) > 100 else (36, 32)
  full = decode.resize_shorter_side(image, shorter)
  for left, top in [(0, 0), (full.size[0] - crop, full.size[1] - crop), (1, 2)]:
    expected = np.asarray(full.crop((left, top, left + crop, top + crop))).astype(int)
    got = np.asarray(preprocess.resized_crop(image, shorter, left, top, crop)).astype(int)
    assert np.abs(expected - got).max() <= 1 and np.abs(expected - got).mean() < 0.01


def test_random_crop_and_flip_are_deterministic_and_really_flip():
  image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), np.uint8))

  def crop(seed, flip):
    return preprocess.train_image(image, resize_shorter=40, crop_size=32, random_flip=flip,
                                  rng=np.random.default_rng(seed))

  flipped_seeds = 0
  for seed in range(12):
    np.testing.assert_array_equal(crop(seed, True), crop(seed, True))
    plain, maybe_flipped = crop(seed, False), crop(seed, True)
    if not np.array_equal(plain, maybe_flipped):
      # Same crop window, mirrored: flipping never changes which pixels are cropped.
      np.testing.assert_array_equal(plain[:, ::-1], maybe_flipped)
      flipped_seeds += 1
  assert 2 <= flipped_seeds <= 10
  assert len({crop(seed, False).tobytes() for seed in range(12)}) > 6  # Offsets vary.


def test_eval_image_is_the_center_crop():
  pixels = np.random.default_rng(0).integers(0, 256, (40, 50, 3), np.uint8)
  out = preprocess.eval_image(Image.fromarray(pixels), resize_shorter=40, crop_size=32)
  np.testing.assert_array_equal(preprocess.to_uint8(out), pixels[4:36, 9:41])


def test_crop_larger_than_resize_is_rejected(config):
  config.data.crop_size = 40
  with pytest.raises(ValueError, match="crop_size"):
    next(pipeline.create_train_iterator(config, start_step=0, process_index=0, process_count=1))


# Training pipeline.

def test_train_batches_shapes_ranges_and_masks(config):
  (batch,) = _batches(config, 0, 1, process_index=0, process_count=1)
  assert set(batch) == {"image", "mask"}
  assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.float32
  assert batch["mask"].shape == (8, 32, 32, 1) and batch["mask"].dtype == np.float32
  assert -1 <= batch["image"].min() < 0 < batch["image"].max() <= 1
  assert set(np.unique(batch["mask"])) <= {0.0, 1.0}
  for index in range(8):  # The mask of global row g at step s is training_mask(seed, s, g).
    np.testing.assert_array_equal(batch["mask"][index, ..., 0], masks.training_mask(
        config.masks, 32, seed=config.seed, step=0, index=index))


def test_exact_resume(config):
  # 128 examples / batch 8 = 16 steps per epoch: steps 14..17 cross the epoch boundary.
  uninterrupted = _batches(config, 0, 18, process_index=0, process_count=1)
  resumed = _batches(config, 14, 4, process_index=0, process_count=1)
  for expected, got in zip(uninterrupted[14:], resumed):
    for key in expected:
      np.testing.assert_array_equal(expected[key], got[key])
  assert not np.array_equal(uninterrupted[14]["image"], uninterrupted[15]["image"])


def test_thread_count_does_not_change_the_batches(config):
  threaded = _batches(config, 5, 3, process_index=0, process_count=1)
  config.data.num_threads = 0  # Grain then builds batches in the calling thread.
  sequential = _batches(config, 5, 3, process_index=0, process_count=1)
  for a, b in zip(threaded, sequential):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_two_processes_together_see_the_single_process_batch(config):
  single = _batches(config, 3, 2, process_index=0, process_count=1)
  first = _batches(config, 3, 2, process_index=0, process_count=2)
  second = _batches(config, 3, 2, process_index=1, process_count=2)
  for whole, part0, part1 in zip(single, first, second):
    assert part0["image"].shape[0] == 4
    for key in whole:
      np.testing.assert_array_equal(whole[key], np.concatenate([part0[key], part1[key]]))


def test_indivisible_global_batch_is_an_error(config):
  with pytest.raises(ValueError, match="divisible"):
    pipeline.create_train_iterator(config, start_step=0, process_index=0, process_count=3)


def test_each_epoch_visits_every_example_once_in_a_new_order(config):
  images = pipeline.RobustImages(pipeline.open_split(config, "train"), "train")
  batches = pipeline.TrainBatches(images, config, process_index=0, local_batch=8)
  epochs = [[batches.record_index(step, row) for step in range(16 * e, 16 * (e + 1))
             for row in range(8)] for e in range(2)]
  assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(128))
  assert epochs[0] != epochs[1]


def test_seed_changes_the_stream(config):
  (first,) = _batches(config, 0, 1, process_index=0, process_count=1)
  config.seed = 1
  (second,) = _batches(config, 0, 1, process_index=0, process_count=1)
  assert not np.array_equal(first["image"], second["image"])
  assert not np.array_equal(first["mask"], second["mask"])


def test_undecodable_records_are_replaced_deterministically_and_counted(config):
  good = [{"image": decode.encode_png(np.full((40, 48, 3), value, np.uint8))}
          for value in (10, 20, 30)]
  records = [good[0], {"image": b"garbage"}, {"image": b"\x89PNG truncated"}, good[1],
             good[2]]
  images = pipeline.RobustImages(records, "damaged")
  # Record 1 and 2 are bad: both are served by record 3, the next good one.
  assert np.asarray(images[1])[0, 0, 0] == 20 and np.asarray(images[2])[0, 0, 0] == 20
  assert images.skipped.counts["corrupt"] == 3  # 1 -> 2 -> 3, then 2 -> 3.
  batches = pipeline.TrainBatches(images, config, process_index=0, local_batch=8)
  first = [batches(step)["image"] for step in range(3)]
  again = [batches(step)["image"] for step in range(3)]
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  assert images.skipped.total > 3

  with pytest.raises(RuntimeError, match="damaged"):
    pipeline.RobustImages([{"image": b"bad"}] * 3, "all bad")[0]


def test_missing_dataset_error_names_dir_and_command(config, tmp_path):
  config.data.data_dir = str(tmp_path)
  with pytest.raises(builders.DatasetNotPreparedError) as error:
    pipeline.create_train_iterator(config, start_step=0, process_index=0, process_count=1)
  assert str(tmp_path) in str(error.value)
  assert "python -m gmsrm_jax.data.prepare --dataset=synthetic_scenes/tiny" in str(error.value)


def test_dataset_info_counts(config):
  assert pipeline.num_examples(config, "train") == 128
  assert pipeline.dataset_info(config).splits["test"].num_examples == 32


# Evaluation pipeline.

def _eval(config, mask_spec, num_images, **kwargs):
  return list(pipeline.create_eval_iterator(config, mask_spec=mask_spec, num_images=num_images,
                                            **kwargs))


def test_eval_padding_weights_and_indices(config):
  batches = _eval(config, ("bin", "20-30"), 20, process_index=0, process_count=1)
  assert len(batches) == 3  # ceil(20 / 8).
  index = np.concatenate([b["index"] for b in batches])
  weight = np.concatenate([b["weight"] for b in batches])
  np.testing.assert_array_equal(index, list(range(20)) + [-1] * 4)
  np.testing.assert_array_equal(weight, [1] * 20 + [0] * 4)
  assert index.dtype == np.int32 and weight.dtype == np.float32
  for batch in batches:
    assert batch["image"].shape == (8, 32, 32, 3) and batch["mask"].shape == (8, 32, 32, 1)
    assert np.isfinite(batch["image"]).all()


def test_eval_masks_are_fixed_per_image_and_in_their_bin(config):
  first = _eval(config, ("bin", "40-50"), 16, process_index=0, process_count=1)
  again = _eval(config, ("bin", "40-50"), 16, process_index=0, process_count=1)
  for a, b in zip(first, again):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  for batch in first:
    for row, index in enumerate(batch["index"]):
      expected = masks.mask_in_bin(config.masks, 32, seed=config.eval.mask_seed,
                                   index=int(index), bin_name="40-50")
      np.testing.assert_array_equal(batch["mask"][row, ..., 0], expected)
      assert 0.4 < batch["mask"][row].mean() <= 0.5


def test_eval_masks_follow_eval_mask_seed_not_the_training_seed(config):
  def bin_masks(config):
    (batch,) = _eval(config, ("bin", "30-40"), 8, process_index=0, process_count=1)
    return batch["mask"]

  reference = bin_masks(config)
  assert (config.seed, config.eval.mask_seed) == (0, 0)
  other_seed = config.copy_and_resolve_references()
  other_seed.seed = 3  # Runs of different training seeds are measured on the same masks.
  np.testing.assert_array_equal(bin_masks(other_seed), reference)
  other_seed.eval.mask_seed = 3
  assert not np.array_equal(bin_masks(other_seed), reference)
  # -1, and a config saved before the field existed, follow config.seed as such runs did.
  follows = other_seed.copy_and_resolve_references()
  follows.eval.mask_seed = -1
  np.testing.assert_array_equal(bin_masks(follows), bin_masks(other_seed))
  del follows.eval.mask_seed
  np.testing.assert_array_equal(bin_masks(follows), bin_masks(other_seed))


def test_eval_images_are_the_test_split_center_crops(config):
  (batch,) = _eval(config, ("center", 0.25), 8, process_index=0, process_count=1)
  records = pipeline.open_split(config, "test")
  for row in range(8):
    image = decode.decode_pil(records[row]["image"])
    np.testing.assert_array_equal(
        batch["image"][row], preprocess.eval_image(image, resize_shorter=36, crop_size=32))
    np.testing.assert_array_equal(batch["mask"][row, ..., 0], masks.center_mask(32, 0.25))


def test_eval_processes_split_the_global_batch(config):
  single = _eval(config, ("bin", "0-20"), 12, process_index=0, process_count=1)
  halves = [_eval(config, ("bin", "0-20"), 12, process_index=i, process_count=2)
            for i in range(2)]
  assert len(halves[0]) == len(halves[1]) == len(single) == 2
  for whole, part0, part1 in zip(single, *halves):
    for key in whole:
      np.testing.assert_array_equal(whole[key], np.concatenate([part0[key], part1[key]]))


def test_eval_with_a_mask_folder(config, tmp_path):
  rng = np.random.default_rng(0)
  for i in range(6):  # White = hole, ~25% of the pixels, at another resolution.
    holes = rng.random((64, 64)) < 0.25
    Image.fromarray((holes * 255).astype(np.uint8)).save(tmp_path / f"mask{i}.png")
  config.eval.mask_dir = str(tmp_path)
  (batch,) = _eval(config, ("bin", "20-30"), 8, process_index=0, process_count=1)
  folder = masks.MaskFolder(str(tmp_path), 32)
  for row in range(8):
    np.testing.assert_array_equal(batch["mask"][row, ..., 0], folder.mask_for(row, "20-30"))


def test_eval_rejects_unknown_specs_and_caps_num_images(config):
  with pytest.raises(ValueError, match="bin"):
    _eval(config, ("bin", "10-90"), 8)
  with pytest.raises(ValueError, match="mask_spec"):
    _eval(config, ("random", 0.3), 8)
  batches = _eval(config, ("center", 0.25), 1000, process_index=0, process_count=1)
  assert sum(b["weight"].sum() for b in batches) == 32  # All of the test split, no more.
