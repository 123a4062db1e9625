"""The papers' datasets, each prepared once from the user's own download (nothing is fetched).

  name (config.data.name)  paper, splits                              --manual_dir holds
  places2_two_categories   GM-SRM §IV-A: two full Places2 categories;  a Places365-Challenge
                           1,500 test images per category, the rest    image tree (data_large/
                           train                                       or data_256/)
  celeb_a_hq               GM-SRM §IV-A: 27,000 train / 3,000 test,    the 30,000 CelebA-HQ images
                           by a seeded hash                            (e.g. CelebA-HQ-img/)
  paris_street_view        GM-SRM §IV-A: the original 14,900 / 100     paris_train_original/ and
                                                                       paris_eval_gt/
  places365_small          CICM §5 (Places2): TFDS's builder           the 4 archives TFDS lists
  celeb_a                  CICM §5 (CelebA): TFDS's builder            the 5 files TFDS lists

The first three are `image_folder` builders (same decoding, resizing, JPEG storage and skip
rules, docs/DATA.md) with the papers' splits; their configs are image_folder's "256" (the
papers' setting: shorter side <= 320, >= 256), "64" and "tiny". The last two are TFDS's own
builders, fed the files TFDS would otherwise download: TFDS finds them in --manual_dir by file
name and verifies their registered sha256 before use.

  python -m gmsrm_jax.data.prepare --dataset=<name>[/<config>] --manual_dir=<dir>
"""

import dataclasses
import os

from absl import logging
from etils import epath
import tensorflow_datasets as tfds

from gmsrm_jax.data import image_folder


def _first_existing(root: epath.Path, names: tuple[str, ...]) -> epath.Path | None:
  return next((root / name for name in names if (root / name).is_dir()), None)


class ParisStreetView(image_folder.ImageFolder, skip_registration=True):
  """Paris Street View (Doersch et al. 2012, GM-SRM ref. [46]) with its original split."""

  name = "paris_street_view"
  TRAIN_FOLDERS = ("paris_train_original", "train")
  TEST_FOLDERS = ("paris_eval_gt", "test")
  PAPER_COUNTS = (14_900, 100)
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "The dataset is distributed by its authors on request (see the Context Encoders page, "
      "Pathak et al. 2016). Point --manual_dir at the directory holding paris_train_original/ "
      "(14,900 images) and paris_eval_gt/ (100 images).")

  def _split_files(self, root):
    train_dir = _first_existing(root, self.TRAIN_FOLDERS)
    test_dir = _first_existing(root, self.TEST_FOLDERS)
    if train_dir is None or test_dir is None:
      raise FileNotFoundError(
          f"paris_street_view: {root} must hold one of {self.TRAIN_FOLDERS} (train) and one "
          f"of {self.TEST_FOLDERS} (test).")
    train = image_folder.list_image_files(train_dir)
    test = image_folder.list_image_files(test_dir)
    _warn_if_not_paper_counts(self.name, (len(train), len(test)), self.PAPER_COUNTS)
    return train, test, f"original split: {train_dir.name}/ and {test_dir.name}/"


class CelebAHQ(image_folder.ImageFolder, skip_registration=True):
  """CelebA-HQ (Karras et al. 2018, GM-SRM ref. [47]) split 27,000 / 3,000 by a seeded hash.

  Not TFDS's `celeb_a_hq` (a single 30,000-image train split, generated from CelebA plus the
  original delta files): this one reads the finished 30,000 images, as CelebAMask-HQ ships
  them (CelebA-HQ-img/0.jpg ... 29999.jpg), and splits them as GM-SRM §IV-A does: 3,000
  test images "randomly selected" (here the first 10% by sha256(f"{split_seed}/{path}"), so
  the split is the same on every machine), the remaining 27,000 for training.
  """

  name = "celeb_a_hq"
  PAPER_COUNTS = (27_000, 3_000)
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Point --manual_dir at a directory of the 30,000 CelebA-HQ images, e.g. CelebA-HQ-img/ "
      "of CelebAMask-HQ (github.com/switchablenorms/CelebAMask-HQ).")

  def _split_files(self, root):
    config = self.builder_config
    files = image_folder.list_image_files(root)
    num_test = round(config.test_fraction * len(files))
    train, test = image_folder.hash_split(files, root, num_test=num_test,
                                          split_seed=config.split_seed)
    _warn_if_not_paper_counts(self.name, (len(train), len(test)), self.PAPER_COUNTS)
    return train, test, (f"seeded hash split of all images (split_seed={config.split_seed}, "
                         f"test_fraction={config.test_fraction})")


@dataclasses.dataclass
class Places2Config(image_folder.ImageFolderConfig):
  categories: tuple[str, ...] = ()
  test_per_category: int = 1_500


# GM-SRM §IV-A selects "two full categories" without naming them. We default to two
# structured outdoor scenes, where filling large holes needs semantic reasoning; any other pair
# is one config name away (see below), and preparation logs and stores the per-category counts.
DEFAULT_CATEGORIES = ("street", "skyscraper")


def _config_name(categories) -> str:
  # Config names cannot hold "/": sub-categories such as field/wild are written field-wild.
  return "+".join(category.replace("/", "-") for category in categories)


