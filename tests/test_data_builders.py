"""TFDS builders: determinism, the image_folder rules, offline preparation and loading."""

import io
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from gmsrm_jax.data import builders
from gmsrm_jax.data import decode
from gmsrm_jax.data import image_folder
from gmsrm_jax.data import prepare as prepare_lib
from gmsrm_jax.data.prepare import prepare
from gmsrm_jax.data import synthetic


def _records(data_dir, name, config, split):
  builder = builders.load_builder(name, config, str(data_dir))
  source = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
  return [source[i] for i in range(len(source))]


def test_synthetic_tiny_has_the_documented_splits_and_sizes(tiny_data_dir):
  info = builders.load_builder("synthetic_scenes", "tiny", tiny_data_dir).info
  assert info.splits["train"].num_examples == 128
  assert info.splits["test"].num_examples == 32
  shapes = {decode.decode_image(r["image"]).shape for r in _records(
      tiny_data_dir, "synthetic_scenes", "tiny", "test")}
  assert shapes == {(40, 48, 3), (48, 40, 3)}  # Landscape and (every 4th) portrait.


def test_synthetic_preparation_is_deterministic(tiny_data_dir, tmp_path):
  prepare("synthetic_scenes", "tiny", str(tmp_path))
  for split in ("train", "test"):
    first = _records(tiny_data_dir, "synthetic_scenes", "tiny", split)
    second = _records(tmp_path, "synthetic_scenes", "tiny", split)
    assert [r["image"] for r in first] == [r["image"] for r in second]


def test_synthetic_images_are_structured_and_distinct():
  train = [synthetic.render_scene("train", i, 40, 48) for i in range(8)]
  test = [synthetic.render_scene("test", i, 40, 48) for i in range(8)]
  flat = {image.tobytes() for image in train + test}
  assert len(flat) == 16  # No two images alike, and the splits do not overlap.
  for image in train:
    # Not flat colour, not noise: many distinct colours, yet neighbouring pixels mostly agree
    # (uniform noise differs by ~85 per channel on average; these scenes by ~5-20).
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 20
    assert np.abs(np.diff(image.astype(int), axis=1)).mean() < 30


def test_prepare_is_idempotent_and_the_cli_works(tiny_data_dir):
  variant_dir = builders.make_builder("synthetic_scenes", "tiny", tiny_data_dir).data_dir
  before = {f: os.stat(os.path.join(variant_dir, f)).st_mtime_ns
            for f in os.listdir(variant_dir)}
  result = subprocess.run(
      [sys.executable, "-m", "gmsrm_jax.data.prepare", "--dataset=synthetic_scenes/tiny",
       f"--data_dir={tiny_data_dir}"], capture_output=True, text=True, check=True)
  assert f"ready at {variant_dir}" in result.stdout
  after = {f: os.stat(os.path.join(variant_dir, f)).st_mtime_ns for f in os.listdir(variant_dir)}
  assert before == after


def test_missing_dataset_fails_with_directory_and_command(tmp_path):
  with pytest.raises(builders.DatasetNotPreparedError) as error:
    builders.load_builder("synthetic_scenes", "64", str(tmp_path))
  message = str(error.value)
  assert os.path.join(str(tmp_path), "synthetic_scenes", "64") in message
  assert (f"python -m gmsrm_jax.data.prepare --dataset=synthetic_scenes/64 "
          f"--data_dir={tmp_path}") in message
  assert not os.listdir(tmp_path)  # Nothing was downloaded or generated.
  with pytest.raises(builders.DatasetNotPreparedError, match="--manual_dir=/my/photos"):
    builders.load_builder("image_folder", "256", str(tmp_path), manual_dir="/my/photos")


def test_unknown_dataset_name_is_an_error():
  with pytest.raises(ValueError, match="synthetic_scenes"):
    builders.make_builder("imagenet")


def _save(path, image: Image.Image, fmt="PNG", **kwargs):
  path.parent.mkdir(parents=True, exist_ok=True)
  buffer = io.BytesIO()
  image.save(buffer, format=fmt, **kwargs)
  path.write_bytes(buffer.getvalue())


def _scene(seed, size=(60, 50)):
  return Image.fromarray(synthetic.render_scene("train", seed, size[1], size[0]))


