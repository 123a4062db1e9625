"""Our TFDS builders by name, and the rule that loading never downloads or generates.

Builders are instantiated directly (ours are not in the TFDS registry, see their docstrings;
the papers' datasets are in paper_datasets.py). A dataset is read only if it was prepared
beforehand with `python -m gmsrm_jax.data.prepare`; a missing one fails at once with the
directory looked in and the exact command, instead of TFDS's network retries (minutes when
offline).
"""

import shlex

import tensorflow_datasets as tfds

from gmsrm_jax.data import image_folder
from gmsrm_jax.data import paper_datasets
from gmsrm_jax.data import synthetic

BUILDERS = {
    "synthetic_scenes": synthetic.SyntheticScenes,
    "image_folder": image_folder.ImageFolder,
    **paper_datasets.BUILDERS,
}


class DatasetNotPreparedError(FileNotFoundError):
  """The dataset has not been prepared in the data_dir looked in."""


def make_builder(name: str, builder_config: str = "",
                 data_dir: str = "") -> tfds.core.DatasetBuilder:
  """The builder for `name`/`builder_config` ("" -> its default) under `data_dir` ("" -> TFDS's)."""
  if name not in BUILDERS:
    raise ValueError(f"Unknown dataset {name!r}; expected one of {sorted(BUILDERS)}.")
  return BUILDERS[name](config=builder_config or None, data_dir=data_dir or None)


def dataset_id(name: str, builder: tfds.core.DatasetBuilder) -> str:
  """"name/config", or "name" for builders without configs (TFDS's places365_small, celeb_a)."""
  config = builder.builder_config
  return f"{name}/{config.name}" if config is not None else name


def prepare_command(name: str, builder_config: str, data_dir: str, manual_dir: str = "") -> str:
  """The shell command that prepares this dataset (quoted, ready to paste)."""
  builder = make_builder(name, builder_config, data_dir)
  args = ["python", "-m", "gmsrm_jax.data.prepare",
          f"--dataset={dataset_id(name, builder)}",
          f"--data_dir={builder.data_dir_root}"]
  if name == "image_folder":
    args.append(f"--manual_dir={manual_dir or '/path/to/your/images'}")
  elif name in paper_datasets.BUILDERS:
    args.append(f"--manual_dir={manual_dir or '/path/to/your/download'}")
  return shlex.join(args)


def load_builder(name: str, builder_config: str = "", data_dir: str = "",
                 manual_dir: str = "") -> tfds.core.DatasetBuilder:
  """The builder of an already prepared dataset; never downloads or generates anything.

  Raises:
    DatasetNotPreparedError: naming the directory looked in and the command that prepares it.
  """
  builder = make_builder(name, builder_config, data_dir)
  if not builder.is_prepared():
    raise DatasetNotPreparedError(
        f"Dataset {dataset_id(name, builder)} is not prepared: nothing usable at "
        f"{builder.data_dir}. Loading never downloads or generates data. Prepare it once "
        f"with:\n  {prepare_command(name, builder_config, data_dir, manual_dir)}")
  return builder
