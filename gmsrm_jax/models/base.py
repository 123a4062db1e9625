"""The GM-SRM base encoder-decoder ("Base model", GM-SRM Table IV).

Encoder: a full-resolution stem, then one stride-2 residual block (eq. 2) per entry of
`encoder_channels`. Decoder: one upsampling block (eq. 6 without the memory term) per encoder
block, each fed with the encoder features of the resolution it upsamples from (U-Net style skip).
The output conv maps to RGB in [-1, 1]; compositing with the known pixels is done by the caller
(`composite`), so the raw prediction stays available for the reconstruction loss.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gmsrm_jax import config_checks
from gmsrm_jax.models import layers


def composite(prediction: jax.Array, image: jax.Array, mask: jax.Array) -> jax.Array:
  """Known pixels from `image`, holes (mask == 1) from `prediction`."""
  return mask * prediction + (1.0 - mask) * image


def masked_input(image: jax.Array, mask: jax.Array) -> jax.Array:
  """Eq. 1 / Algorithm 1 line 2: the encoder sees Concat[I_in, M_in] with holes zeroed."""
  return jnp.concatenate([image * (1.0 - mask), mask], axis=-1)


def _average_pool(x: jax.Array) -> jax.Array:
  """2x2 mean, stride 2; an odd side's last row/column is averaged with zero padding."""
  summed = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "SAME")
  return summed / 4.0


def _outside_neighbours(height: int, width: int) -> np.ndarray:
  """(1, H, W, 1): how many of each pixel's 4 neighbours lie outside the image (0-2)."""
  count = np.zeros((1, height, width, 1), np.float32)
  count[:, 0] += 1
  count[:, -1] += 1
  count[:, :, 0] += 1
  count[:, :, -1] += 1
  return count


def _neighbour_sum(x: jax.Array) -> jax.Array:
  """Sum of the 4 neighbours; the border repeats itself (no flux across the image edge).

  Written as a zero pad plus the border pixel once per neighbour it lacks, not as an edge
  pad: XLA fuses a constant pad into the stencil, while an edge pad becomes concatenations it
  materialises, which made the prior's loops 2.5-3x slower on CPU (docs/PERFORMANCE.md).
  """
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return (padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2]
          + padded[:, 1:-1, 2:]) + _outside_neighbours(x.shape[1], x.shape[2]) * x


def _neighbour_mean(x: jax.Array) -> jax.Array:
  return _neighbour_sum(x) / 4.0


def _laplacian(x: jax.Array) -> jax.Array:
  """The 5-point Laplacian of `_neighbour_sum`'s border rule: a graph Laplacian (symmetric,
  eigenvalues in [-8, 0])."""
  return _neighbour_sum(x) - 4.0 * x


# Richardson step on the biharmonic energy ||Laplacian u||^2: the squared Laplacian has
# eigenvalues in [0, 64], so any step below 2/64 converges; 1/40 leaves a margin.
_BIHARMONIC_STEP = 1.0 / 40.0