def test_image_folder_with_sub_folders_converts_skips_and_counts(tmp_path):
  images = tmp_path / "images"
  _save(images / "train" / "a.png", _scene(0))
  _save(images / "train" / "deep" / "b.jpg", _scene(1, (400, 300)), "JPEG")  # Downscaled.
  _save(images / "train" / "grey.png", _scene(2).convert("L"))
  _save(images / "train" / "rgba.png", _scene(3).convert("RGBA"))
  _save(images / "train" / "cmyk.jpg", _scene(4).convert("CMYK"), "JPEG")
  _save(images / "train" / "small.png", _scene(5, (40, 20)))  # Shorter side 20 < 32.
  (images / "train" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
  (images / "train" / "notes.txt").write_text("not an image, ignored")
  _save(images / "test" / "c.png", _scene(6))
  _save(images / "test" / "d.gif", _scene(7).convert("P"), "GIF")

  prepare("image_folder", "tiny", str(tmp_path / "data"), str(images))
  builder = builders.load_builder("image_folder", "tiny", str(tmp_path / "data"))
  assert builder.info.metadata["skipped"] == {
      "train": {"corrupt": 1, "too_small": 1, "too_large": 0},
      "test": {"corrupt": 0, "too_small": 0, "too_large": 0}}
  assert builder.info.metadata["split_rule"].startswith("sub-folders")
  assert prepare_lib.ready_line("image_folder", builder).endswith(
      ": test 2, train 5 examples; skipped 2 (test: corrupt 0, too_small 0, too_large 0; "
      "train: corrupt 1, too_small 1, too_large 0)")
  train = _records(tmp_path / "data", "image_folder", "tiny", "train")
  test = _records(tmp_path / "data", "image_folder", "tiny", "test")
  names = sorted(r["file_name"].decode() for r in train)  # Relative to manual_dir.
  assert names == sorted(os.path.join("train", name) for name in [
      "a.png", os.path.join("deep", "b.jpg"), "cmyk.jpg", "grey.png", "rgba.png"])
  assert sorted(r["file_name"].decode() for r in test) == [
      os.path.join("test", "c.png"), os.path.join("test", "d.gif")]
  for record in train + test:
    image = decode.decode_image(record["image"])
    assert image.shape[2] == 3 and min(image.shape[:2]) == 36  # Shorter side capped at 36.
    if record["file_name"].decode() == os.path.join("train", "a.png"):
      # Stored as JPEG quality 95, 4:4:4: close to the (resized) source, not bit-exact.
      source = np.asarray(decode.resize_shorter_side(_scene(0), 36)).astype(float)
      psnr = 10 * np.log10(255**2 / np.mean((image - source) ** 2))
      assert psnr > 30


def test_image_folder_seeded_hash_split(tmp_path):
  images = tmp_path / "flat"
  for i in range(20):
    _save(images / f"img{i:02d}.png", _scene(i))
  train, test, rule = image_folder.split_files(images, test_fraction=0.2, split_seed=0)
  assert len(test) == 4 and len(train) == 16 and not set(train) & set(test)
  assert "split_seed=0" in rule
  assert image_folder.split_files(images, test_fraction=0.2, split_seed=0)[1] == test
  assert image_folder.split_files(images, test_fraction=0.2, split_seed=1)[1] != test

  # The builder's default test_fraction is 0.1: the first 2 of the same hash order.
  prepare("image_folder", "tiny", str(tmp_path / "data"), str(images))
  stored = _records(tmp_path / "data", "image_folder", "tiny", "test")
  _, expected, _ = image_folder.split_files(images, test_fraction=0.1, split_seed=0)
  assert sorted(r["file_name"].decode() for r in stored) == sorted(p.name for p in expected)
  assert len(expected) == 2 and set(expected) <= set(test)
  assert builders.load_builder("image_folder", "tiny", str(tmp_path / "data")).info.splits[
      "train"].num_examples == 18


def test_image_folder_without_images_is_a_clear_error(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="No image files"):
    prepare("image_folder", "tiny", str(tmp_path / "data"), str(tmp_path / "empty"))
  with pytest.raises(ValueError, match="manual_dir"):
    prepare("image_folder", "tiny", str(tmp_path / "data"))
