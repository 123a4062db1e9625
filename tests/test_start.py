"""A training run's start: the data checked before any model work or workdir write, a quiet
prepare, and the project's flags under --help."""

import os
import sys

from absl import flags
import pytest

import tiny_run
from gmsrm_jax import cli
from gmsrm_jax.data import builders
from gmsrm_jax.data import pipeline
from gmsrm_jax.data import prepare
from gmsrm_jax.train import loop


def test_unprepared_data_fails_before_the_model_and_leaves_no_trace(tmp_path, monkeypatch):
  config = tiny_run.config(str(tmp_path / "empty_data_dir"), 4)
  monkeypatch.setattr(loop.tasks, "get", lambda config: pytest.fail("reached the model"))
  workdir = tmp_path / "run"
  with pytest.raises(builders.DatasetNotPreparedError, match="gmsrm_jax.data.prepare"):
    loop.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()


def test_a_missing_split_is_named_before_the_model(tiny_data_dir, tmp_path, monkeypatch):
  config = tiny_run.config(tiny_data_dir, 4)
  config.data.eval_split = "validation"
  monkeypatch.setattr(loop.tasks, "get", lambda config: pytest.fail("reached the model"))
  with pytest.raises(ValueError, match=r"config.data.eval_split = 'validation'.*\['test', "
                     r"'train'\]"):
    loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()
  # Slices of a split are splits (a validation set held out of train), checked the same way.
  config.data.eval_split = "train[100:]"
  pipeline.check_prepared(config, ["train_split", "eval_split"])
  config.data.train_split = "train[:100000]"
  with pytest.raises(ValueError, match=r"config.data.train_split = 'train\[:100000\]'.*"
                     r"incompatible with 128 examples"):
    pipeline.check_prepared(config, ["train_split", "eval_split"])


def test_prepare_does_not_claim_to_download(tmp_path, capfd):
  prepare.prepare("synthetic_scenes", "tiny", str(tmp_path), max_examples_per_split=4)
  assert "Download" not in capfd.readouterr().out


def test_help_lists_the_project_flags(monkeypatch):
  monkeypatch.setattr(sys, "argv", ["train.py"])
  cli._show_in_help(flags.FLAGS)  # pylint: disable=protected-access
  listed = {flag.name for flag in flags.FLAGS.get_key_flags_for_module("train.py")}
  assert {"config", "workdir", "step", "allow_config_change"} <= listed


def test_saved_config_goes_in_place_of_a_missing_config_flag():
  argv = ["evaluate.py", "--workdir", "runs/x", "--step=4", "--config.eval.num_images=2"]
  config_arg = cli.with_saved_config(argv)[1]
  assert config_arg.endswith(f"saved_config.py:4:{os.path.abspath('runs/x')}")
  assert cli.with_saved_config(["e.py", "--config=c.py", "--workdir=w"])[1] == "--config=c.py"
