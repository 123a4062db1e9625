"""The papers' datasets, prepared from small fake manual directories made here.

Each test writes the layout the real download has (folder names, archive members, list files)
with a few tiny images, prepares it through `gmsrm_jax.data.prepare` (the documented command)
and reads it back through the training/evaluation pipeline.
"""

import io
import os
import tarfile

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core.download import checksums

from configs import base as base_config
from gmsrm_jax.data import builders
from gmsrm_jax.data import image_folder
from gmsrm_jax.data import paper_datasets
from gmsrm_jax.data import pipeline
from gmsrm_jax.data.prepare import prepare


def _image(seed, size=(48, 40), fmt="JPEG"):
  rng = np.random.default_rng(seed)
  pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format=fmt)
  return buffer.getvalue()


def _write_images(directory, count, start=0, suffix=".jpg", size=(48, 40)):
  os.makedirs(directory, exist_ok=True)
  for i in range(count):
    fmt = "PNG" if suffix == ".png" else "JPEG"
    with open(os.path.join(directory, f"{start + i:08d}{suffix}"), "wb") as f:
      f.write(_image(start + i, size, fmt))


def _file_names(data_dir, name, config, split):
  builder = builders.load_builder(name, config, str(data_dir))
  source = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
  return sorted(source[i]["file_name"].decode() for i in range(len(source)))


def _eval_batch(data_dir, name, config_name, split="test"):
  config = base_config.get_config("tiny")
  config.data.name = name
  config.data.builder_config = config_name
  config.data.data_dir = str(data_dir)
  config.data.eval_split = split
  return next(pipeline.create_eval_iterator(config, mask_spec=("center", 0.25), num_images=2))


def test_paris_street_view_keeps_the_original_split(tmp_path):
  manual = tmp_path / "paris"
  _write_images(manual / "paris_train_original", 5)
  _write_images(manual / "paris_eval_gt", 2, start=100, suffix=".png")
  _write_images(manual / "paris_eval_corrupted", 2, start=200)  # Not a split: ignored.
  prepare("paris_street_view", "tiny", str(tmp_path / "data"), str(manual))
  train = _file_names(tmp_path / "data", "paris_street_view", "tiny", "train")
  test = _file_names(tmp_path / "data", "paris_street_view", "tiny", "test")
  assert train == [f"paris_train_original/{i:08d}.jpg" for i in range(5)]
  assert test == ["paris_eval_gt/00000100.png", "paris_eval_gt/00000101.png"]
  batch = _eval_batch(tmp_path / "data", "paris_street_view", "tiny")
  assert batch["image"].shape == (8, 32, 32, 3) and batch["weight"].sum() == 2


def test_paris_street_view_without_its_folders_explains(tmp_path):
  _write_images(tmp_path / "photos", 3)
  with pytest.raises(FileNotFoundError, match="paris_train_original"):
    prepare("paris_street_view", "tiny", str(tmp_path / "data"), str(tmp_path / "photos"))


def test_celeb_a_hq_seeded_ten_percent_test_split(tmp_path):
  manual = tmp_path / "CelebA-HQ-img"
  _write_images(manual, 30)
  prepare("celeb_a_hq", "tiny", str(tmp_path / "data"), str(manual))
  test = _file_names(tmp_path / "data", "celeb_a_hq", "tiny", "test")
  train = _file_names(tmp_path / "data", "celeb_a_hq", "tiny", "train")
  assert len(test) == 3 and len(train) == 27  # 10%, as 3,000 of 30,000.
  files = image_folder.list_image_files(manual)
  _, expected = image_folder.hash_split(files, manual, num_test=3, split_seed=0)
  assert test == sorted(os.path.relpath(f, manual) for f in expected)
  _, other_seed = image_folder.hash_split(files, manual, num_test=3, split_seed=1)
  assert expected != other_seed  # The seed, not the listing order, decides.


