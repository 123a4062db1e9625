"""Independent float64 numpy forward passes of the published networks; not a test itself.

Written from the published PyTorch definitions (torchvision `vgg19`/`vgg16`/`alexnet`
`features`, `lpips.LPIPS` v0.1, `pytorch_fid.inception.InceptionV3` with the FID patches), in
NCHW with torch's conventions (OIHW weights, floor-mode pooling, count_include_pad,
align_corners=False interpolation), reading weights by their published state_dict names.
None of it imports gmsrm_jax, so a wrong name, transpose or layer in the flax code or in the
converter shows up as a mismatch.

Weights come from `RandomStateDict`: each entry is created, with the shape the reference asks
for, the first time the reference reads it. One forward pass therefore both defines and
fills a state dict in the published layout, which the tests then save and convert.
"""

import numpy as np


class RandomStateDict:
  """Published-layout weights made on first use; He-scaled so deep nets stay O(1)."""

  def __init__(self, seed: int):
    self.rng = np.random.default_rng(seed)
    self.arrays: dict[str, np.ndarray] = {}

  def __call__(self, name: str, shape: tuple[int, ...], kind: str) -> np.ndarray:
    if name not in self.arrays:
      rng = self.rng
      if kind == "conv":
        fan_in = int(np.prod(shape[1:]))
        value = rng.standard_normal(shape, np.float32) * np.sqrt(2.0 / fan_in)
      elif kind == "bias":
        value = rng.normal(0.0, 0.1, shape)
      elif kind == "bn_scale":
        value = rng.uniform(0.5, 1.5, shape)
      elif kind == "bn_var":
        value = rng.uniform(0.5, 2.0, shape)
      elif kind == "head":  # LPIPS heads are non-negative by construction.
        value = np.abs(rng.normal(0.0, 0.1, shape))
      else:
        raise ValueError(kind)
      self.arrays[name] = value.astype(np.float32)
    array = self.arrays[name]
    assert array.shape == tuple(shape), (name, array.shape, shape)
    return array.astype(np.float64)


# ---------------------------------------------------------------------------- torch ops, NCHW


def conv2d(x, weight, bias=None, stride=(1, 1), padding=(0, 0)):
  """torch.nn.functional.conv2d: x [N, C, H, W], weight [O, C, kh, kw]."""
  stride = (stride, stride) if isinstance(stride, int) else stride
  ph, pw = padding
  x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
  kh, kw = weight.shape[2:]
  windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
  windows = windows[:, :, ::stride[0], ::stride[1]]  # [N, C, Ho, Wo, kh, kw]
  out = np.tensordot(windows, weight, axes=([1, 4, 5], [1, 2, 3]))  # [N, Ho, Wo, O]
  out = out.transpose(0, 3, 1, 2)
  if bias is not None:
    out = out + bias[None, :, None, None]
  return out


def max_pool2d(x, kernel, stride, padding=0):
  x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)),
             constant_values=-np.inf)
  windows = np.lib.stride_tricks.sliding_window_view(x, (kernel, kernel), axis=(2, 3))
  return windows[:, :, ::stride, ::stride].max(axis=(4, 5))


def avg_pool2d_exclude_pad(x, kernel=3, stride=1, padding=1):
  """F.avg_pool2d(..., count_include_pad=False)."""
  pad = ((0, 0), (0, 0), (padding, padding), (padding, padding))
  sums = np.lib.stride_tricks.sliding_window_view(np.pad(x, pad), (kernel, kernel),
                                                  axis=(2, 3))[:, :, ::stride, ::stride]
  ones = np.pad(np.ones(x.shape[2:]), pad[2:])
  counts = np.lib.stride_tricks.sliding_window_view(ones, (kernel, kernel))[::stride, ::stride]
  return sums.sum(axis=(4, 5)) / counts.sum(axis=(2, 3))


def relu(x):
  return np.maximum(x, 0.0)


