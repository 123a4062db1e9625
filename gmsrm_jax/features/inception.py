"""The FID Inception-v3: pool-3 features of the 2015-12-05 TensorFlow graph, as in pytorch-fid.

FID (Heusel et al. 2017, [47] in CICM) is defined on the 2048-d "pool_3" features of one
specific network: the TensorFlow Inception graph `inception-2015-12-05` of the original TTUR
code. We reproduce its PyTorch port, `pytorch_fid.inception.InceptionV3` with
`use_fid_inception=True` (weights `pt_inception-2015-12-05-6726825d.pth`), the FID
implementation inpainting papers (CICM's baselines MISF, JPG, RFR among them) report with.

The quirks that make it differ from torchvision's `inception_v3` (and all of them matter for
the numbers):
  * its own weights (1008 classes), not torchvision's ImageNet ones;
  * input resized to 299x299 by bilinear interpolation with half-pixel centers and no
    antialiasing (`F.interpolate(..., mode="bilinear", align_corners=False)`), whatever the
    input size, then scaled from [0, 1] to [-1, 1];
  * the 3x3 average pools inside Mixed_5b/5c/5d (A), Mixed_6b-6e (C) and Mixed_7b (E_1)
    exclude the zero padding from the average (`count_include_pad=False`, TF's behaviour);
  * Mixed_7c (E_2) pools its branch with a 3x3 MAX pool (padding 1), where the Inception
    paper and torchvision use an average pool (a bug of that TF graph, kept for comparability);
  * every conv is bias-free and followed by batch norm with eps = 1e-3 (frozen statistics).

Inputs here are [-1, 1] images (the project's convention); bilinear resizing commutes with the
affine map [0, 1] -> [-1, 1] (its weights sum to one), so resizing [-1, 1] images directly is
the same computation. The architecture needs inputs of at least 75x75 after the resize.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

FID_IMAGE_SIZE = 299
FEATURE_DIM = 2048
MIN_IMAGE_SIZE = 75
BATCH_NORM_EPS = 1e-3

_PRECISION = jax.lax.Precision.HIGHEST


class FrozenBatchNorm(nn.Module):
  """Batch norm with frozen statistics, stored as parameters (scale, bias, mean, var)."""

  eps: float = BATCH_NORM_EPS

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (channels,))
    bias = self.param("bias", nn.initializers.zeros, (channels,))
    mean = self.param("mean", nn.initializers.zeros, (channels,))
    var = self.param("var", nn.initializers.ones, (channels,))
    return (x - mean) * (scale * jax.lax.rsqrt(var + self.eps)) + bias


class BasicConv2d(nn.Module):
  """torchvision's BasicConv2d: bias-free conv -> batch norm (eps 1e-3) -> ReLU."""

  features: int
  kernel: tuple[int, int]
  strides: int = 1
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    (ph, pw) = self.padding
    x = nn.Conv(self.features, self.kernel, strides=self.strides,
                padding=((ph, ph), (pw, pw)), use_bias=False, precision=_PRECISION,
                name="conv")(x)
    return nn.relu(FrozenBatchNorm(name="bn")(x))


def _avg_pool_same(x: jax.Array) -> jax.Array:
  # TF's 'SAME' average pool divides by the number of real (unpadded) inputs.
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


def _max_pool_valid(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), strides=(2, 2))


class InceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    branch1x1 = BasicConv2d(64, (1, 1), name="branch1x1")(x)
    branch5x5 = BasicConv2d(48, (1, 1), name="branch5x5_1")(x)
    branch5x5 = BasicConv2d(64, (5, 5), padding=(2, 2), name="branch5x5_2")(branch5x5)
    dbl = BasicConv2d(64, (1, 1), name="branch3x3dbl_1")(x)
    dbl = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(dbl)
    dbl = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(dbl)
    pool = BasicConv2d(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_same(x))
    return jnp.concatenate([branch1x1, branch5x5, dbl, pool], axis=-1)


