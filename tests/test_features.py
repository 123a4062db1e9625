"""Feature networks against independent numpy forward passes (tests/reference_nets.py).

Weights are random, written in the PUBLISHED layouts (torch names, OIHW kernels) and go
through the real converter (`gmsrm_jax.weights.convert` from .npz), so each comparison checks
the flax network, the name mapping and the transposes together. float32 (JAX) vs float64
(numpy): relative agreement ~1e-5 is expected; the tolerances below leave a margin of ~10x.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference_nets as ref
from gmsrm_jax import losses
from gmsrm_jax import weights
from gmsrm_jax.features import inception
from gmsrm_jax.features import lpips
from gmsrm_jax.features import vgg19


def _converted(tmp_path_factory, model, state_dict, extra=None):
  """Saves a published-layout state dict as .npz, converts it, loads the project file."""
  directory = tmp_path_factory.mktemp(model)
  source = os.path.join(directory, "published.npz")
  np.savez(source, **state_dict, **(extra or {}))
  output = os.path.join(directory, f"{model}.npz")
  weights.convert(model, [source], output)
  return weights.load(model, output)


def _images(seed, shape):
  return np.random.default_rng(seed).uniform(-1.0, 1.0, shape).astype(np.float32)


@pytest.fixture(scope="module")
def vgg19_case(tmp_path_factory):
  """Converted random VGG-19 weights and reference features of two image batches."""
  sd = ref.RandomStateDict(seed=19)
  # 36 x 44 exercises floor-mode pooling on odd sizes (9 -> 4, 11 -> 5).
  pred, target = _images(1, (2, 36, 44, 3)), _images(2, (2, 36, 44, 3))
  expected = {"pred": ref.vgg19_perceptual_features(sd, pred),
              "target": ref.vgg19_perceptual_features(sd, target)}
  # conv5_2 ... conv5_4 are past relu5_1 but part of the published file.
  ref.vgg_features(sd, np.zeros((1, 3, 32, 32)), ref.VGG19_CFG, stop_index=36)
  # torchvision files also hold the classifier; the converter must skip it.
  extra = {"classifier.0.weight": np.zeros((4, 8), np.float32)}
  params = _converted(tmp_path_factory, "vgg19", sd.arrays, extra)
  return params, pred, target, expected


def test_vgg19_features_match_reference(vgg19_case):
  params, pred, _, expected = vgg19_case
  ours = jax.jit(vgg19.vgg19_features)(params, pred)
  assert set(ours) == set(vgg19.PERCEPTUAL_LAYERS)
  for name in vgg19.PERCEPTUAL_LAYERS:
    got = np.asarray(ours[name]).transpose(0, 3, 1, 2)
    want = expected["pred"][name]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max(),
                               err_msg=name)


def test_perceptual_loss_is_eq11(vgg19_case):
  params, pred, target, expected = vgg19_case
  loss = jax.jit(losses.perceptual_loss)(params, pred, target)
  # Eq. 11 per image: sum_l ||f_l(p) - f_l(t)||_1 / (C_l H_l W_l); then the batch mean.
  f_pred, f_target = expected["pred"], expected["target"]
  per_image = sum(np.abs(f_pred[l] - f_target[l]).sum(axis=(1, 2, 3)) / f_pred[l][0].size
                  for l in vgg19.PERCEPTUAL_LAYERS)
  np.testing.assert_allclose(float(loss), per_image.mean(), rtol=1e-4)
  assert float(jax.jit(losses.perceptual_loss)(params, target, target)) == 0.0


@pytest.fixture(scope="module", params=["alex", "vgg"])
def lpips_weights(request, tmp_path_factory):
  net = request.param
  sd = ref.RandomStateDict(seed=7 if net == "alex" else 16)
  ref.lpips(sd, np.zeros((1, 32, 32, 3)), np.zeros((1, 32, 32, 3)), net)  # Defines them.
  heads = {k: v for k, v in sd.arrays.items() if k.startswith("lin")}
  backbone = {k: v for k, v in sd.arrays.items() if not k.startswith("lin")}
  directory = tmp_path_factory.mktemp(f"lpips_{net}")
  # Two published files, as distributed: torchvision backbone + LPIPS heads.
  np.savez(directory / "backbone.npz", **backbone,
           **{"classifier.1.weight": np.zeros((3, 3), np.float32)})
  np.savez(directory / "heads.npz", **heads)
  output = str(directory / "lpips.npz")
  weights.convert(f"lpips_{net}", [str(directory / "backbone.npz"),
                                   str(directory / "heads.npz")], output)
  return net, sd, weights.load(f"lpips_{net}", output)


def test_lpips_matches_reference(lpips_weights):
  net, sd, params = lpips_weights
  images0, images1 = _images(3, (3, 64, 64, 3)), _images(4, (3, 64, 64, 3))
  # A near pair too: the metric's useful range is small distances.
  images1[2] = np.clip(images0[2] + 0.05 * _images(5, (64, 64, 3)), -1, 1)
  distance = jax.jit(functools.partial(lpips.lpips_distance, net=net))
  got = np.asarray(distance(params, images0, images1))
  expected = ref.lpips(sd, images0, images1, net)
  np.testing.assert_allclose(got, expected, rtol=2e-4)
  assert got[2] < got[0]
  np.testing.assert_allclose(np.asarray(distance(params, images1, images0)), got, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(distance(params, images0, images0)), 0.0, atol=1e-7)


@pytest.mark.parametrize("size_in, size_out", [(64, 75), (90, 75), (256, 299), (300, 299)])
def test_fid_resize_is_torch_bilinear(size_in, size_out):
  # Shrinking (90 -> 75, 300 -> 299) is where antialiasing would differ from torch.
  images = _images(size_in, (1, size_in, size_in, 3))
  got = np.asarray(inception.resize_bilinear(images, size_out)).transpose(0, 3, 1, 2)
  expected = ref.interpolate_bilinear(images.transpose(0, 3, 1, 2).astype(np.float64),
                                      size_out)
  # jax.image.resize computes sample positions in float32 (so does torch): ~1e-4 off at
  # 300 -> 299. Antialiasing, by contrast, would be off by ~1e-1.
  np.testing.assert_allclose(got, expected, atol=2e-4)


def test_fid_inception_matches_reference(tmp_path_factory):
  sd = ref.RandomStateDict(seed=3)
  # 75 is the smallest input the network takes; 64 -> 75 also runs the resize.
  images = _images(8, (2, 64, 64, 3))
  expected = ref.fid_inception_pool3(sd, images, inception.MIN_IMAGE_SIZE)
  assert expected.std() > 1e-2  # The random net did not collapse to a constant.
  # Entries of the real file the feature extractor does not use.
  extra = {"fc.weight": np.zeros((1008, 2048), np.float32),
           "fc.bias": np.zeros((1008,), np.float32)}
  params = _converted(tmp_path_factory, "inception_fid", sd.arrays, extra)
  features = jax.jit(functools.partial(inception.fid_features,
                                       image_size=inception.MIN_IMAGE_SIZE))(params, images)
  assert features.shape == (2, inception.FEATURE_DIM) and features.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(features), expected, rtol=1e-3,
                             atol=1e-4 * np.abs(expected).max())
  with pytest.raises(ValueError, match="at least 75"):
    inception.fid_features(params, images, image_size=64)


def test_reference_ops_are_torch_ops():
  """The numpy reference's conv/pool/resize semantics, checked against torch where present."""
  torch = pytest.importorskip("torch", reason="torch is optional (not in requirements.txt); "
                              "this cross-check of tests/reference_nets.py runs where it is.")
  functional = torch.nn.functional
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 3, 13, 11))
  w = rng.normal(size=(4, 3, 5, 3))
  b = rng.normal(size=(4,))
  t = lambda a: torch.from_numpy(a)
  np.testing.assert_allclose(ref.conv2d(x, w, b, stride=(2, 2), padding=(2, 1)),
                             functional.conv2d(t(x), t(w), t(b), stride=2, padding=(2, 1)),
                             rtol=1e-10, atol=1e-10)
  np.testing.assert_allclose(ref.max_pool2d(x, 3, 2), functional.max_pool2d(t(x), 3, 2))
  np.testing.assert_allclose(ref.max_pool2d(x, 3, 1, padding=1),
                             functional.max_pool2d(t(x), 3, 1, padding=1))
  np.testing.assert_allclose(
      ref.avg_pool2d_exclude_pad(x),
      functional.avg_pool2d(t(x), 3, stride=1, padding=1, count_include_pad=False), rtol=1e-12)
  for size in (7, 19):
    np.testing.assert_allclose(
        ref.interpolate_bilinear(x[:, :, :11, :11], size),
        functional.interpolate(t(x[:, :, :11, :11]), size=(size, size), mode="bilinear",
                               align_corners=False), rtol=1e-10, atol=1e-12)