def interpolate_bilinear(x, size):
  """F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)."""

  def weights(in_size, out_size):
    matrix = np.zeros((out_size, in_size))
    scale = in_size / out_size
    for i in range(out_size):
      src = max((i + 0.5) * scale - 0.5, 0.0)
      i0 = min(int(np.floor(src)), in_size - 1)
      i1 = min(i0 + 1, in_size - 1)
      frac = src - i0
      matrix[i, i0] += 1.0 - frac
      matrix[i, i1] += frac
    return matrix

  rows = weights(x.shape[2], size)
  cols = weights(x.shape[3], size)
  return rows @ x @ cols.T  # Separable: rows, then columns.


# ------------------------------------------------------------------------------------- VGG
# torchvision make_layers: an int is Conv2d(3x3, padding=1) + ReLU, "M" is MaxPool2d(2, 2).
VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
             512, 512, 512, "M"]
VGG19_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
             512, 512, 512, 512, "M"]


def vgg_features(sd, x, cfg, stop_index):
  """torchvision `features[:stop_index + 1]`; returns {module index: output}."""
  outputs, index, channels = {}, 0, 3
  for item in cfg:
    if index > stop_index:
      break
    if item == "M":
      x = max_pool2d(x, 2, 2)
      outputs[index] = x
      index += 1
      continue
    w = sd(f"features.{index}.weight", (item, channels, 3, 3), "conv")
    b = sd(f"features.{index}.bias", (item,), "bias")
    x = conv2d(x, w, b, padding=(1, 1))
    outputs[index] = x
    x = relu(x)
    outputs[index + 1] = x
    index += 2
    channels = item
  return outputs


# torchvision VGG-19 features indices of relu1_1, relu2_1, relu3_1, relu4_1, relu5_1.
VGG19_RELU_X_1 = {"relu1_1": 1, "relu2_1": 6, "relu3_1": 11, "relu4_1": 20, "relu5_1": 29}


def vgg19_perceptual_features(sd, images_nhwc):
  """[-1, 1] NHWC images -> {relu_x_1: NCHW} with ImageNet normalisation."""
  x = (images_nhwc.transpose(0, 3, 1, 2).astype(np.float64) + 1.0) / 2.0
  mean = np.array([0.485, 0.456, 0.406])[None, :, None, None]
  std = np.array([0.229, 0.224, 0.225])[None, :, None, None]
  outputs = vgg_features(sd, (x - mean) / std, VGG19_CFG, max(VGG19_RELU_X_1.values()))
  return {name: outputs[index] for name, index in VGG19_RELU_X_1.items()}


# ----------------------------------------------------------------------------------- LPIPS


def alexnet_slices(sd, x):
  """lpips.pretrained_networks.alexnet: relu1 ... relu5 of torchvision alexnet.features."""
  def conv(x, index, out_ch, in_ch, k, stride, pad):
    w = sd(f"features.{index}.weight", (out_ch, in_ch, k, k), "conv")
    b = sd(f"features.{index}.bias", (out_ch,), "bias")
    return relu(conv2d(x, w, b, stride=(stride, stride), padding=(pad, pad)))

  h1 = conv(x, 0, 64, 3, 11, 4, 2)
  h2 = conv(max_pool2d(h1, 3, 2), 3, 192, 64, 5, 1, 2)
  h3 = conv(max_pool2d(h2, 3, 2), 6, 384, 192, 3, 1, 1)
  h4 = conv(h3, 8, 256, 384, 3, 1, 1)
  h5 = conv(h4, 10, 256, 256, 3, 1, 1)
  return [h1, h2, h3, h4, h5]


def vgg16_slices(sd, x):
  """lpips.pretrained_networks.vgg16: features[3], [8], [15], [22], [29] (relu1_2 ...)."""
  outputs = vgg_features(sd, x, VGG16_CFG, 29)
  return [outputs[i] for i in (3, 8, 15, 22, 29)]