class InceptionB(nn.Module):

  @nn.compact
  def __call__(self, x):
    branch3x3 = BasicConv2d(384, (3, 3), strides=2, name="branch3x3")(x)
    dbl = BasicConv2d(64, (1, 1), name="branch3x3dbl_1")(x)
    dbl = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(dbl)
    dbl = BasicConv2d(96, (3, 3), strides=2, name="branch3x3dbl_3")(dbl)
    return jnp.concatenate([branch3x3, dbl, _max_pool_valid(x)], axis=-1)


class InceptionC(nn.Module):
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    branch1x1 = BasicConv2d(192, (1, 1), name="branch1x1")(x)
    b7 = BasicConv2d(c7, (1, 1), name="branch7x7_1")(x)
    b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    dbl = BasicConv2d(c7, (1, 1), name="branch7x7dbl_1")(x)
    dbl = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(dbl)
    dbl = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(dbl)
    dbl = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(dbl)
    dbl = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(dbl)
    pool = BasicConv2d(192, (1, 1), name="branch_pool")(_avg_pool_same(x))
    return jnp.concatenate([branch1x1, b7, dbl, pool], axis=-1)


class InceptionD(nn.Module):

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv2d(192, (1, 1), name="branch3x3_1")(x)
    b3 = BasicConv2d(320, (3, 3), strides=2, name="branch3x3_2")(b3)
    b7 = BasicConv2d(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv2d(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_valid(x)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b (average pool branch, "E_1") or Mixed_7c (max pool branch, "E_2")."""

  max_pool_branch: bool = False

  @nn.compact
  def __call__(self, x):
    branch1x1 = BasicConv2d(320, (1, 1), name="branch1x1")(x)
    b3 = BasicConv2d(384, (1, 1), name="branch3x3_1")(x)
    b3 = jnp.concatenate(
        [BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
         BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
    dbl = BasicConv2d(448, (1, 1), name="branch3x3dbl_1")(x)
    dbl = BasicConv2d(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(dbl)
    dbl = jnp.concatenate(
        [BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(dbl),
         BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(dbl)], axis=-1)
    if self.max_pool_branch:
      pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    else:
      pooled = _avg_pool_same(x)
    pool = BasicConv2d(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([branch1x1, b3, dbl, pool], axis=-1)


def resize_bilinear(images: jax.Array, size: int) -> jax.Array:
  """[B, H, W, C] -> [B, size, size, C] as torch's F.interpolate(mode="bilinear",
  align_corners=False): half-pixel centers, and no antialiasing, so shrinking samples only
  the two nearest pixels per axis (jax.image.resize's default would low-pass filter first)."""
  batch, _, _, channels = images.shape
  return jax.image.resize(images.astype(jnp.float32), (batch, size, size, channels), "bilinear",
                          antialias=False)


class FIDInceptionV3(nn.Module):
  """[-1, 1] images [B, H, W, 3] -> pool-3 features [B, 2048] (float32).

  Attributes:
    image_size: side the input is resized to. 299 is the FID definition; anything else gives
      numbers that are not FID (the tests use 75, the smallest the network accepts).
  """

  image_size: int = FID_IMAGE_SIZE

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    if self.image_size < MIN_IMAGE_SIZE:
      raise ValueError(f"FID Inception needs inputs of at least {MIN_IMAGE_SIZE}x"
                       f"{MIN_IMAGE_SIZE}; got image_size={self.image_size}.")
    x = resize_bilinear(images, self.image_size)
    x = BasicConv2d(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
    x = BasicConv2d(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = BasicConv2d(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool_valid(x)
    x = BasicConv2d(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = BasicConv2d(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool_valid(x)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    x = InceptionC(128, name="Mixed_6b")(x)
    x = InceptionC(160, name="Mixed_6c")(x)
    x = InceptionC(160, name="Mixed_6d")(x)
    x = InceptionC(192, name="Mixed_6e")(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE(name="Mixed_7b")(x)
    x = InceptionE(max_pool_branch=True, name="Mixed_7c")(x)
    return jnp.mean(x, axis=(1, 2))


def fid_features(params, images: jax.Array, image_size: int = FID_IMAGE_SIZE) -> jax.Array:
  """Pool-3 features [B, 2048] of [-1, 1] images [B, H, W, 3]."""
  return FIDInceptionV3(image_size).apply({"params": params}, images)