def pyramid_fill(image: jax.Array, mask: jax.Array, smoothing_iterations: int = 8,
                 biharmonic_iterations: int = 0) -> jax.Array:
  """A smooth, parameter-free completion: known pixels kept, holes filled from coarser scales.

  Push-pull with smoothing, i.e. one multigrid pass towards harmonic (Laplace) inpainting:
  known-pixel averages are pooled down a pyramid (each level the known-weighted mean of the
  finer one, with its fraction of known pixels) to a single pixel; going back up, every pixel
  takes its own value in proportion to how much of it is known and the upsampled coarser
  estimate for the rest, then `smoothing_iterations` Jacobi steps relax the unknown part
  towards the mean of its neighbours. Any image size works; an image without holes comes back
  unchanged. On the demo's validation images 32 iterations (the demos' setting) score 0.16-0.5
  dB below scikit-image's biharmonic inpainting in PSNR and 8 iterations 0.5-0.7 dB below
  (docs/QUALITY.md), at the cost of a few elementwise ops per iteration and level.

  `biharmonic_iterations` then relax the unknown part towards biharmonic inpainting at every
  level (gradient steps on ||Laplacian u||^2, the energy scikit-image's method minimises):
  harmonic fills are flat where the hole is wide, biharmonic ones continue the gradients at
  its edge. Plain Jacobi on the 13-point stencil diverges, so these are Richardson steps, which
  are slow for long wavelengths; starting each level from the coarser one's result supplies
  those (a multigrid pass), so 64 steps per level reach biharmonic's PSNR (DESIGN Q11).
  """
  known = 1.0 - mask
  # values[l]: the known-weighted mean colour of each level-l cell; weights[l]: the fraction of
  # it that is known. Hole pixels enter with weight 0, so nothing of them leaks in.
  values, weights = [image * known], [known]
  while values[-1].shape[1] > 1 or values[-1].shape[2] > 1:
    weight = _average_pool(weights[-1])
    values.append(_average_pool(values[-1] * weights[-1]) / jnp.maximum(weight, 1e-6))
    weights.append(weight)
  filled = values[-1]
  for value, weight in zip(reversed(values[:-1]), reversed(weights[:-1])):
    anchored = weight * value
    filled = anchored + (1.0 - weight) * jax.image.resize(filled, value.shape, "bilinear")
    filled = jax.lax.fori_loop(
        0, smoothing_iterations,
        lambda _, x, a=anchored, w=weight: a + (1.0 - w) * _neighbour_mean(x), filled)
    # Scaling the step by the unknown fraction keeps known pixels fixed and the iteration
    # stable (D A with D diagonal in [0, 1] and A symmetric PSD has eigenvalues in [0, 64]).
    filled = jax.lax.fori_loop(
        0, biharmonic_iterations,
        lambda _, x, w=weight: x - _BIHARMONIC_STEP * (1.0 - w) * _laplacian(_laplacian(x)),
        filled)
  return filled


HOLE_FILLS = ("zero", "pyramid")


def network_input(image: jax.Array, mask: jax.Array, hole_fill: str,
                  fill_iterations: int = 8, fill_biharmonic_iterations: int = 0
                  ) -> tuple[jax.Array, jax.Array | None]:
  """(encoder input, prior): Concat[image with holes filled, mask], and the fill itself.

  "zero" is eq. 1 (holes zeroed; no prior). "pyramid" fills the holes with `pyramid_fill`
  first, so the network starts from a smooth completion instead of a constant (docs/QUALITY.md).
  """
  if hole_fill == "zero":
    return masked_input(image, mask), None
  if hole_fill == "pyramid":
    prior = (mask * pyramid_fill(image, mask, fill_iterations, fill_biharmonic_iterations)
             + (1.0 - mask) * image)
    return jnp.concatenate([prior, mask], axis=-1), prior
  raise ValueError(f"Unknown model.hole_fill {hole_fill!r}; known: {HOLE_FILLS}.")


def in_compute_dtype(encoder_input: jax.Array, compute_dtype: Any | None) -> jax.Array:
  """The encoder's input in the train step's compute dtype (None: as given; docs/DESIGN.md P1).

  Only the network proper runs in it: the parameter-free prior before it stays in the
  image's float32, so a residual head adds back a prior that equals the known pixels
  exactly (a bfloat16 prior is off by up to 2^-9 there, and L1's sign(prediction - image)
  turns that rounding into a full-size gradient on every known pixel).
  """
  return encoder_input if compute_dtype is None else encoder_input.astype(compute_dtype)


def input_and_output_options(model_config) -> dict[str, Any]:
  """The input fill and output head fields every family takes from `config.model`; configs
  saved before these fields existed lack them and meant config_checks.ADDED_FIELDS' values."""
  return {name: config_checks.added_field(model_config, f"model.{name}")
          for name in ("hole_fill", "fill_iterations", "fill_biharmonic_iterations",
                       "residual_output")}


def output_head(features: jax.Array, prior: jax.Array | None, residual: bool) -> jax.Array:
  """The output conv (eq. 6's OutConv): tanh(Conv(F)), or with `residual` prior + Conv(F),
  the conv zero-initialised so an untrained network returns the prior."""
  if not residual:
    return jnp.tanh(layers.Conv(3, (3, 3), padding="SAME", name="out_conv")(features))
  if prior is None:
    raise ValueError("model.residual_output needs a prior: set model.hole_fill='pyramid'.")
  return prior + layers.Conv(3, (3, 3), padding="SAME", kernel_init=nn.initializers.zeros,
                             name="out_conv")(features)


