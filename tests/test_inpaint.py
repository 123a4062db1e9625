"""The inpaint API, its input rules and the command, on the finished tiny run (base, stride 4)."""

import os
import subprocess
import sys

from absl import logging
import jax
import numpy as np
from PIL import Image
import pytest

from configs import gmsrm as gmsrm_configs
from configs import unet_cicm as unet_cicm_configs
from gmsrm_jax import inpaint
from gmsrm_jax import models
from gmsrm_jax.train import checkpoint
from gmsrm_jax.train import state as state_lib
from gmsrm_jax.train import step as step_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def model(finished_tiny_run):
  return inpaint.load(finished_tiny_run[0])


@pytest.fixture(scope="module")
def photo():
  """A 217x300 uint8 photo (not a multiple of the stride, not square) and its hole."""
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (217, 300, 3), dtype=np.uint8)
  holes = np.zeros((217, 300), bool)
  holes[40:110, 70:190] = True
  return image, holes


def _known_kept(output, image, holes):
  return output.dtype == image.dtype and output.shape == image.shape and np.array_equal(
      output[~holes], image[~holes])


def test_pure_function_is_the_models_prediction_at_a_size_it_takes(finished_tiny_run, model):
  # At the trained size nothing is padded: the function must be exactly step.predict.
  workdir, state = finished_tiny_run
  config = model.config
  rng = np.random.default_rng(1)
  image = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  mask = np.zeros((2, 32, 32, 1), np.float32)
  mask[:, 8:20, 4:28] = 1
  key = jax.random.key(0)
  variables = step_lib.inference_variables(config, state)
  expected = step_lib.predict(state_lib.create_components(config), variables, image, mask, key)
  got = jax.jit(inpaint.inpaint_function(config))(model.variables, image, mask, key)
  np.testing.assert_allclose(got, expected, atol=1e-5)
  assert model.step == 4 and model.source == f"run {os.path.abspath(workdir)}"


def test_any_size_and_dtype_keeps_every_known_pixel(model, photo):
  image, holes = photo
  output = model(image, holes)
  assert _known_kept(output, image, holes)
  assert (output[holes] != image[holes]).mean() > 0.5  # The holes were filled.
  sixteen = image.astype(np.uint16) * 257
  assert _known_kept(model(sixteen, holes[..., None]), sixteen, holes)
  unit = image.astype(np.float32) / 255
  out = model(unit, holes.astype(np.float32))
  assert _known_kept(out, unit, holes) and 0 <= out.min() and out.max() <= 1
  # The same photo in any of these forms gets the same hole content (up to rounding).
  np.testing.assert_allclose(out[holes] * 255, output[holes], atol=1)


def test_grey_and_alpha_are_returned_as_given(model, photo):
  image, holes = photo
  grey = image[..., 0]
  out = model(grey, holes)
  assert _known_kept(out, grey, holes)
  rgba = np.dstack([image, np.full(holes.shape, 77, np.uint8)])
  out = model(rgba, holes)
  assert _known_kept(out, rgba, holes) and (out[..., 3] == 77).all()
  np.testing.assert_array_equal(out[..., :3], model(image, holes))
  grey_alpha = np.dstack([grey, np.full(holes.shape, 9, np.uint8)])
  out = model(grey_alpha, holes)
  np.testing.assert_array_equal(out[..., 0], model(grey, holes))
  assert (out[..., 1] == 9).all()


def test_batch_rows_are_completed_independently(model, photo):
  image, holes = photo
  batch = np.stack([image, image[::-1, ::-1]])
  out = model(batch, holes)  # One 2-D mask serves the batch.
  np.testing.assert_array_equal(out[0], model(image, holes))
  np.testing.assert_array_equal(out[1], model(image[::-1, ::-1], holes))


