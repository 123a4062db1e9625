"""GM-SRM stage 2 (§III, Algorithm 1): the encoder-decoder guided by the frozen generative memory.

  F_E = E(I, M)                                   eq. 1-2 (the base model's encoder)
  c^1 = w_avg + f_c(F_E^n)                        eq. 3 (query from the bottleneck)
  mu_i, sigma_i = FC(Conv(F_E^i, F_D^{i-1}))      eq. 8, noise_i ~ N(mu_i, sigma_i^2)
  F_M^i = M(F_E^i, c^i, noise_i)                  eq. 4, Algorithm 1 line 19
  F_D^i = D_i(Concat[F_M^i, F_E^i, F_D^{i-1}])    eq. 6
  c^{i+1} = f_c(F_D^i) + c^i                      eq. 7 (progressive reasoning)

The memory (`GenerativeMemory`, the stage-1 synthesis network and its tracked w_avg) is
queried one block at a time, alternating with the decoder: block i runs at the resolution of
decoder input i and its output is concatenated there. Memory blocks coarser than the
bottleneck run first, on c^1, with no encoder features. Its weights are frozen: they live in
`TrainState.frozen`, outside the optimizer (`models.split_frozen`), except the
`EncoderFusion` adapters through which F_E enters each block (DESIGN M2, G-entries).

Table IV variants are switches: GM-BM (`conditional_noise=False, progressive=False`: N(0, 1)
noise, c^1 for every block), GM-CSV (`conditional_noise=True`), GM-SRM (both).
"""

from typing import Any, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from gmsrm_jax import config_checks
from gmsrm_jax import precision
from gmsrm_jax import tree_match
from gmsrm_jax.models import layers
from gmsrm_jax.models.base import Decoder, Encoder, input_and_output_options
from gmsrm_jax.models.base import in_compute_dtype, network_input, output_head
from gmsrm_jax.stylegan import memory as memory_lib
from gmsrm_jax.stylegan import networks

# The module name of the frozen memory; every parameter under it is frozen except the
# adapters (`memory_lib.ADAPTER_NAME`).
MEMORY_MODULE = "generative_memory"
DIAGNOSTICS = "diagnostics"  # As gmsrm_jax/train/step.py.


def is_frozen_param(path: Sequence[str]) -> bool:
  """Whether a parameter (by its path of module names) belongs to the frozen stage-1 memory."""
  return MEMORY_MODULE in path and memory_lib.ADAPTER_NAME not in path


class GenerativeMemory(nn.Module):
  """The stage-1 synthesis network with the w_avg it was exported with (both frozen).

  `w_avg` is a parameter only so that it travels with the memory's other weights (frozen,
  checkpointed, exported); the optimizer never sees it.
  """

  resolution: int
  start_resolution: int
  channel_base: int
  channel_max: int
  w_dim: int
  upsample: str = "transposed"  # networks.UPSAMPLE_FORMS

  def setup(self):
    self.synthesis = networks.SynthesisNetwork(self.resolution, self.start_resolution,
                                               self.channel_base, self.channel_max,
                                               self.upsample)
    self.w_avg = self.param("w_avg", nn.initializers.zeros, (self.w_dim,))

  @property
  def resolutions(self) -> tuple[int, ...]:
    return networks.block_resolutions(self.start_resolution, self.resolution)

  def channels(self, resolution: int) -> int:
    return networks.channels_at(resolution, self.channel_base, self.channel_max)

  def average_latent(self) -> jax.Array:
    return self.w_avg

  def block(self, index: int, previous, rgb, latent, noise, encoder_features):
    return self.synthesis.block(index, previous, rgb, latent, noise, encoder_features)


def kl_to_standard_normal(mu: jax.Array, log_sigma: jax.Array) -> jax.Array:
  """KL(N(mu, sigma^2) || N(0, 1)) per dimension, closed form: (mu^2 + sigma^2 - 1) / 2 - log
  sigma."""
  return 0.5 * (jnp.square(mu) + jnp.exp(2.0 * log_sigma) - 1.0) - log_sigma