class Encoder(nn.Module):
  """Returns the feature pyramid [stem (full res), 1/2, 1/4, ...] (F_E^i of eq. 2)."""

  encoder_channels: Sequence[int]
  stem_channels: int
  ca_reduction: int = 16

  @nn.compact
  def __call__(self, x: jax.Array) -> list[jax.Array]:
    features = [layers.ConvNormReLU(self.stem_channels, kernel_size=7, name="stem")(x)]
    for i, channels in enumerate(self.encoder_channels):
      features.append(layers.ResidualBlock(channels, strides=2, ca_reduction=self.ca_reduction,
                                           name=f"block_{i}")(features[-1]))
    return features


class Decoder(nn.Module):
  """Upsamples the bottleneck back to full resolution (eq. 6).

  The output is the last block's features, with the stem's full-resolution features
  concatenated when `output_skip` (the U-Net skip at full resolution; docs/QUALITY.md r2).
  `extra` optionally maps a pyramid level to more features to concatenate before that level's
  upsampling block. A model whose extra features depend on the decoder's own outputs (GM-SRM's
  progressive reasoning, eq. 7) runs the blocks one at a time with `level` and `inputs`.
  """

  encoder_channels: Sequence[int]
  stem_channels: int
  ca_reduction: int = 16
  output_skip: bool = True

  def setup(self):
    widths = (self.stem_channels, *self.encoder_channels)
    self.blocks = [layers.DecoderBlock(widths[level], ca_reduction=self.ca_reduction,
                                       name=f"block_{level}")
                   for level in range(len(self.encoder_channels))]

  def __call__(self, features: Sequence[jax.Array],
               extra: dict[int, jax.Array] | None = None) -> jax.Array:
    extra = extra or {}
    num_levels = len(self.encoder_channels)
    decoded = features[num_levels]
    for level in reversed(range(num_levels)):
      inputs = self.inputs(features, level, decoded)
      if level + 1 in extra:
        inputs.append(extra[level + 1])
      decoded = self.level(level, inputs)
    return jnp.concatenate(self.outputs(features, decoded), axis=-1)

  def outputs(self, features: Sequence[jax.Array], decoded: jax.Array) -> list[jax.Array]:
    """What the output conv reads: the full-resolution decoded features, and the stem's."""
    return [decoded, features[0]] if self.output_skip else [decoded]

  def inputs(self, features: Sequence[jax.Array], level: int, decoded: jax.Array
             ) -> list[jax.Array]:
    """[F_D, F_E] read by the block that upsamples to `level` (from level + 1)."""
    source = level + 1
    # The bottleneck is `decoded` itself: no duplicate skip.
    return [decoded] if source == len(self.encoder_channels) else [decoded, features[source]]

  def level(self, level: int, inputs: Sequence[jax.Array]) -> jax.Array:
    """The block from resolution level `level + 1` to `level` on the concatenated `inputs`."""
    return self.blocks[level](inputs)


class BaseInpaintingNet(nn.Module):
  """Predicts the full image from the masked image and the mask (1 = hole)."""

  encoder_channels: Sequence[int]
  stem_channels: int
  ca_reduction: int = 16
  output_skip: bool = True
  hole_fill: str = "zero"  # network_input
  fill_iterations: int = 8  # pyramid_fill's smoothing_iterations
  fill_biharmonic_iterations: int = 0  # pyramid_fill's biharmonic_iterations
  residual_output: bool = False  # output_head

  @nn.compact
  def __call__(self, image: jax.Array, mask: jax.Array, *, train: bool = False,
               compute_dtype: Any | None = None) -> tuple[jax.Array, dict[str, Any]]:
    del train  # No train/eval difference in the base model (instance norm, no dropout).
    encoder_input, prior = network_input(
        image, mask, self.hole_fill, self.fill_iterations, self.fill_biharmonic_iterations)
    features = Encoder(self.encoder_channels, self.stem_channels, self.ca_reduction,
                       name="encoder")(in_compute_dtype(encoder_input, compute_dtype))
    decoded = Decoder(self.encoder_channels, self.stem_channels, self.ca_reduction,
                      self.output_skip, name="decoder")(features)
    prediction = output_head(decoded, prior, self.residual_output)
    return prediction, {}