def test_places2_two_categories_holds_out_per_category(tmp_path):
  manual = tmp_path / "data_large"
  _write_images(manual / "s" / "street", 5)
  _write_images(manual / "s" / "skyscraper", 4, start=50)
  _write_images(manual / "a" / "alley", 3, start=90)  # Not selected.
  prepare("places2_two_categories", "tiny", str(tmp_path / "data"), str(manual))
  builder = builders.load_builder("places2_two_categories", "tiny", str(tmp_path / "data"))
  assert builder.info.metadata["images_per_category"] == {"street": 5, "skyscraper": 4}
  test = _file_names(tmp_path / "data", "places2_two_categories", "tiny", "test")
  train = _file_names(tmp_path / "data", "places2_two_categories", "tiny", "train")
  assert [name.split("/")[1] for name in test] == ["skyscraper"] * 2 + ["street"] * 2
  assert len(train) == 5 and not set(train) & set(test)
  assert not any("alley" in name for name in train + test)


def test_places2_categories_are_named_by_the_config():
  config = paper_datasets.places2_config("field-wild+forest_path")
  assert config.categories == ("field/wild", "forest_path")
  assert config.test_per_category == 1500 and config.min_side == 256
  builder = builders.make_builder("places2_two_categories", "alley+street")
  assert builder.builder_config.categories == ("alley", "street")
  assert builders.make_builder("places2_two_categories").builder_config.categories == (
      "street", "skyscraper")
  with pytest.raises(ValueError, match="unknown Places365 categories \\['streets'\\]"):
    builders.make_builder("places2_two_categories", "streets+alley")


def _tar(path, members):
  with tarfile.open(path, "w") as archive:
    for name, data in members.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      archive.addfile(info, io.BytesIO(data))


def test_places365_small_from_the_archives_tfds_would_download(tmp_path, monkeypatch):
  manual = tmp_path / "downloads"
  manual.mkdir()
  image = lambda seed: _image(seed, (256, 256))
  train = {f"/a/alley/{i:08d}.jpg": image(i) for i in range(1, 4)}
  _tar(manual / "train_256_places365standard.tar",
       {f"data_256{name}": data for name, data in train.items()})
  _tar(manual / "val_256.tar", {f"val_256/Places365_val_{i:08d}.jpg": image(10 + i)
                                for i in range(1, 3)})
  _tar(manual / "test_256.tar", {"test_256/Places365_test_00000001.jpg": image(20)})
  _tar(manual / "filelist_places365-standard.tar", {
      "places365_train_standard.txt": "".join(f"{n} 4\n" for n in train).encode(),
      "places365_val.txt": b"Places365_val_00000001.jpg 4\nPlaces365_val_00000002.jpg 4\n",
      "places365_test.txt": b"Places365_test_00000001.jpg\n"})
  # The real archives' sizes and sha256 are registered with TFDS; these stand-ins get theirs.
  builder_cls = paper_datasets.BUILDERS["places365_small"]
  infos = {}
  for url, info in builder_cls.url_infos.items():
    computed = checksums.compute_url_info(manual / info.filename)
    infos[url] = checksums.UrlInfo(size=computed.size, checksum=computed.checksum,
                                   filename=info.filename)
  monkeypatch.setattr(builder_cls, "url_infos", infos)
  data_dir = tmp_path / "data"
  prepare("places365_small", "", str(data_dir), str(manual))
  splits = builders.load_builder("places365_small", "", str(data_dir)).info.splits
  assert {s: splits[s].num_examples for s in ("train", "validation", "test")} == {
      "train": 3, "validation": 2, "test": 1}
  batch = _eval_batch(data_dir, "places365_small", "", split="validation")
  assert batch["image"].shape == (8, 32, 32, 3) and batch["weight"].sum() == 2


def test_tfds_datasets_name_missing_files_before_any_network(tmp_path):
  (tmp_path / "partial").mkdir()
  (tmp_path / "partial" / "val_256.tar").write_bytes(b"")
  with pytest.raises(FileNotFoundError) as error:
    prepare("places365_small", "", str(tmp_path / "data"), str(tmp_path / "partial"))
  message = str(error.value)
  assert "train_256_places365standard.tar (http://data.csail.mit.edu" in message
  assert "val_256.tar (" not in message
  with pytest.raises(ValueError, match="(?s)pass --manual_dir.*img_align_celeba.zip"):
    prepare("celeb_a", "", str(tmp_path / "data"))
  with pytest.raises(builders.DatasetNotPreparedError,
                     match="--dataset=places365_small --data_dir=.* --manual_dir="):
    builders.load_builder("places365_small", "", str(tmp_path / "data"))