class GMSRMNet(nn.Module):
  """Predicts the full image from the masked image and the mask (1 = hole); aux = {"kl"}."""

  encoder_channels: Sequence[int]
  stem_channels: int
  generative_memory: GenerativeMemory  # Its field name is MEMORY_MODULE (the params' path).
  ca_reduction: int = 16
  conditional_noise: bool = True  # Eq. 8; False: StyleGAN's N(0, 1) noise (GM-BM).
  progressive: bool = True  # Eq. 7; False: c^1 for every memory block (GM-BM, GM-CSV).
  head_channels: int = 64  # Width of the conv in f_c (eq. 3) and in the noise head (eq. 8).
  kl_layer_weights: Sequence[float] = ()  # w_i of eq. 9 per memory layer; () -> mean.
  output_skip: bool = True  # Stem features beside F_D at the output conv (base.Decoder).
  hole_fill: str = "zero"  # base.network_input
  fill_iterations: int = 8  # base.pyramid_fill's smoothing_iterations
  fill_biharmonic_iterations: int = 0  # base.pyramid_fill's biharmonic_iterations
  residual_output: bool = False  # base.output_head

  @nn.compact
  def __call__(self, image: jax.Array, mask: jax.Array, *, train: bool = False,
               compute_dtype: Any | None = None) -> tuple[jax.Array, dict[str, Any]]:
    # Instance norm, no dropout: `train` only decides whether diagnostics are reported.
    size = image.shape[1]
    num_levels = len(self.encoder_channels)
    encoder_input, prior = network_input(
        image, mask, self.hole_fill, self.fill_iterations, self.fill_biharmonic_iterations)
    features = Encoder(self.encoder_channels, self.stem_channels, self.ca_reduction,
                       name="encoder")(in_compute_dtype(encoder_input, compute_dtype))
    decoder = Decoder(self.encoder_channels, self.stem_channels, self.ca_reduction,
                      self.output_skip, name="decoder")
    memory = self.generative_memory
    resolutions = memory.resolutions
    level_of = {size // 2**level: level for level in range(num_levels + 1)}
    queried = [r for r in resolutions if r in level_of]
    if not queried:
      raise ValueError(f"No generative-memory resolution {resolutions} matches a decoder "
                       f"resolution {sorted(level_of)} of {size}x{size} images.")
    bottleneck = features[num_levels]
    coarse = [r for r in resolutions if r < bottleneck.shape[1]]

    fc = layers.Dense(memory.w_dim, name="query_fc")  # Shared by every level: "the same f_c".

    def f_c(x: jax.Array, level: int) -> jax.Array:
      # The conv is per level (the widths differ), the FC is shared (eq. 7's "same mapping").
      conv = layers.Conv(self.head_channels, (3, 3), padding="SAME",
                         name=f"query_conv_{level}")
      return fc(jnp.mean(nn.leaky_relu(conv(x), 0.2), axis=(1, 2)))

    batch = image.shape[0]
    channels = [memory.channels(r) for r in resolutions]
    standard = networks.sample_noise(self.make_rng("noise"), resolutions, batch,
                                     channels if self.conditional_noise else None)
    kl_layers = []

    # The memory's activations run in the encoder's dtype; float32 noise would promote them.
    memory_dtype = bottleneck.dtype

    def noise_for(index: int, conditioning: list[jax.Array], name: int):
      if not self.conditional_noise:
        return [epsilon.astype(memory_dtype) for epsilon in standard[index]]
      # Eq. 8 / Algorithm 1 line 7: conv over (F_E^i, F_D^{i-1}), spatial mean, FC -> per
      # channel mu and log sigma for each synthesis layer of the block. The FC starts at 0,
      # i.e. at N(0, 1): the noise the memory was pre-trained with.
      x = jnp.concatenate(conditioning, axis=-1)
      conv = layers.Conv(self.head_channels, (3, 3), padding="SAME", name=f"noise_conv_{name}")
      h = jnp.mean(nn.leaky_relu(conv(x), 0.2), axis=(1, 2))
      num_layers, width = len(standard[index]), channels[index]
      stats = layers.Dense(2 * num_layers * width, kernel_init=nn.initializers.zeros,
                           name=f"noise_fc_{name}")(h).reshape(batch, num_layers, 2, width)
      # The KL and sigma = exp(log sigma) in float32, whatever the compute dtype.
      stats = precision.at_least_float32(stats)
      mu, log_sigma = stats[:, :, 0], stats[:, :, 1]
      noise = []
      for j, epsilon in enumerate(standard[index]):
        # Reparameterisation: noise = mu + sigma * epsilon, differentiable in mu and sigma.
        noise.append((mu[:, j, None, None, :] + jnp.exp(log_sigma[:, j, None, None, :])
                      * epsilon).astype(memory_dtype))
        kl_layers.append(jnp.mean(kl_to_standard_normal(mu[:, j], log_sigma[:, j])))
        if train:
          self.sow(DIAGNOSTICS, f"noise_sigma_{name}_{j}",
                   jnp.mean(jnp.exp(log_sigma[:, j])), init_fn=lambda: None,
                   reduce_fn=lambda _, new: new)
      return noise

    latent = memory.average_latent() + f_c(bottleneck, num_levels)  # c^1, eq. 3.
    previous = rgb = None
    index = 0
    for r in coarse:  # Coarser than any decoder input: c^1 and the bottleneck's noise.
      previous, rgb = memory.block(index, previous, rgb, latent,
                                   noise_for(index, [bottleneck], r), None)
      index += 1

    def query(level: int, decoded: jax.Array) -> jax.Array | None:
      """F_M at `level`'s resolution from F_E^level and F_D (eqs. 4, 7, 8); None off-memory."""
      nonlocal latent, previous, rgb, index
      r = size // 2**level
      if r not in queried:
        return None
      if resolutions.index(r) != index:
        raise ValueError(f"Memory block at {r}^2 would run before the blocks below it.")
      if self.progressive and level != num_levels:
        latent = latent + f_c(decoded, level)  # Eq. 7.
      conditioning = [decoded] if level == num_levels else [features[level], decoded]
      previous, rgb = memory.block(index, previous, rgb, latent,
                                   noise_for(index, conditioning, r), features[level])
      index += 1
      return previous

    decoded = bottleneck  # F_D^0 = F_E^n (Algorithm 1 line 11).
    for level in reversed(range(num_levels)):
      inputs = decoder.inputs(features, level, decoded)
      memory_features = query(level + 1, decoded)
      if memory_features is not None:
        inputs.append(memory_features)
      decoded = decoder.level(level, inputs)
    outputs = decoder.outputs(features, decoded)
    memory_features = query(0, decoded)  # Full resolution: concatenated before OutConv.
    if memory_features is not None:
      outputs.append(memory_features)
    prediction = output_head(jnp.concatenate(outputs, axis=-1), prior, self.residual_output)
    if not self.conditional_noise:
      return prediction, {}
    return prediction, {"kl": self._weighted_kl(kl_layers)}

  def _weighted_kl(self, kl_layers: list[jax.Array]) -> jax.Array:
    """Eq. 9: sum_i w_i KL_i; each KL_i is a mean over batch and channels."""
    weights = tuple(self.kl_layer_weights) or (1.0 / len(kl_layers),) * len(kl_layers)
    if len(weights) != len(kl_layers):
      raise ValueError(f"model.gmsrm.kl_layer_weights has {len(weights)} entries; the memory "
                       f"has {len(kl_layers)} noise layers (one weight each, coarse first).")
    return sum(w * kl for w, kl in zip(weights, kl_layers))


def create(model_config: ml_collections.ConfigDict) -> GMSRMNet:
  architecture = model_config.memory.architecture
  gmsrm = model_config.gmsrm
  return GMSRMNet(
      encoder_channels=tuple(model_config.encoder_channels),
      stem_channels=model_config.stem_channels, ca_reduction=model_config.ca_reduction,
      generative_memory=GenerativeMemory(
          resolution=architecture.resolution, start_resolution=architecture.start_resolution,
          channel_base=architecture.channel_base, channel_max=architecture.channel_max,
          w_dim=architecture.w_dim, upsample=networks.upsample_form(architecture)),
      conditional_noise=gmsrm.conditional_noise, progressive=gmsrm.progressive,
      head_channels=gmsrm.head_channels, kl_layer_weights=tuple(gmsrm.kl_layer_weights),
      output_skip=config_checks.added_field(model_config, "model.output_skip"),
      **input_and_output_options(model_config))


def stage1_commands(memory_path: str) -> str:
  return ("Make it with stage 1, e.g.\n"
          "  python train.py --config=configs/memory_synthetic.py --workdir=runs/memory\n"
          "  python -m gmsrm_jax.train.memory_pretraining --config=configs/memory_synthetic.py "
          "--workdir=runs/memory\n"
          f"then pass --config.model.memory.path=runs/memory/memory (now {memory_path!r}); "
          "or run both stages with python -m gmsrm_jax.pipeline (docs/TRAINING.md).")


def load_frozen(model_config: ml_collections.ConfigDict, abstract_frozen: Any, sharding) -> Any:
  """The frozen parameters of a fresh stage-2 run: the stage-1 export, placed where the model
  has its `generative_memory` (also inside a wrapper such as WithCICM).

  Raises:
    FileNotFoundError: `model.memory.path` is empty or holds no export (with the commands).
    memory_lib.MemoryMismatchError: the export has another architecture; names the field/leaf.
  """
  path = model_config.memory.path
  if not path:
    raise FileNotFoundError("config.model.memory.path is empty: GM-SRM stage 2 needs the "
                            "stage-1 generative memory export. " + stage1_commands(path))
  try:
    frozen = memory_lib.load_memory(path, model_config.memory.architecture, sharding=sharding)
  except FileNotFoundError:
    raise FileNotFoundError(f"No generative memory export at {path}. "
                            + stage1_commands(path)) from None
  loaded = {"synthesis": frozen.synthesis_params, "w_avg": frozen.w_avg}
  flat = flax.traverse_util.flatten_dict(abstract_frozen)
  prefixes = {key[:key.index(MEMORY_MODULE) + 1] for key in flat}
  tree = {}
  for prefix in prefixes:
    for key, value in flax.traverse_util.flatten_dict(loaded).items():
      tree[(*prefix, *key)] = value
  tree = flax.traverse_util.unflatten_dict(tree)
  try:
    tree_match.check_compatible(tree, abstract_frozen)
  except tree_match.CheckpointMismatchError as e:
    raise memory_lib.MemoryMismatchError(f"The generative memory at {path}: {e}") from None
  return tree