def places365_categories() -> list[str]:
  """The 365 category names (e.g. "street", "field/wild"), from TFDS's copy of the list."""
  path = tfds.core.tfds_path("image_classification/categories_places365.txt")
  return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def places2_config(name: str) -> Places2Config:
  """The config for a name such as "street+skyscraper" (the papers' sizes, 256)."""
  categories = tuple(part.replace("-", "/") for part in name.split("+"))
  known = set(places365_categories())
  unknown = [c for c in categories if c not in known]
  if len(categories) < 1 or unknown:
    raise ValueError(f"places2_two_categories/{name}: unknown Places365 categories {unknown}; "
                     "write them as in categories_places365.txt joined by '+', with '-' for "
                     "'/', e.g. street+skyscraper or field-wild+forest_path.")
  return Places2Config(name=name, description=f"Places365 categories {categories}.",
                       categories=categories, min_side=256, max_shorter_side=320)


class Places2TwoCategories(image_folder.ImageFolder, skip_registration=True):
  """Places2 restricted to two full categories, as GM-SRM §IV-A.

  "We select two full categories obtaining 80,000 images and randomly pick 1,500 images from
  each category as test set": per category, the first 1,500 images by
  sha256(f"{split_seed}/{relative path}") are test images, the rest train. The categories are
  the config name: `places2_two_categories/street+skyscraper` (the default), or any other
  Places365 categories joined by '+' (e.g. `places2_two_categories/forest_path+field-wild`).
  The manual directory is a Places365 image tree, `<letter>/<category>/.../*.jpg`: the
  challenge set's data_large/ (or data_256/) has the full categories; the standard set's
  5,000 images per category also work, with a warning about the counts.
  """

  name = "places2_two_categories"
  BUILDER_CONFIGS = [
      places2_config(_config_name(DEFAULT_CATEGORIES)),
      Places2Config(name="tiny", description="Tests: 32-36 pixels, 2 test images per category.",
                    categories=DEFAULT_CATEGORIES, test_per_category=2, min_side=32,
                    max_shorter_side=36),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = _config_name(DEFAULT_CATEGORIES)
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Download Places365-Challenge (places2.csail.mit.edu/download.html, "
      "train_large_places365challenge.tar or train_256_places365challenge.tar), extract it, "
      "and point --manual_dir at the resulting data_large/ (or data_256/) directory.")

  def __init__(self, *, config=None, **kwargs):
    # Category pairs beyond the listed configs are named on the command line.
    if isinstance(config, str) and config not in {c.name for c in self.BUILDER_CONFIGS}:
      config = places2_config(config)
    super().__init__(config=config, **kwargs)

  def _split_files(self, root):
    config = self.builder_config
    train, test, counts = [], [], {}
    for category in config.categories:
      directory = root / category[0] / category
      files = image_folder.list_image_files(directory) if directory.is_dir() else []
      if not files:
        raise FileNotFoundError(f"places2_two_categories: no images of category {category!r} "
                                f"under {directory}; is --manual_dir a Places365 data_large/ "
                                "or data_256/ directory?")
      if len(files) <= config.test_per_category:
        raise ValueError(f"Category {category!r} has {len(files)} images, not more than the "
                         f"{config.test_per_category} test images to hold out.")
      category_train, category_test = image_folder.hash_split(
          files, root, num_test=config.test_per_category, split_seed=config.split_seed)
      train += category_train
      test += category_test
      counts[category] = len(files)
    self.info.metadata["images_per_category"] = counts
    if config.name != "tiny" and sum(counts.values()) != 80_000:
      logging.warning("places2_two_categories: %s images in %s; GM-SRM's two full categories "
                      "have 80,000 (40,000 each, Places365-Challenge).", sum(counts.values()),
                      counts)
    return sorted(train), sorted(test), (
        f"per category, {config.test_per_category} test images by seeded hash "
        f"(split_seed={config.split_seed}); categories {list(config.categories)}")


def _warn_if_not_paper_counts(name, counts, paper_counts):
  if tuple(counts) != tuple(paper_counts):
    logging.warning("%s: %d train / %d test images; the paper's split is %d / %d.", name,
                    *counts, *paper_counts)


# TFDS builders prepared from the files TFDS would download, found in --manual_dir by name.
TFDS_MANUAL = ("places365_small", "celeb_a")

BUILDERS = {
    "places2_two_categories": Places2TwoCategories,
    "celeb_a_hq": CelebAHQ,
    "paris_street_view": ParisStreetView,
    **{name: tfds.builder_cls(name) for name in TFDS_MANUAL},
}


def required_files(name: str) -> dict[str, str]:
  """{file name: URL} that a TFDS-built dataset needs in --manual_dir."""
  return {info.filename: url for url, info in BUILDERS[name].url_infos.items()}


def check_manual_dir(name: str, manual_dir: str) -> None:
  """Fails at once, naming what is missing, instead of letting TFDS try the network."""
  if not manual_dir:
    raise ValueError(f"{name} is prepared from your own download: pass --manual_dir. "
                     + _instructions(name))
  if not os.path.isdir(manual_dir):
    raise FileNotFoundError(f"{name}: manual_dir {manual_dir} is not a directory. "
                            + _instructions(name))
  if name in TFDS_MANUAL:
    missing = {f: url for f, url in required_files(name).items()
               if not os.path.exists(os.path.join(manual_dir, f))}
    if missing:
      raise FileNotFoundError(
          f"{name}: {manual_dir} lacks " + ", ".join(f"{f} ({url})" for f, url in
                                                     missing.items())
          + ". TFDS checks each file's registered size and sha256.")


def _instructions(name: str) -> str:
  if name in TFDS_MANUAL:
    return ("Put these files, as downloaded, in one directory: "
            + ", ".join(f"{f} ({url})" for f, url in required_files(name).items()) + ".")
  return BUILDERS[name].MANUAL_DOWNLOAD_INSTRUCTIONS
