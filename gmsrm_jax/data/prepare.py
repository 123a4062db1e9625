r"""Prepares a dataset once, offline, so training and evaluation can read it.

  python -m gmsrm_jax.data.prepare --dataset=synthetic_scenes/64 [--data_dir=DIR]
  python -m gmsrm_jax.data.prepare --dataset=image_folder/256 --manual_dir=/my/photos \
      [--data_dir=DIR]
  python -m gmsrm_jax.data.prepare --dataset=celeb_a_hq --manual_dir=/data/CelebA-HQ-img
      (the papers' datasets and what their --manual_dir holds: paper_datasets.py)

Idempotent: an already prepared dataset is left as it is (delete its directory to rebuild,
e.g. after adding images to the manual directory). TFDS writes into a temporary directory and
renames it at the end, so an interrupted preparation leaves nothing that counts as prepared.
"""

from collections.abc import Sequence
import os

from absl import app
from absl import flags
from absl import logging
from etils import epath
import tensorflow_datasets as tfds

from gmsrm_jax.data import builders
from gmsrm_jax.data import image_folder
from gmsrm_jax.data import paper_datasets


def prepare(name: str, builder_config: str = "", data_dir: str = "", manual_dir: str = "", *,
            max_examples_per_split: int | None = None) -> tfds.core.DatasetBuilder:
  """Prepares `name`/`builder_config` under `data_dir` unless already there; returns the builder.

  `max_examples_per_split` truncates every split (generation stops early): a quick stand-in
  of a large configuration for benchmarks and smoke tests. Use a separate data_dir for it,
  since the truncated dataset otherwise counts as the prepared full one.
  """
  builder = builders.make_builder(name, builder_config, data_dir)
  if builder.is_prepared():
    logging.info("%s is already prepared at %s.", builders.dataset_id(name, builder),
                 builder.data_dir)
    return builder
  if name in paper_datasets.BUILDERS:
    paper_datasets.check_manual_dir(name, manual_dir)
  if isinstance(builder, image_folder.ImageFolder):
    _check_image_folder(manual_dir)
  download_config = tfds.download.DownloadConfig(
      manual_dir=manual_dir or None,
      # Nothing here lives on GCS, and statistics would pull in TensorFlow for nothing.
      try_download_gcs=False,
      compute_stats=tfds.download.ComputeStatsMode.SKIP,
      max_examples_per_split=max_examples_per_split,
  )
  # TFDS announces "Downloading and preparing dataset ..." on stdout although these builders
  # download nothing (they generate, or read --manual_dir); say what actually happens instead.
  builder._log_download_bytes = lambda: logging.info(  # pylint: disable=protected-access
      "Preparing %s at %s from %s (nothing is downloaded).", builders.dataset_id(name, builder),
      builder.data_dir, manual_dir or "its generator")
  builder._log_download_done = lambda: None  # pylint: disable=protected-access
  # array_record gives random access (tfds.data_source), which the grain pipeline relies on
  # for its step-indexed, resumable iteration.
  builder.download_and_prepare(download_config=download_config, file_format="array_record")
  logging.info("Prepared %s at %s: %s.", builders.dataset_id(name, builder), builder.data_dir,
               {split: info.num_examples for split, info in builder.info.splits.items()})
  return builder


def ready_line(name: str, builder: tfds.core.DatasetBuilder) -> str:
  """The command's last line: the dataset, where it is, examples and skips per split."""
  splits = ", ".join(f"{split} {info.num_examples}"
                     for split, info in sorted(builder.info.splits.items()))
  skipped = (builder.info.metadata or {}).get("skipped")
  if skipped is None:
    skips = "skips: not counted by this builder"
  else:
    per_split = "; ".join(
        f"{split}: " + ", ".join(f"{reason} {count}" for reason, count in counts.items())
        for split, counts in sorted(skipped.items()))
    total = sum(sum(counts.values()) for counts in skipped.values())
    skips = f"skipped {total} ({per_split})"
  return (f"{builders.dataset_id(name, builder)} ready at {builder.data_dir}: {splits} "
          f"examples; {skips}")


def _check_image_folder(manual_dir: str) -> None:
  # TFDS would only say "does not exist or is empty", without naming what it looks for.
  if not manual_dir:
    raise ValueError("image_folder needs manual_dir: the directory holding your images.")
  if not os.path.isdir(manual_dir):
    raise FileNotFoundError(f"image_folder: manual_dir {manual_dir} is not a directory.")
  if not image_folder.list_image_files(epath.Path(manual_dir)):
    raise ValueError(f"No image files ({', '.join(image_folder.IMAGE_EXTENSIONS)}) found "
                     f"under {manual_dir}.")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  name, _, builder_config = flags.FLAGS.dataset.partition("/")
  builder = prepare(name, builder_config, flags.FLAGS.data_dir, flags.FLAGS.manual_dir)
  print(ready_line(name, builder))


if __name__ == "__main__":
  # Flags are defined only when run as a program, so importing `prepare` from a training script
  # cannot collide with that script's own --data_dir and similar flags.
  flags.DEFINE_string("dataset", "synthetic_scenes/64",
                      "name/builder_config, e.g. synthetic_scenes/tiny, synthetic_scenes/64, "
                      "synthetic_scenes/256, image_folder/256, celeb_a_hq, paris_street_view, "
                      "places2_two_categories[/cat1+cat2], places365_small, celeb_a.")
  flags.DEFINE_string("data_dir", "", "TFDS data_dir; '' -> $TFDS_DATA_DIR or "
                      "~/tensorflow_datasets.")
  flags.DEFINE_string("manual_dir", "", "image_folder: the directory of your images; the "
                      "papers' datasets: your download (gmsrm_jax/data/paper_datasets.py).")
  app.run(main)