def test_mask_thresholds_and_polarity(model, photo):
  image, holes = photo
  reference = model(image, holes)
  as_uint8 = holes.astype(np.uint8)
  for mask in (as_uint8, as_uint8 * 255, as_uint8 * 128, holes * 0.5, holes * 0.9):
    np.testing.assert_array_equal(model(image, mask), reference, err_msg=str(mask.max()))
  for below in (as_uint8 * 127, holes * 0.49):
    np.testing.assert_array_equal(model(image, below), image)
  inverted = inpaint.Inpainter(inpaint.Loaded(model.config, model.variables, 4, "test"),
                               invert_mask=True)
  np.testing.assert_array_equal(inverted(image, ~holes), reference)


def test_empty_mask_returns_the_input_without_running_the_network(model, photo):
  image, _ = photo
  spy = inpaint.Inpainter(inpaint.Loaded(model.config, model.variables, 4, "test"))
  spy.function = None  # Calling it would fail.
  out = spy(image, np.zeros(image.shape[:2], bool))
  assert np.array_equal(out, image) and out is not image


def test_full_mask_is_completed_with_a_warning(model, photo):
  image, _ = photo
  with pytest.MonkeyPatch.context() as patch:
    warnings = []
    patch.setattr(logging, "warning", lambda *args: warnings.append(args[0]))
    out = model(image[:40, :40], np.ones((40, 40), bool))
  assert out.shape == (40, 40, 3) and any("whole image" in w for w in warnings)


@pytest.mark.parametrize("image, mask, message", [
    (np.zeros((8, 8, 3), np.int32), np.ones((8, 8)), "dtype int32"),
    (np.full((8, 8, 3), -0.5, np.float32), np.ones((8, 8)), "(image + 1) / 2"),
    (np.full((8, 8, 3), 200.0, np.float32), np.ones((8, 8)), "astype(np.uint8)"),
    (np.full((8, 8, 3), np.nan, np.float32), np.ones((8, 8)), "NaN"),
    (np.zeros((8, 8, 5), np.uint8), np.ones((8, 8)), "5 channels"),
    (np.zeros((2, 2, 8, 8, 3), np.uint8), np.ones((8, 8)), "expected [H, W]"),
    (np.zeros((8, 8, 3), np.uint8), np.ones((8, 9)), "shape (8, 9) does not fit image shape "
     "(8, 8, 3)"),
    (np.zeros((8, 8, 3), np.uint8), np.ones((8, 8, 3)), "one channel"),
    (np.zeros((8, 8, 3), np.uint8), np.full((8, 8), 2, np.int64), "only 0 and 1"),
    (np.zeros((8, 8, 3), np.uint8), np.full((8, 8), 2.0), "float mask must be in [0, 1]"),
    (np.zeros((8, 8, 3), np.uint8), np.full((8, 8), "x"), "Mask dtype"),
])
def test_bad_inputs_are_errors_that_say_what_to_pass(model, image, mask, message):
  with pytest.raises(ValueError, match=None) as error:
    model(image, mask)
  assert message in str(error.value)


def test_images_above_the_limit_are_an_error_naming_it(model):
  small = inpaint.Inpainter(inpaint.Loaded(model.config, model.variables, 4, "test"),
                            max_pixels=1000)
  with pytest.raises(ValueError, match=r"40x30 \(0.0 MP\), above the limit.*max_pixels"):
    small(np.zeros((30, 40, 3), np.uint8), np.ones((30, 40), bool))


