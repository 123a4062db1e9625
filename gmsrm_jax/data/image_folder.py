"""`image_folder`: a TFDS dataset built from a directory of the user's own images.

Layout of the manual directory (`--manual_dir`, or `config.data.manual_dir`):
  * with sub-folders: `train/` and one of `test/`, `val/`, `validation/` -> those splits
    (each searched recursively);
  * otherwise every image below the directory is split by a seeded hash of its relative path:
    files are sorted by sha256(f"{split_seed}/{relative_path}") and the first
    max(1, round(test_fraction * n)) go to `test` (exact fraction, reproducible on any machine,
    independent of listing order).

At preparation each file goes through `decode.decode_image` (conversion rules there and in
docs/DATA.md), is downscaled so its shorter side is at most `max_shorter_side` (the
`resize_shorter` the configs load at, so loading does not resample again), and is stored as
JPEG quality 95 with 4:4:4 chroma (~41 dB from the decoded source): for photographs PNG would
be 4x larger and 5x slower to decode, which would halve the input pipeline's throughput.
Corrupt, too small (shorter side < `min_side`) and too large files are skipped, logged one by
one and counted; the counts are saved in the dataset's metadata (`info.metadata["skipped"]`).
"""

import dataclasses
import hashlib
import os

from absl import logging
from etils import epath
import tensorflow_datasets as tfds

from gmsrm_jax.data import decode

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                    ".pgm", ".pbm")
TEST_FOLDER_NAMES = ("test", "val", "validation")


@dataclasses.dataclass
class ImageFolderConfig(tfds.core.BuilderConfig):
  min_side: int = 256
  max_shorter_side: int = 320
  test_fraction: float = 0.1
  split_seed: int = 0


class ImageFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """The user's images from `manual_dir`; see the module docstring for layout and rules.

  Not registered: TFDS has its own (unregistered) `image_folder` builder, so registering the
  name would invite a collision; build it with `gmsrm_jax.data.builders.make_builder`.
  """

  name = "image_folder"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Point --manual_dir at a directory of images (JPEG, PNG, ...), either with `train/` and "
      "`test/` sub-folders or flat (split by a seeded hash).")
  # Named by the crop size they serve; max_shorter_side matches that config's resize_shorter.
  BUILDER_CONFIGS = [
      ImageFolderConfig(name="tiny", description="Shorter side <= 36, >= 32.",
                        min_side=32, max_shorter_side=36),
      ImageFolderConfig(name="64", description="Shorter side <= 72, >= 64.",
                        min_side=64, max_shorter_side=72),
      ImageFolderConfig(name="256", description="Shorter side <= 320, >= 256 (the paper).",
                        min_side=256, max_shorter_side=320),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "256"

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "file_name": tfds.features.Text(),  # Relative to manual_dir, to trace a sample.
        }),
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    root = epath.Path(dl_manager.manual_dir)
    train, test, rule = self._split_files(root)
    if not train:
      raise ValueError(f"No image files ({', '.join(IMAGE_EXTENSIONS)}) found for the train "
                       f"split under {root}.")
    if not test:
      raise ValueError(f"No image files found for the test split under {root} (rule: {rule}); "
                       "add a test/ folder or more images.")
    logging.info("image_folder: %d train / %d test files under %s (%s).", len(train),
                 len(test), root, rule)
    self.info.metadata["split_rule"] = rule
    self.info.metadata["skipped"] = {}
    return {
        "train": self._generate_examples("train", root, train),
        "test": self._generate_examples("test", root, test),
    }

  def _split_files(self, root: epath.Path) -> tuple[list[epath.Path], list[epath.Path], str]:
    """(train files, test files, the rule used); the paper datasets override this."""
    config = self.builder_config
    return split_files(root, test_fraction=config.test_fraction, split_seed=config.split_seed)

  def _generate_examples(self, split: str, root: epath.Path, files: list[epath.Path]):
    config = self.builder_config
    skipped = decode.SkipCounter(f"image_folder/{split}")
    written = 0
    for path in files:
      relative = os.path.relpath(path, root)
      try:
        image = decode.decode_image(path.read_bytes(), min_side=config.min_side,
                                    max_shorter_side=config.max_shorter_side)
      except decode.DecodeError as e:
        skipped.record(e.reason, f"{relative}: {e.detail}")
        continue
      written += 1
      yield relative, {"image": decode.encode_jpeg(image), "file_name": relative}
    # Runs once TFDS has drained this generator, i.e. before the metadata is written.
    self.info.metadata["skipped"][split] = skipped.counts
    logging.info("image_folder/%s: wrote %d images, skipped %s.", split, written,
                 skipped.counts)


def list_image_files(directory: epath.Path) -> list[epath.Path]:
  """Image files below `directory` (by extension, case-insensitive), sorted; hidden ones skipped."""
  files = []
  for dirpath, dirnames, filenames in os.walk(directory):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    files.extend(epath.Path(dirpath) / name for name in filenames
                 if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS))
  return sorted(files)


def split_files(root: epath.Path, *, test_fraction: float,
                split_seed: int) -> tuple[list[epath.Path], list[epath.Path], str]:
  """(train files, test files, a description of the rule used)."""
  test_dirs = [root / name for name in TEST_FOLDER_NAMES if (root / name).is_dir()]
  if (root / "train").is_dir() and test_dirs:
    return (list_image_files(root / "train"), list_image_files(test_dirs[0]),
            f"sub-folders train/ and {test_dirs[0].name}/")
  files = list_image_files(root)
  num_test = max(1, round(test_fraction * len(files))) if len(files) >= 2 else 0
  train, test = hash_split(files, root, num_test=num_test, split_seed=split_seed)
  rule = f"seeded hash split (split_seed={split_seed}, test_fraction={test_fraction})"
  return train, test, rule


def hash_split(files: list[epath.Path], root: epath.Path, *, num_test: int,
               split_seed: int) -> tuple[list[epath.Path], list[epath.Path]]:
  """(train, test), each sorted: the num_test files first by sha256(f"{seed}/{relative path}")."""

  def split_hash(path):
    relative = os.path.relpath(path, root).replace(os.sep, "/")
    return hashlib.sha256(f"{split_seed}/{relative}".encode()).hexdigest()

  ordered = sorted(files, key=split_hash)
  return sorted(ordered[num_test:]), sorted(ordered[:num_test])
