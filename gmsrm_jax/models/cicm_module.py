"""CICM in a network: the memory as a flax variable collection, and the wrapper that plugs it in.

`CrossImageContextMemory` works on one feature map: its positions are the regions (§3), a region
is complete when its part of the mask has no hole, a 1x1 conv + sigmoid predicts the corrupted
ratio gamma (§4.2), and the memory lives in the "memory" collection, which the train step
carries in `TrainState.g_state`. It is overwritten from the whole (global) batch when
`train=True` and only read otherwise.

`WithCICM` equips ANY flax inpainting backbone with CICM (the paper's Table 3 point): it
intercepts the output of one named submodule of the backbone (by default its lowest-resolution
feature map, as the paper does for RFR/JPG/MISF) and hands the augmented features back to the
backbone in its place. The backbone needs no change: UNet-CICM is `WithCICM(UNet(...),
"bottleneck")`, the GM-SRM base network with CICM is `WithCICM(BaseInpaintingNet(...),
"encoder/block_<n-1>")`.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gmsrm_jax import precision
from gmsrm_jax.models import layers
from gmsrm_jax.memory import cicm as cicm_lib
from gmsrm_jax.models.base import masked_input

MEMORY = "memory"  # The flax collection of the carried memory.
DIAGNOSTICS = "diagnostics"  # Non-loss values reported during training (gmsrm_jax/train/step.py).
RATIO_SOURCES = ("predicted", "one", "ground_truth")  # Table 1: "w/ ratio", "w/o ratio", "w/ GT".
# A pixel counts as corrupted when the input differs from the truth by more than half an
# 8-bit grey level ([-1, 1] images: one level is 2/255).
_CORRUPTED_TOLERANCE = 1.0 / 255.0


def _region_blocks(x: jax.Array, grid: tuple[int, int]) -> jax.Array:
  """[B, H, W, c] -> [B, h, w, (H/h)*(W/w)*c]: the pixels of each region of an h x w grid."""
  batch, height, width, channels = x.shape
  rows, cols = grid
  if height % rows or width % cols:
    raise ValueError(f"Image {height}x{width} does not split into a {rows}x{cols} region "
                     "grid; the feature map must divide the image size.")
  x = x.reshape(batch, rows, height // rows, cols, width // cols, channels)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(batch, rows, cols, -1)


def complete_regions(mask: jax.Array, grid: tuple[int, int]) -> jax.Array:
  """[B, h, w] bool: the region's part of the mask (1 = hole) has no hole (§4.1)."""
  return jnp.max(_region_blocks(mask, grid), axis=-1) == 0


def corrupted_ratio_target(image: jax.Array, mask: jax.Array, grid: tuple[int, int]
                           ) -> jax.Array:
  """Eq. 7's ground-truth ratio: compare the input I with the truth, accumulate, normalise.

  I is exactly what the network sees (`masked_input`: holes zeroed). A pixel whose input differs
  from the truth counts 1, and the count is normalised by the region's pixel count, so the
  target is the region's corrupted fraction in [0, 1]. Counting differences, rather than
  summing their magnitudes, keeps the colour of the hidden content out of the target.
  """
  corrupted_input = masked_input(image, mask)[..., :image.shape[-1]]
  differs = jnp.max(jnp.abs(corrupted_input - image), axis=-1, keepdims=True)
  differs = (differs > _CORRUPTED_TOLERANCE).astype(jnp.float32)
  return jnp.mean(_region_blocks(differs, grid), axis=-1)


