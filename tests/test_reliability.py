"""Faults and bad input (issue #10): non-finite states, signals, damaged checkpoints, configs.

The loop-level cases start from copies of the shared finished tiny run (checkpoints 2 and 4).
"""

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
import pytest

import tiny_run
from gmsrm_jax import config_checks
from gmsrm_jax import export as export_lib
from gmsrm_jax import masks
from gmsrm_jax.data import pipeline
from gmsrm_jax.train import checkpoint
from gmsrm_jax.train import health
from gmsrm_jax.train import loop
from gmsrm_jax.train import parallel
from gmsrm_jax.train import preemption
from gmsrm_jax.train import state as state_lib
from gmsrm_jax.train import tasks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _copy_run(finished_tiny_run, tmp_path) -> str:
  workdir = str(tmp_path / "run")
  shutil.copytree(finished_tiny_run[0], workdir)
  return workdir


def _state_data_file(workdir: str, step: int) -> str:
  # orbax merges the per-process OCDBT stores into state/d/ at the end of a save.
  (path,) = glob.glob(os.path.join(workdir, "checkpoints", str(step), "state", "d", "*"))
  return path


def _restore_or_init(config, workdir, **kwargs):
  task = tasks.get(config)
  manager = checkpoint.create_manager(workdir)
  state = loop.restore_or_init(config, task, task.create_components(config),
                               parallel.make_mesh(), manager, **kwargs)
  return state, manager


# --- 1. Non-finite values -----------------------------------------------------------------------


def test_non_finite_state_is_never_checkpointed(tiny_data_dir, finished_tiny_run, tmp_path):
  """The issue's case: losses stay finite, the update is not (rec_weight 1e30 overflows the
  gradient, so Adam's second moment becomes inf at step 5). Checked at step 6 (log and
  checkpoint), never at step 5, and no checkpoint after 4 exists."""
  workdir = _copy_run(finished_tiny_run, tmp_path)
  config = tiny_run.config(tiny_data_dir, 6)
  config.loss.rec_weight = 1e30
  with pytest.raises(health.NonFiniteError,
                     match=r"first at step 5: state\.g_opt_state \(found when checking steps "
                           r"5-6\).*the last checkpoint is step 4"):
    loop.train_and_evaluate(config, workdir)
  assert checkpoint.create_manager(workdir, read_only=True).all_steps() == [2, 4]
  assert not glob.glob(os.path.join(workdir, "checkpoints", "*tmp*"))


def test_health_names_the_first_bad_step_and_the_loss_terms():
  state = state_lib.TrainState(step=jnp.array(3, jnp.int32), g_params={"w": jnp.ones(2)},
                               d_params={}, g_opt_state={}, d_opt_state={}, ema_params={},
                               g_state={}, d_state={}, rng=jnp.zeros(2, jnp.uint32))
  update = jax.jit(health.update)
  flag = update(health.initial(state), {"loss/a": 1.0, "loss/b": jnp.nan}, state)
  later = state.replace(step=jnp.array(4, jnp.int32), g_params={"w": jnp.full(2, jnp.inf)})
  flag = update(flag, {"loss/a": 1.0, "loss/b": 2.0}, later)  # The first bad step is kept.
  health.check(jax.device_get(update(health.initial(state), {"loss/a": 1.0}, state)), state,
               checked_through=3, last_check=2, last_checkpoint=2)  # Finite: no error.
  with pytest.raises(health.NonFiniteError,
                     match=r"first at step 3: loss/b \(found when checking steps 3-4\)"):
    health.check(jax.device_get(flag), later, checked_through=4, last_check=2,
                 last_checkpoint=None, summed_metrics={"loss/a": 2.0, "loss/b": np.nan})
  assert health.nonfinite_fields(later) == ["g_params"]


# --- 3. Damaged checkpoints ---------------------------------------------------------------------


