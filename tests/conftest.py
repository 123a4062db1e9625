"""Shared fixtures. `tiny_data_dir` is used by the data tests and by the training tests."""

import pytest

from gmsrm_jax.data.prepare import prepare


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> str:
  """A TFDS data_dir holding synthetic_scenes/tiny (128 train / 32 test, 48x40), once per run."""
  data_dir = tmp_path_factory.mktemp("tfds_data")
  prepare("synthetic_scenes", "tiny", str(data_dir))
  return str(data_dir)