def lpips(sd, images0_nhwc, images1_nhwc, net):
  """lpips.LPIPS(net=net, version="0.1")(in0, in1) for [-1, 1] NHWC images -> [N]."""
  shift = np.array([-.030, -.088, -.188])[None, :, None, None]
  scale = np.array([.458, .448, .450])[None, :, None, None]
  slices = alexnet_slices if net == "alex" else vgg16_slices
  total = 0.0
  feats = [slices(sd, (x.transpose(0, 3, 1, 2).astype(np.float64) - shift) / scale)
           for x in (images0_nhwc, images1_nhwc)]
  for k, (f0, f1) in enumerate(zip(*feats)):
    n0 = f0 / (np.sqrt(np.sum(f0**2, axis=1, keepdims=True)) + 1e-10)
    n1 = f1 / (np.sqrt(np.sum(f1**2, axis=1, keepdims=True)) + 1e-10)
    head = sd(f"lin{k}.model.1.weight", (1, f0.shape[1], 1, 1), "head")
    total = total + conv2d((n0 - n1)**2, head).mean(axis=(1, 2, 3))
  return total


# -------------------------------------------------------------------------- FID Inception


def basic_conv(sd, name, x, out_ch, kernel, stride=1, padding=(0, 0)):
  """torchvision BasicConv2d: conv (no bias) -> BatchNorm2d(eps=0.001) -> ReLU."""
  kh, kw = kernel
  w = sd(f"{name}.conv.weight", (out_ch, x.shape[1], kh, kw), "conv")
  x = conv2d(x, w, stride=(stride, stride), padding=padding)
  gamma = sd(f"{name}.bn.weight", (out_ch,), "bn_scale")
  beta = sd(f"{name}.bn.bias", (out_ch,), "bias")
  mean = sd(f"{name}.bn.running_mean", (out_ch,), "bias")
  var = sd(f"{name}.bn.running_var", (out_ch,), "bn_var")
  x = (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 0.001)
  return relu(x * gamma[None, :, None, None] + beta[None, :, None, None])


def _inception_a(sd, n, x, pool_features):
  b1 = basic_conv(sd, f"{n}.branch1x1", x, 64, (1, 1))
  b5 = basic_conv(sd, f"{n}.branch5x5_1", x, 48, (1, 1))
  b5 = basic_conv(sd, f"{n}.branch5x5_2", b5, 64, (5, 5), padding=(2, 2))
  d = basic_conv(sd, f"{n}.branch3x3dbl_1", x, 64, (1, 1))
  d = basic_conv(sd, f"{n}.branch3x3dbl_2", d, 96, (3, 3), padding=(1, 1))
  d = basic_conv(sd, f"{n}.branch3x3dbl_3", d, 96, (3, 3), padding=(1, 1))
  p = basic_conv(sd, f"{n}.branch_pool", avg_pool2d_exclude_pad(x), pool_features, (1, 1))
  return np.concatenate([b1, b5, d, p], axis=1)


def _inception_b(sd, n, x):
  b3 = basic_conv(sd, f"{n}.branch3x3", x, 384, (3, 3), stride=2)
  d = basic_conv(sd, f"{n}.branch3x3dbl_1", x, 64, (1, 1))
  d = basic_conv(sd, f"{n}.branch3x3dbl_2", d, 96, (3, 3), padding=(1, 1))
  d = basic_conv(sd, f"{n}.branch3x3dbl_3", d, 96, (3, 3), stride=2)
  return np.concatenate([b3, d, max_pool2d(x, 3, 2)], axis=1)


def _inception_c(sd, n, x, c7):
  b1 = basic_conv(sd, f"{n}.branch1x1", x, 192, (1, 1))
  b7 = basic_conv(sd, f"{n}.branch7x7_1", x, c7, (1, 1))
  b7 = basic_conv(sd, f"{n}.branch7x7_2", b7, c7, (1, 7), padding=(0, 3))
  b7 = basic_conv(sd, f"{n}.branch7x7_3", b7, 192, (7, 1), padding=(3, 0))
  d = basic_conv(sd, f"{n}.branch7x7dbl_1", x, c7, (1, 1))
  d = basic_conv(sd, f"{n}.branch7x7dbl_2", d, c7, (7, 1), padding=(3, 0))
  d = basic_conv(sd, f"{n}.branch7x7dbl_3", d, c7, (1, 7), padding=(0, 3))
  d = basic_conv(sd, f"{n}.branch7x7dbl_4", d, c7, (7, 1), padding=(3, 0))
  d = basic_conv(sd, f"{n}.branch7x7dbl_5", d, 192, (1, 7), padding=(0, 3))
  p = basic_conv(sd, f"{n}.branch_pool", avg_pool2d_exclude_pad(x), 192, (1, 1))
  return np.concatenate([b1, b7, d, p], axis=1)