@pytest.mark.parametrize("name, config", [
    ("unet_cicm", lambda: unet_cicm_configs.get_config("tiny")),
    ("gmsrm", lambda: gmsrm_configs.get_config("tiny")),
])
def test_every_model_family_takes_any_size_through_the_same_path(name, config):
  config = config()
  size = config.data.crop_size
  zeros = np.zeros((1, size, size, 3), np.float32)
  # Freshly initialised generator variables are what inference_variables holds at step 0.
  variables = jax.jit(lambda key: models.create_generator(config.model).init(
      {"params": key, "noise": key}, zeros, zeros[..., :1], train=False))(jax.random.key(0))
  loaded = inpaint.Loaded(config, variables, 0, name)
  inpainter = inpaint.Inpainter(loaded, bucket=None)
  geometry = models.input_geometry(config.model, size)
  assert (geometry.fixed_size is not None) == (name == "gmsrm")
  rng = np.random.default_rng(2)
  image = rng.integers(0, 256, (45, 70, 3), dtype=np.uint8)
  holes = np.zeros((45, 70), bool)
  holes[10:30, 20:50] = True
  out = inpainter(image, holes)
  assert _known_kept(out, image, holes) and (out[holes] != image[holes]).any()


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory, photo):
  """Folder mode in LaMa's layout (masks beside the images) and by equal names."""
  image, holes = photo
  root = tmp_path_factory.mktemp("photos")
  images, masks = root / "images", root / "masks"
  images.mkdir()
  masks.mkdir()
  Image.fromarray(image).save(images / "wide.png")
  Image.fromarray((holes * 255).astype(np.uint8)).save(masks / "wide.png")
  Image.fromarray(image[:48, :64]).save(images / "small.jpg")
  Image.fromarray((holes[:48, :64] * 255).astype(np.uint8)).save(masks / "small_mask001.png")
  return images, masks


def test_command_in_a_subprocess_fills_a_folder_of_non_square_images(
    finished_tiny_run, photo_folder, tmp_path):
  images, masks = photo_folder
  out = tmp_path / "out"
  result = subprocess.run(
      [sys.executable, "-m", "gmsrm_jax.inpaint", f"--model={finished_tiny_run[0]}",
       f"--image={images}", f"--mask={masks}", f"--output={out}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env={**os.environ, "PYTHONPATH": ROOT})
  assert result.returncode == 0, result.stderr[-3000:]
  assert "2/2 wide.png" in result.stderr  # The progress line.
  image, holes = np.asarray(Image.open(images / "wide.png")), np.asarray(
      Image.open(masks / "wide.png")) > 127
  written = np.asarray(Image.open(out / "wide.png"))
  assert _known_kept(written, image, holes) and (written[holes] != image[holes]).any()
  assert np.asarray(Image.open(out / "small.png")).shape == (48, 64, 3)


def test_command_writes_one_file_and_reports_bad_pairs(model, finished_tiny_run, photo_folder,
                                                       tmp_path):
  images, masks = photo_folder
  out = str(tmp_path / "filled.png")
  inpaint.run_command(finished_tiny_run[0], str(images / "wide.png"), str(masks / "wide.png"),
                      out)
  image = np.asarray(Image.open(images / "wide.png"))
  holes = np.asarray(Image.open(masks / "wide.png")) > 127
  np.testing.assert_array_equal(np.asarray(Image.open(out)), model(image, holes))
  (masks / "extra_mask.png").write_bytes((masks / "wide.png").read_bytes())
  (images / "lonely.png").write_bytes((images / "wide.png").read_bytes())
  try:
    with pytest.raises(ValueError, match=r"lonely.png: 0 masks \(none\)"):
      inpaint.pair_folder(str(images), str(masks))
  finally:
    os.remove(masks / "extra_mask.png")
    os.remove(images / "lonely.png")


def test_sixteen_bit_grey_files_round_trip(model, tmp_path):
  values = (np.arange(40 * 36, dtype=np.uint32).reshape(36, 40) * 45).astype(np.uint16)
  path = str(tmp_path / "grey16.png")
  inpaint.write_image(path, values)
  read = inpaint.read_image(path)
  assert read.dtype == np.uint16 and np.array_equal(read, values)
  holes = np.zeros(values.shape, bool)
  holes[5:20, 5:30] = True
  out = model(read, holes)
  inpaint.write_image(path, out)
  assert np.array_equal(inpaint.read_image(path)[~holes], values[~holes])


def test_a_run_dir_without_checkpoints_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="neither a model export"):
    inpaint.load(str(tmp_path))
  os.makedirs(checkpoint.checkpoint_dir(str(tmp_path)))
  with pytest.raises(FileNotFoundError, match="Train first"):
    inpaint.load(str(tmp_path))