def test_damaged_latest_checkpoint(tiny_data_dir, finished_tiny_run, tmp_path, caplog):
  """Evaluation names the damaged step and the others; training falls back to step 2, says so
  loudly and sets step 4 aside; when nothing restores, one error lists every step."""
  workdir = _copy_run(finished_tiny_run, tmp_path)
  config = tiny_run.config(tiny_data_dir, 4)
  data_file = _state_data_file(workdir, 4)
  os.truncate(data_file, os.path.getsize(data_file) // 2)
  mesh = parallel.make_mesh()

  with pytest.raises(checkpoint.CheckpointDamagedError,
                     match=r"step 4 .* cannot be restored: its (metadata|files) cannot be read .*"
                           r"--step=N \(steps here: \[2\]\)"):
    loop.restore_run(config, workdir, mesh)
  assert loop.restore_run(config, workdir, mesh, step=2)[2] == 2

  state, manager = _restore_or_init(config, workdir)
  assert int(state.step) == 2
  assert "CHECKPOINT STEP 4 IN" in caplog.text and "IS DAMAGED AND SKIPPED" in caplog.text
  assert manager.all_steps() == [2]
  assert os.path.isdir(os.path.join(workdir, checkpoint.SET_ASIDE, "4_damaged"))

  # A missing OCDBT manifest fails inside orbax's metadata read, the case that used to bury
  # the error under "Event loop is closed" reports from tensorstore's threads.
  os.remove(os.path.join(workdir, "checkpoints", "2", "state", "manifest.ocdbt"))
  with pytest.raises(checkpoint.CheckpointDamagedError,
                     match=r"No checkpoint in .* can be restored:\n  step 2: its metadata"):
    _restore_or_init(config, workdir)
  reported = []
  previous, sys.unraisablehook = sys.unraisablehook, lambda u: reported.append(u.exc_value)
  try:
    checkpoint._previous_unraisable_hook = None  # Install the filter over the recorder.
    checkpoint._ignore_closed_event_loop_noise()
    for error in (RuntimeError("Event loop is closed"), RuntimeError("something else")):
      sys.unraisablehook(type("Unraisable", (), {"exc_value": error})())
  finally:
    sys.unraisablehook, checkpoint._previous_unraisable_hook = previous, None
  assert [str(e) for e in reported] == ["something else"]


def test_restore_an_earlier_step_and_config_changes_on_resume(tiny_data_dir, finished_tiny_run,
                                                               tmp_path):
  workdir = _copy_run(finished_tiny_run, tmp_path)
  config = tiny_run.config(tiny_data_dir, 10)
  config.train.batch_size = 16
  config.seed = 1
  with pytest.raises(config_checks.ConfigChangeError,
                     match=r"seed: 0 -> 1\n  train.batch_size: 8 -> 16\n.*"
                           r"--allow_config_change=seed,train.batch_size"):
    _restore_or_init(config, workdir, step=2)
  # Nothing was moved by the refused resume.
  assert checkpoint.create_manager(workdir, read_only=True).all_steps() == [2, 4]
  state, manager = _restore_or_init(config, workdir, step=2,
                                    allow_config_change=["train.batch_size", "seed"])
  assert int(state.step) == 2 and manager.all_steps() == [2]
  assert os.path.isdir(os.path.join(workdir, checkpoint.SET_ASIDE, "4_after_restoring_2"))


# --- 2. Signals ---------------------------------------------------------------------------------


def test_sigterm_saves_the_current_step_and_exits_with_the_resume_status(
    tiny_data_dir, finished_tiny_run, tmp_path):
  workdir = _copy_run(finished_tiny_run, tmp_path)
  proc = subprocess.Popen(
      [sys.executable, "train.py", "--config=configs/base.py:tiny", f"--workdir={workdir}",
       f"--config.data.data_dir={tiny_data_dir}", "--config.train.num_steps=1000000",
       "--config.train.checkpoint_every=100000", "--config.train.log_every=100000",
       "--config.train.sample_every=100000"],
      cwd=REPO, stderr=subprocess.PIPE, text=True)
  lines = []
  try:
    for line in proc.stderr:  # The handlers are installed before this line is logged.
      lines.append(line)
      if "Training steps 4 -> 1000000" in line:
        proc.send_signal(signal.SIGTERM)
        break
    lines.extend(proc.communicate(timeout=300)[1].splitlines())
  finally:
    proc.kill()
  log = "".join(lines)
  assert proc.returncode == preemption.EXIT_CODE, log[-3000:]
  manager = checkpoint.create_manager(workdir, read_only=True)
  saved = manager.latest_step()
  assert saved > 4 and f"Stopped by SIGTERM after step {saved}: checkpoint {saved}" in log
  assert "Resume by running the same command again: python train.py" in log
  assert not glob.glob(os.path.join(workdir, "checkpoints", "*tmp*"))
  _, state, step = loop.restore_run(tiny_run.config(tiny_data_dir, saved), workdir,
                                    parallel.make_mesh())
  assert step == saved == int(state.step)


def test_stop_requests_flag_the_first_signal_and_abort_on_the_second():
  before = signal.getsignal(signal.SIGINT)
  with preemption.StopRequests(process_count=1) as stop:
    assert stop.requested(None, 1) is None
    signal.raise_signal(signal.SIGINT)
    assert stop.requested(None, 1) == "SIGINT"
    with pytest.raises(KeyboardInterrupt):
      signal.raise_signal(signal.SIGINT)
  assert signal.getsignal(signal.SIGINT) is before


# --- 4. Config validation -----------------------------------------------------------------------


@pytest.mark.parametrize("field, value, allowed", [
    ("train.checkpoint_every", 0, "an integer >= 1"),
    ("train.log_every", 0, "an integer >= 1"),
    ("train.sample_every", -1, "an integer >= 1"),
    ("train.batch_size", 0, "an integer >= 1"),
    ("train.num_steps", -5, "an integer >= 0"),
    ("seed", -1, "an integer >= 0"),
    ("optim.learning_rate", float("nan"), "a finite number >= 0"),
    ("optim.b2", 1.0, r"a number in \[0, 1\)"),
    ("loss.adv_weight", float("inf"), "a finite number"),
    ("masks.hole_ratio_range", (0.5, 0.2), r"a pair \(lo, hi\) with 0 <= lo < hi <= 1"),
    ("eval.mask_seed", -2, "an integer >= -1"),
])
def test_validation_names_the_field_and_the_allowed_values(field, value, allowed):
  config = tiny_run.config("", 4)
  section, _, name = field.rpartition(".")
  with config.unlocked():
    (config[section] if section else config)[name] = value
  with pytest.raises(config_checks.ConfigError, match=rf"config\.{field} = .*: must be {allowed}"):
    config_checks.validate(config)


def test_an_unknown_override_is_named_by_its_full_path():
  # What every command's parser reports (cli.parse_flags, bench_device; the train.py command
  # is run in test_end_to_end): ml_collections' own error names only the last key.
  argv = ["prog", "--config=configs/base.py:tiny", "--config.train.batch_size=2",
          "--config.train.no_such_key=3"]
  with pytest.raises(AttributeError) as error:
    getattr(tiny_run.config("", 4).train, "no_such_key")
  assert config_checks.unknown_override(error.value, argv) == (
      "--config.train.no_such_key: the config has no field config.train.no_such_key "
      "('no_such_key' is unknown).\nEvery --config.* override must name an existing field.")
  assert config_checks.unknown_override(error.value, argv[:3]) is None  # Not an override's.


def test_validation_lists_every_problem_before_any_work(tmp_path):
  config = tiny_run.config(str(tmp_path / "no_data_here"), 4)
  config.train.checkpoint_every = 0
  config.data.crop_size = 64
  with pytest.raises(config_checks.ConfigError) as error:
    loop.train_and_evaluate(config, str(tmp_path / "run"))  # No dataset needed to fail.
  assert "checkpoint_every = 0" in str(error.value)
  assert "crop_size = 64: must be <= config.data.resize_shorter (36)" in str(error.value)
  assert not os.path.exists(tmp_path / "run")


def test_config_changes_that_a_resume_allows():
  stored = config_checks.as_json(tiny_run.config("/data/a", 4))
  config = tiny_run.config("/data/b", 100)  # data_dir and num_steps: harmless.
  config.train.log_every = 7
  config.optim.learning_rate = 1e-5
  config.eval.num_images = 3
  with config.unlocked():
    config.model.memory = {"path": "/new/stage1/export"}  # Restored from the checkpoint.
    stored["model"]["memory"] = {"path": "/old/stage1/export"}
  check = lambda c, **kw: config_checks.check_changes(
      stored, c, guarded=config_checks.RESUME_GUARDED,
      unguarded=config_checks.RESUME_UNGUARDED, what="checkpoint step 4", **kw)
  check(config)
  config.masks.irregular_prob = 0.9
  config.model.stem_channels = 4
  with pytest.raises(config_checks.ConfigChangeError,
                     match=r"masks.irregular_prob: 0.5 -> 0.9\n  model.stem_channels: 8 -> 4"):
    check(config)
  check(config, allowed=["masks.*", "model.stem_channels"])
  with pytest.raises(config_checks.ConfigError, match="train.batchsize, which is not"):
    check(config, allowed=["train.batchsize"])
  # A checkpoint written before masks.ratio_sampling existed was made with "natural" masks.
  config = tiny_run.config("/data/a", 4)
  del stored["masks"]["ratio_sampling"]
  check(config)
  config.masks.ratio_sampling = "overlay"
  with pytest.raises(config_checks.ConfigChangeError,
                     match=r"masks.ratio_sampling: 'natural' -> 'overlay'"):
    check(config)
  # What the code reads from each: config_checks.added_field.
  assert config_checks.added_field(
      ml_collections.ConfigDict(stored).masks, "masks.ratio_sampling") == "natural"
  assert config_checks.added_field(config.masks, "masks.ratio_sampling") == "overlay"


# --- 6. Export files ----------------------------------------------------------------------------


def test_every_damaged_export_file_is_named(tiny_data_dir, finished_tiny_run, tmp_path):
  pristine = export_lib.export(tiny_run.config(tiny_data_dir, 4), finished_tiny_run[0],
                               str(tmp_path / "pristine"), platforms=("cpu",))
  with open(os.path.join(pristine, "manifest.json")) as f:
    listed = json.load(f)["sha256"]
  assert {"inpaint.jax", "config.json", "variables/_METADATA"} <= set(listed)
  data_file = next(name for name in listed if "/d/" in name)

  def damage(name, how):
    out_dir = str(tmp_path / f"damaged_{len(os.listdir(tmp_path))}")
    shutil.copytree(pristine, out_dir)
    path = os.path.join(out_dir, name)
    if how == "truncate":
      os.truncate(path, os.path.getsize(path) // 2)
    elif how == "flip":
      data = bytearray(open(path, "rb").read())
      data[len(data) // 2] ^= 0x01
      open(path, "wb").write(bytes(data))
    else:
      os.remove(path)
    return out_dir

  cases = [("inpaint.jax", "truncate", export_lib.load_serving, ValueError),
           ("inpaint.jax", "flip", export_lib.load_serving, ValueError),
           ("config.json", "truncate", export_lib.load, ValueError),
           ("variables/_METADATA", "truncate", export_lib.load, ValueError),
           (data_file, "flip", export_lib.load_serving, ValueError),
           (data_file, "delete", export_lib.load, FileNotFoundError),
           ("manifest.json", "truncate", export_lib.load, ValueError)]
  for name, how, loader, error in cases:
    out_dir = damage(name, how)
    with pytest.raises(error, match=re.escape(os.path.join(out_dir, name)) + ".*python export.py"):
      loader(out_dir)


# --- 7. Damaged dataset files -------------------------------------------------------------------


def _flip_bytes(path: str, fractions) -> None:
  data = bytearray(open(path, "rb").read())
  for fraction in fractions:
    data[int(len(data) * fraction)] ^= 0x40
  open(path, "wb").write(bytes(data))


def test_unreadable_records_are_substituted_then_too_many_stop_the_run(tiny_data_dir, tmp_path):
  data_dir = str(tmp_path / "data")
  shutil.copytree(tiny_data_dir, data_dir)
  config = tiny_run.config(data_dir, 4)
  (train_file,) = glob.glob(os.path.join(data_dir, "synthetic_scenes", "tiny", "*",
                                         "*train.array_record*"))
  _flip_bytes(train_file, [0.5])  # Inside one record's chunk: 1 of 128 records (< 1%).
  images = pipeline.robust_split(config, "train")
  decoded = [np.asarray(images[i]) for i in range(len(images))]
  assert images.skipped.counts == {"corrupt": 1, "too_small": 0, "too_large": 0}
  (damaged,) = [i for i in range(len(images) - 1) if np.array_equal(decoded[i], decoded[i + 1])]
  # A function of the record alone, so a resumed run (a new reader) substitutes the same way.
  np.testing.assert_array_equal(np.asarray(pipeline.robust_split(config, "train")[damaged]),
                                decoded[damaged + 1])

  _flip_bytes(train_file, [0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9])
  images = pipeline.robust_split(config, "train")
  with pytest.raises(pipeline.DatasetDamagedError,
                     match=rf"(?s){re.escape(train_file)}: [2-9] of 128 records cannot be read.*"
                           r"python -m gmsrm_jax.data.prepare --dataset=synthetic_scenes/tiny"):
    for i in range(len(images)):
      images[i]


# --- 8. Mask files ------------------------------------------------------------------------------


def test_mask_files_of_every_convention_and_the_folder_summary(tmp_path, caplog):
  """The issue's probe masks: each reads as the drawn shape, or is reported with its reason."""
  holes = np.zeros((32, 32), bool)
  holes[4:20, 6:22] = True  # 25%.
  as_ = lambda high, low=0, dtype=np.uint8: np.where(holes, high, low).astype(dtype)
  files = {
      "label_8bit.png": Image.fromarray(as_(1)),
      "label_16bit.png": Image.fromarray(as_(1, dtype=np.uint16)),
      "grey_100.png": Image.fromarray(as_(100)),
      "red_on_black.png": Image.fromarray(np.stack([as_(255), as_(0), as_(0)], -1)),
      "alpha_only.png": Image.fromarray(np.stack([as_(0)] * 3 + [as_(255)], -1), "RGBA"),
      "all_zero.png": Image.fromarray(np.zeros((32, 32), np.uint8)),
      "all_one.png": Image.fromarray(np.ones((32, 32), np.uint8)),
      "inverted.png": Image.fromarray(np.where(np.arange(32 * 32).reshape(32, 32) < 696, 255,
                                               0).astype(np.uint8)),  # 68% white.
  }
  for name, image in files.items():
    image.save(tmp_path / name)
  wide = np.zeros((100, 200), bool)
  wide[:, 50:150] = True  # The centre square of a 2:1 mask.
  Image.fromarray(wide).save(tmp_path / "wide.png")

  for name in ("label_8bit.png", "label_16bit.png", "grey_100.png", "red_on_black.png",
               "alpha_only.png"):
    np.testing.assert_array_equal(masks.load_mask_file(tmp_path / name, 32), holes, name)
  np.testing.assert_array_equal(masks.load_mask_file(tmp_path / "wide.png", 16),
                                np.ones((16, 16)))  # Cropped, not stretched (which is 50%).

  folder = masks.MaskFolder(tmp_path, 32)
  assert folder.bin_counts()["20-30"] == 5 and len(folder) == 9
  assert folder.out_of_bins == {
      "no hole pixels": ["all_zero.png (0.0%)"],
      "every pixel a hole": ["all_one.png (100.0%)", "wide.png (100.0%)"],
      "hole ratio above every bin (> 60%; if this folder marks holes black, read it with "
      "invert=True, config.eval.mask_invert)": ["inverted.png (68.0%)"]}
  assert folder.cropped == ["wide.png (200x100)"]
  assert "9 files, 5 in at least one bin" in caplog.text
  assert "1 in no bin, no hole pixels: all_zero.png" in caplog.text