def _inception_d(sd, n, x):
  b3 = basic_conv(sd, f"{n}.branch3x3_1", x, 192, (1, 1))
  b3 = basic_conv(sd, f"{n}.branch3x3_2", b3, 320, (3, 3), stride=2)
  b7 = basic_conv(sd, f"{n}.branch7x7x3_1", x, 192, (1, 1))
  b7 = basic_conv(sd, f"{n}.branch7x7x3_2", b7, 192, (1, 7), padding=(0, 3))
  b7 = basic_conv(sd, f"{n}.branch7x7x3_3", b7, 192, (7, 1), padding=(3, 0))
  b7 = basic_conv(sd, f"{n}.branch7x7x3_4", b7, 192, (3, 3), stride=2)
  return np.concatenate([b3, b7, max_pool2d(x, 3, 2)], axis=1)


def _inception_e(sd, n, x, max_pool_branch):
  b1 = basic_conv(sd, f"{n}.branch1x1", x, 320, (1, 1))
  b3 = basic_conv(sd, f"{n}.branch3x3_1", x, 384, (1, 1))
  b3 = np.concatenate([basic_conv(sd, f"{n}.branch3x3_2a", b3, 384, (1, 3), padding=(0, 1)),
                       basic_conv(sd, f"{n}.branch3x3_2b", b3, 384, (3, 1), padding=(1, 0))],
                      axis=1)
  d = basic_conv(sd, f"{n}.branch3x3dbl_1", x, 448, (1, 1))
  d = basic_conv(sd, f"{n}.branch3x3dbl_2", d, 384, (3, 3), padding=(1, 1))
  d = np.concatenate([basic_conv(sd, f"{n}.branch3x3dbl_3a", d, 384, (1, 3), padding=(0, 1)),
                      basic_conv(sd, f"{n}.branch3x3dbl_3b", d, 384, (3, 1), padding=(1, 0))],
                     axis=1)
  pooled = max_pool2d(x, 3, 1, padding=1) if max_pool_branch else avg_pool2d_exclude_pad(x)
  p = basic_conv(sd, f"{n}.branch_pool", pooled, 192, (1, 1))
  return np.concatenate([b1, b3, d, p], axis=1)


def fid_inception_pool3(sd, images_nhwc, size):
  """pytorch_fid InceptionV3([3]) on [-1, 1] NHWC images, resized to `size` (299 for FID)."""
  x = (images_nhwc.transpose(0, 3, 1, 2).astype(np.float64) + 1.0) / 2.0  # As saved: [0, 1].
  x = 2.0 * interpolate_bilinear(x, size) - 1.0  # resize_input, then normalize_input.
  x = basic_conv(sd, "Conv2d_1a_3x3", x, 32, (3, 3), stride=2)
  x = basic_conv(sd, "Conv2d_2a_3x3", x, 32, (3, 3))
  x = basic_conv(sd, "Conv2d_2b_3x3", x, 64, (3, 3), padding=(1, 1))
  x = max_pool2d(x, 3, 2)
  x = basic_conv(sd, "Conv2d_3b_1x1", x, 80, (1, 1))
  x = basic_conv(sd, "Conv2d_4a_3x3", x, 192, (3, 3))
  x = max_pool2d(x, 3, 2)
  x = _inception_a(sd, "Mixed_5b", x, 32)
  x = _inception_a(sd, "Mixed_5c", x, 64)
  x = _inception_a(sd, "Mixed_5d", x, 64)
  x = _inception_b(sd, "Mixed_6a", x)
  for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
    x = _inception_c(sd, name, x, c7)
  x = _inception_d(sd, "Mixed_7a", x)
  x = _inception_e(sd, "Mixed_7b", x, max_pool_branch=False)
  x = _inception_e(sd, "Mixed_7c", x, max_pool_branch=True)
  return x.mean(axis=(2, 3))
