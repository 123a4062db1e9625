"""The weights tool: conversion from published layouts, checks, loading errors and the CLI.

The networks' numerical agreement after conversion is in tests/test_features.py; here the
file handling: names, transposes, extra/missing entries, wrong files, and that every failure
names the file and the command that fixes it.
"""

import os

import numpy as np
import pytest

import reference_nets as ref
from gmsrm_jax import weights


@pytest.fixture(scope="module")
def alex_sources(tmp_path_factory):
  """The two published LPIPS-AlexNet files (random values), as .npz of their torch names."""
  sd = ref.RandomStateDict(seed=1)
  ref.lpips(sd, np.zeros((1, 32, 32, 3)), np.zeros((1, 32, 32, 3)), "alex")
  directory = tmp_path_factory.mktemp("alex")
  backbone = {k: v for k, v in sd.arrays.items() if k.startswith("features.")}
  heads = {k: v for k, v in sd.arrays.items() if k.startswith("lin")}
  np.savez(directory / "alexnet-owt.npz", **backbone,
           **{"classifier.1.weight": np.zeros((2, 2), np.float32)})
  np.savez(directory / "alex.npz", **heads)
  return sd.arrays, str(directory / "alexnet-owt.npz"), str(directory / "alex.npz")


@pytest.fixture(scope="module")
def alex_converted(alex_sources, tmp_path_factory):
  _, backbone, heads = alex_sources
  output = str(tmp_path_factory.mktemp("converted") / "lpips_alex.npz")
  assert weights.main(["convert", "--model=lpips_alex", f"--output={output}", backbone,
                       heads]) == 0
  return output


def test_convert_maps_names_and_layouts(alex_sources, alex_converted):
  published, _, _ = alex_sources
  params = weights.load("lpips_alex", alex_converted)
  # torch OIHW -> flax HWIO; features.3 is AlexNet's second conv.
  np.testing.assert_array_equal(params["net"]["conv2"]["kernel"],
                                published["features.3.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["net"]["conv5"]["bias"], published["features.10.bias"])
  assert params["lin2"]["kernel"].shape == (1, 1, 384, 1)
  with np.load(alex_converted) as data:
    assert str(data["__model__"]) == "lpips_alex"
    assert all("sha256=" in line for line in data["__sources__"])


def test_check_verb(alex_converted, capsys):
  assert weights.check("lpips_alex", alex_converted) == []
  assert weights.main(["check", "--model=lpips_alex", alex_converted]) == 0
  assert "OK" in capsys.readouterr().out
  # The same file is not a VGG-19.
  assert weights.main(["check", "--model=vgg19", alex_converted]) == 1
  assert "holds 'lpips_alex' weights" in capsys.readouterr().out


def test_check_names_each_mismatch(alex_converted, tmp_path):
  with np.load(alex_converted) as data:
    arrays = dict(data)
  arrays["net/conv1/kernel"] = arrays["net/conv1/kernel"][:, :, :, :32]
  del arrays["lin4/kernel"]
  arrays["net/conv6/bias"] = np.zeros(3, np.float32)
  arrays["net/conv2/bias"] = np.full_like(arrays["net/conv2/bias"], np.nan)
  tampered = str(tmp_path / "tampered.npz")
  np.savez(tampered, **arrays)
  problems = "\n".join(weights.check("lpips_alex", tampered))
  assert "shape of net/conv1/kernel: file (11, 11, 3, 32), model (11, 11, 3, 64)" in problems
  assert "missing lin4/kernel" in problems
  assert "unexpected net/conv6/bias" in problems
  assert "non-finite values in net/conv2/bias" in problems
  with pytest.raises(weights.WeightsError, match="(?s)tampered.npz does not match.*convert "
                     "--model=lpips_alex"):
    weights.load("lpips_alex", tampered)


def test_missing_file_explains_the_fix(tmp_path):
  path = str(tmp_path / "nowhere.npz")
  with pytest.raises(weights.WeightsError) as error:
    weights.load("inception_fid", path)
  message = str(error.value)
  assert path in message
  assert ("python -m gmsrm_jax.weights convert --model=inception_fid "
          f"--output={path} pt_inception-2015-12-05-6726825d.pth") in message
  with pytest.raises(weights.WeightsError, match="No vgg19 weights file given"):
    weights.load("vgg19", "")


def test_published_file_must_be_converted_first(alex_sources):
  _, backbone, _ = alex_sources
  with pytest.raises(weights.WeightsError, match="not a converted weights file"):
    weights.load("lpips_alex", backbone)


def test_wrong_or_incomplete_sources_are_refused(alex_sources, tmp_path):
  published, backbone, heads = alex_sources
  out = str(tmp_path / "out.npz")
  with pytest.raises(weights.WeightsError, match="no entry 'lin0.model.1.weight'"):
    weights.convert("lpips_alex", [backbone], out)
  with pytest.raises(weights.WeightsError, match="more than one"):
    weights.convert("lpips_alex", [backbone, heads, heads], out)
  # AlexNet weights offered as VGG-19: names overlap (features.0 ...), shapes do not.
  with pytest.raises(weights.WeightsError, match="no entry 'features.2.weight'"):
    weights.convert("vgg19", [backbone], out)
  stray = str(tmp_path / "stray.npz")
  np.savez(stray, **{"lin5.model.1.weight": np.zeros((1, 8, 1, 1), np.float32)})
  with pytest.raises(weights.WeightsError, match="no place for.*lin5.model.1.weight"):
    weights.convert("lpips_alex", [backbone, heads, stray], out)
  assert not os.path.exists(out)
  # Shape mismatch under the right names.
  bad_heads = str(tmp_path / "bad_heads.npz")
  np.savez(bad_heads, **{k: v[:, :8] if k == "lin1.model.1.weight" else v
                         for k, v in published.items() if k.startswith("lin")})
  with pytest.raises(weights.WeightsError, match=r"shape of lin1/kernel: file \(1, 1, 8, 1\)"):
    weights.convert("lpips_alex", [backbone, bad_heads], out)


def test_pth_without_torch_explains(tmp_path):
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
    pytest.skip("torch is installed; the torch-less message cannot be triggered.")
  except ImportError:
    pass
  path = tmp_path / "vgg19-dcbb9e9d.pth"
  path.write_bytes(b"not read")
  with pytest.raises(weights.WeightsError, match="(?s)needs PyTorch.*np.savez"):
    weights.convert("vgg19", [str(path)], str(tmp_path / "out.npz"))


def test_pth_with_torch(alex_sources, tmp_path):
  torch = pytest.importorskip("torch", reason="torch is optional (not in requirements.txt); "
                              "the .pth path is exercised where it is installed.")
  published, _, _ = alex_sources
  for name, keys in (("alexnet-owt-7be5be79.pth", "features."), ("alex.pth", "lin")):
    torch.save({k: torch.from_numpy(v) for k, v in published.items() if k.startswith(keys)},
               tmp_path / name)
  out = str(tmp_path / "out.npz")
  weights.convert("lpips_alex", [str(tmp_path / "alexnet-owt-7be5be79.pth"),
                                 str(tmp_path / "alex.pth")], out)
  assert weights.check("lpips_alex", out) == []


def test_list_names_every_published_file(capsys):
  assert weights.main(["list"]) == 0
  out = capsys.readouterr().out
  for spec in weights.SPECS.values():
    for source in spec.sources:
      assert source.file in out and source.url in out
