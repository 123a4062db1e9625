"""Shared fixtures. `tiny_data_dir` is used by the data tests and by the training tests."""

import pytest

from gmsrm_jax.data.prepare import prepare


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> str:
  """A TFDS data_dir holding synthetic_scenes/tiny (128 train / 32 test, 48x40), once per run."""
  data_dir = tmp_path_factory.mktemp("tfds_data")
  prepare("synthetic_scenes", "tiny", str(data_dir))
  return str(data_dir)


@pytest.fixture(scope="session")
def finished_tiny_run(tiny_data_dir, tmp_path_factory):
  """(workdir, final state) of tiny_run.config(num_steps=4): checkpoints at steps 2 and 4,
  and the in-loop evaluation at step 4 (train.eval_every=4) in its TensorBoard events.

  Shared by several modules, so tests must not change it: copy the workdir first.
  """
  import tiny_run  # pylint: disable=g-import-not-at-top
  from gmsrm_jax.train import loop  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp("finished_tiny_run"))
  config = tiny_run.config(tiny_data_dir, 4)
  config.train.eval_every = 4
  return workdir, loop.train_and_evaluate(config, workdir)