class CrossImageContextMemory(nn.Module):
  """CICM on one feature map [B, h, w, C]; returns (augmented features, loss terms)."""

  num_sets: int = 13
  set_size: int = 40
  options: cicm_lib.CICMOptions = cicm_lib.CICMOptions()
  ratio: str = "predicted"  # Which gamma eq. 4 uses, see RATIO_SOURCES.

  def _memory(self, channels: int) -> dict[str, nn.Variable]:
    initial = None
    if self.is_initializing():
      initial = cicm_lib.init_state(self.make_rng("params"), self.num_sets, self.set_size,
                                    channels, self.options)
    fields = ("anchors",) if self.options.context in cicm_lib.SINGLE_IMAGE_CONTEXTS else (
        "anchors", "features", "injected")
    return {name: self.variable(MEMORY, name, lambda n=name: getattr(initial, n))
            for name in fields}

  @nn.compact
  def __call__(self, features: jax.Array, image: jax.Array, mask: jax.Array, *, train: bool
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    if self.ratio not in RATIO_SOURCES:
      raise ValueError(f"ratio={self.ratio!r}; expected one of {RATIO_SOURCES}.")
    # The memory is float32 carried state: its similarities, softmaxes and updates run in
    # float32 whatever the step's compute dtype; the backbone gets its own dtype back.
    backbone_features = features
    features, image, mask = map(precision.at_least_float32, (features, image, mask))
    batch, rows, cols, channels = features.shape
    grid = (rows, cols)
    variables = self._memory(channels)
    state = cicm_lib.CICMState(**{name: variables[name].value if name in variables else None
                                  for name in ("anchors", "features", "injected")})

    complete = complete_regions(mask, grid)
    target = corrupted_ratio_target(image, mask, grid)
    ratio_logits = layers.Conv(1, (1, 1), name="ratio_head")(backbone_features)
    predicted = nn.sigmoid(precision.at_least_float32(ratio_logits))[..., 0]
    gamma = {"predicted": predicted, "one": jnp.ones_like(predicted),
             "ground_truth": target}[self.ratio]

    if self.options.context in cicm_lib.SINGLE_IMAGE_CONTEXTS:
      augmented = cicm_lib.single_image_augmentation(
          state, features.reshape(batch, rows * cols, channels),
          complete.reshape(batch, -1), gamma.reshape(batch, -1), self.options)
    else:
      augmented = cicm_lib.context_augmentation(state, features.reshape(-1, channels),
                                                gamma.reshape(-1), self.options)

    if train:
      self._report(state.anchors, complete, features)
      # The global batch's regions, all at once (under jit on a sharded batch this sum is
      # global): every replica writes the same memory.
      state = cicm_lib.context_generalization(state, features.reshape(-1, channels),
                                              complete.reshape(-1), self.options)
      for name, variable in variables.items():
        variable.value = jax.lax.stop_gradient(getattr(state, name))
      for name, value in cicm_lib.diagnostics(jax.lax.stop_gradient(state)).items():
        self._sow(name, value)
    # Eq. 8 on the memory after this step's injection: differentiable with respect to the
    # features injected this step (and constant outside training).
    inter, intra = cicm_lib.set_similarity_losses(state, self.options)
    ratio_loss = jnp.mean(jnp.square(predicted - target))  # Eq. 7, mean over regions.
    return augmented.reshape(features.shape).astype(backbone_features.dtype), {
        "ratio": ratio_loss, "inter": inter, "intra": intra}

  def _report(self, anchors: jax.Array, complete: jax.Array, features: jax.Array) -> None:
    """How many complete regions each set receives in this step (eq. 1 before the update)."""
    chosen = cicm_lib.select_sets(jax.lax.stop_gradient(anchors),
                                  features.reshape(-1, features.shape[-1]), self.options)
    complete = complete.reshape(-1, 1).astype(jnp.float32)
    self._sow("set_regions", jnp.sum(jax.nn.one_hot(chosen, self.num_sets) * complete, axis=0))
    self._sow("complete_regions", jnp.mean(complete))

  def _sow(self, name: str, value: jax.Array) -> None:
    self.sow(DIAGNOSTICS, name, value, init_fn=lambda: None, reduce_fn=lambda _, new: new)


class WithCICM(nn.Module):
  """Any inpainting backbone + CICM on the output of its submodule `feature_module`.

  The backbone is a flax module called as `backbone(image, mask, train=..., compute_dtype=...)`
  that returns `(prediction, aux_terms)`, like every generator here. `feature_module` is the
  '/'-separated path of a submodule inside it (e.g. "bottleneck", "encoder/block_3") whose
  output is a [B, h, w, C] feature map with h, w dividing the image size; it must run exactly
  once per call. CICM's loss terms (ratio, inter, intra) join the backbone's aux terms, so the config
  needs `loss.ratio_weight`, `loss.inter_weight`, `loss.intra_weight`.
  """

  backbone: nn.Module
  feature_module: str
  cicm: CrossImageContextMemory

  @nn.compact
  def __call__(self, image: jax.Array, mask: jax.Array, *, train: bool = False,
               compute_dtype: Any | None = None) -> tuple[jax.Array, dict[str, Any]]:
    target = ("backbone", *self.feature_module.split("/"))
    terms = []

    def augment_target_output(next_fun, args, kwargs, context):
      output = next_fun(*args, **kwargs)
      module = context.module
      if (context.method_name != "__call__" or module.scope is None
          or tuple(module.scope.path) != target):
        return output
      augmented, cicm_terms = self.cicm(output, image, mask, train=train)
      terms.append(cicm_terms)
      return augmented

    with nn.intercept_methods(augment_target_output):
      prediction, aux = self.backbone(image, mask, train=train, compute_dtype=compute_dtype)
    if len(terms) != 1:
      raise ValueError(f"CICM expected the backbone to call {self.feature_module!r} exactly "
                       f"once; it was called {len(terms)} times.")
    return prediction, {**aux, **terms[0]}


def create_memory(cicm_config) -> CrossImageContextMemory:
  """The CICM layer from a config section (configs/unet_cicm.py, `config.model.cicm`)."""
  options = cicm_lib.CICMOptions(
      momentum=cicm_config.momentum, normalized=cicm_config.normalized,
      temperature=cicm_config.temperature, update=cicm_config.update_features,
      augment=cicm_config.augment_features, context=cicm_config.context,
      kmeans_iterations=cicm_config.kmeans_iterations,
      eq4_as_printed=cicm_config.eq4_as_printed)
  return CrossImageContextMemory(num_sets=cicm_config.num_sets,
                                 set_size=cicm_config.set_size, options=options,
                                 ratio=cicm_config.ratio)
