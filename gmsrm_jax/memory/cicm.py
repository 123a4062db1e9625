"""Cross-Image Context Memory (CICM; Feng et al., NeurIPS 2022, §4) as pure functions.

The memory is an explicit value: `CICMState` goes in, a new `CICMState` comes out. Nothing here
knows about networks, optimizers or devices (flax only provides the pytree dataclass), so the
functions can be studied, tested and reused on their own; `gmsrm_jax.models.cicm_module`
carries the state through training.

Notation follows the paper: L feature sets S_l, each with an anchor A_l [C] and K cross-image
features C_{l,k} [C]; regional features F_n [C] of N regions (all images of the batch together).

Paper-exact mode (`CICMOptions(normalized=False)`, the default here) computes eqs. 1-4 and 8
literally: dot-product similarities, additive injection, summed eq. 8. Its memory norms grow
without bound (eq. 2 only ever adds). Training configs use the normalized mode, which keeps
every selection of the paper's rule but is bounded (docs/DESIGN.md, "Cross-Image Context
Memory"): cosine similarities (softmax over cosine / temperature); each cross-image feature
stored as the lambda-weighted MEAN of everything injected into it (the paper's sum divided by
its total weight: same direction, bounded by the largest regional feature); eq. 8 as mean
cosines, so its terms are O(1) and eq. 9's weights apply as printed.
"""

import dataclasses
import functools
import math

import flax
import jax
import jax.numpy as jnp

# Which of the K candidates take part (Table 1: "100%", "top-50%", "top-1" update / aug).
SELECTIONS = ("all", "top50", "top1")
# Where the context comes from (Table 2: "CICM", "merged sets", "anchor only", "k-means").
CONTEXTS = ("cross_image", "merged_sets", "anchor_only", "kmeans")
# The single-image variants: no feature sets; the context comes from the image's own regions.
SINGLE_IMAGE_CONTEXTS = ("anchor_only", "kmeans")


@flax.struct.dataclass
class CICMState:
  """The memory. `features`/`injected` are None in the "anchor only" variant (no sets)."""

  anchors: jax.Array  # [L, C]: A_l.
  features: jax.Array | None  # [L, K, C]: C_{l,k}.
  # [L, K] float32: total injection weight sum(lambda) each feature has ever received: the
  # divisor of the normalized mode's mean, and a diagnostic (the paper's "meaningless zeros"
  # are the features still at 0).
  injected: jax.Array | None


@dataclasses.dataclass(frozen=True)
class CICMOptions:
  """How the memory computes; hashable, so it can be a static argument of jit."""

  momentum: float = 0.5  # beta of eq. 3.
  normalized: bool = False  # False: eqs. 1-4 and 8 literally (paper-exact); see module doc.
  temperature: float = 0.1  # Normalized mode: softmax over cosine / temperature.
  update: str = "all"  # Eq. 2 over all / the top-50% / the top-1 features of the set.
  augment: str = "all"  # Eq. 4 over all / the top-50% / the top-1 features of the set.
  context: str = "cross_image"  # Or "merged_sets", "anchor_only", "kmeans" (Table 2).
  kmeans_iterations: int = 10  # "kmeans": Lloyd iterations per image, from the anchors.
  # Eq. 4 as printed weights the regional feature by gamma; §4.2's text (twice) and the "w/o
  # ratio" ablation need the context weighted by gamma. False follows the text (DESIGN.md).
  eq4_as_printed: bool = False

  def __post_init__(self):
    for name, value, allowed in (("update", self.update, SELECTIONS),
                                 ("augment", self.augment, SELECTIONS),
                                 ("context", self.context, CONTEXTS)):
      if value not in allowed:
        raise ValueError(f"CICMOptions.{name}={value!r}; expected one of {allowed}.")


def _unit(x: jax.Array) -> jax.Array:
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))


def init_state(key: jax.Array, num_sets: int = 13, set_size: int = 40, channels: int = 256,
               options: CICMOptions = CICMOptions()) -> CICMState:
  """Standard-normal anchors and features: the scale of instance-normalised features.

  The single-image variants carry the anchors only.

  Not zeros: with equal features, eq. 2 gives every feature of a set the same weight forever
  (they stay identical), and with equal anchors eq. 1 sends every region to set 0.
  """
  anchor_key, feature_key = jax.random.split(key)
  anchors = jax.random.normal(anchor_key, (num_sets, channels), jnp.float32)
  if options.context in SINGLE_IMAGE_CONTEXTS:
    return CICMState(anchors=anchors, features=None, injected=None)
  features = jax.random.normal(feature_key, (num_sets, set_size, channels), jnp.float32)
  return CICMState(anchors=anchors, features=features,
                   injected=jnp.zeros((num_sets, set_size), jnp.float32))


def _similarity(x: jax.Array, y: jax.Array, options: CICMOptions) -> jax.Array:
  """x [N, C], y [M, C] -> [N, M]: dot products (eqs. 1, 2, 4), or cosine / temperature."""
  if options.normalized:
    return (_unit(x) @ _unit(y).T) / options.temperature
  return x @ y.T


def select_sets(anchors: jax.Array, regional_features: jax.Array, options: CICMOptions
                ) -> jax.Array:
  """Eq. 1: l_n = argmax_o F_n . A_o, as int [N]."""
  return jnp.argmax(_similarity(regional_features, anchors, options), axis=-1)


def _restricted_softmax(logits: jax.Array, selection: str) -> jax.Array:
  """Softmax over the last axis, restricted to the top-50% / top-1 logits when asked.

  The restricted variants renormalise over the kept features, so the weights still sum to 1:
  eq. 2 / eq. 4 applied to the selected subset of the set.
  """
  size = logits.shape[-1]
  keep = {"all": size, "top50": math.ceil(size / 2), "top1": 1}[selection]
  if keep < size:
    top = jax.lax.top_k(logits, keep)[1]
    kept = jnp.sum(jax.nn.one_hot(top, size, dtype=jnp.bool_), axis=-2)
    logits = jnp.where(kept, logits, -jnp.inf)
  return jax.nn.softmax(logits, axis=-1)


def _set_weights(regional_features: jax.Array, features: jax.Array, chosen: jax.Array,
                 selection: str, options: CICMOptions) -> jax.Array:
  """lambda_{n, l_n, k} of eqs. 2 and 4 for the chosen set of every region: [N, K].

  Similarities to all L*K features, then the chosen set's row: gathering each region's set
  first would build an [N, K, C] tensor (0.7 GB at paper sizes); this is [N, L, K].
  """
  num_sets, set_size, channels = features.shape
  logits = _similarity(regional_features, features.reshape(num_sets * set_size, channels),
                       options).reshape(-1, num_sets, set_size)
  logits = jnp.take_along_axis(logits, chosen[:, None, None], axis=1)[:, 0]
  return _restricted_softmax(logits, selection)


def context_generalization(state: CICMState, regional_features: jax.Array,
                           complete: jax.Array, options: CICMOptions = CICMOptions()
                           ) -> CICMState:
  """Eqs. 1-3: inject the complete regions of the batch, then the batch-wise anchor update.

  Args:
    state: the memory before this batch; treated as a constant (it is overwritten, never
      optimised).
    regional_features: F_n [N, C], all regions of all images of the (global) batch.
    complete: [N] bool/0-1; incomplete regions inject nothing.
    options: see `CICMOptions`.

  Every region's weights lambda are computed against the memory before the batch and the
  injections are summed: the result does not depend on the order of regions in the batch, so it
  is the same however the batch is split over devices. The new state is differentiable with
  respect to `regional_features` (how the eq. 8 losses reach the network).
  """
  memory = jax.lax.stop_gradient(state)
  features_in = regional_features.astype(jnp.float32)
  weight = complete.astype(jnp.float32)
  chosen = select_sets(memory.anchors, regional_features, options)  # Eq. 1.
  assignment = jax.nn.one_hot(chosen, memory.anchors.shape[0]) * weight[:, None]  # [N, L]
  beta = options.momentum

  if options.context in SINGLE_IMAGE_CONTEXTS:
    # No sets: eq. 3's set mean becomes the mean of the regional features the anchor received.
    counts = jnp.sum(assignment, axis=0)
    received = (assignment.T @ features_in) / jnp.maximum(counts, 1.0)[:, None]
    anchors = jnp.where(counts[:, None] > 0,
                        beta * memory.anchors + (1.0 - beta) * received, memory.anchors)
    return CICMState(anchors=anchors, features=None, injected=None)

  lam = _set_weights(regional_features, memory.features, chosen, options.update, options)
  # Eq. 2: C_{l,k} <- C_{l,k} + sum over the regions n sent to set l of lambda_{n,l,k} F_n.
  injection = jnp.einsum("nl,nk,nc->lkc", assignment, lam, features_in)
  mass = jnp.einsum("nl,nk->lk", assignment, lam)
  injected = memory.injected + mass
  if options.normalized:
    # The mean of all injections so far: the paper's sum over its total weight. (A feature
    # that never received anything keeps its initial value; the inner `where` keeps that
    # branch's gradient finite.)
    total = injected[..., None]
    received = total > 0
    mean = ((memory.injected[..., None] * memory.features + injection)
            / jnp.where(received, total, 1.0))
    features = jnp.where(received, mean, memory.features)
  else:
    features = memory.features + injection
  # Eq. 3, once per batch.
  anchors = beta * memory.anchors + (1.0 - beta) * jnp.mean(features, axis=1)
  return CICMState(anchors=anchors, features=features, injected=injected)


def _mix(regional_features: jax.Array, context: jax.Array, corrupted_ratio: jax.Array,
         options: CICMOptions) -> jax.Array:
  gamma = corrupted_ratio[..., None].astype(regional_features.dtype)
  if options.eq4_as_printed:
    return gamma * regional_features + (1.0 - gamma) * context
  # §4.2: "a larger ratio ... significantly augmented by the context"; ratio 1 propagates the
  # context "fully" (the "w/o ratio" ablation).
  return (1.0 - gamma) * regional_features + gamma * context


def context_augmentation(state: CICMState, regional_features: jax.Array,
                         corrupted_ratio: jax.Array, options: CICMOptions = CICMOptions()
                         ) -> jax.Array:
  """Eq. 4: R_m from F_m [N, C] and the corrupted ratio gamma_m [N] in [0, 1]; returns [N, C].

  The memory is a constant here; gradients reach F (through lambda and the mixing) and gamma.
  With `options.context == "merged_sets"` the anchors are not used: lambda runs over all L*K
  features (Table 2, "merged sets"). The single-image variants ("anchor_only", "kmeans")
  need the images' own regions: use `single_image_augmentation`.
  """
  if options.context in SINGLE_IMAGE_CONTEXTS:
    raise ValueError(f"The {options.context!r} variant uses each image's own regions: call "
                     "single_image_augmentation.")
  memory = jax.lax.stop_gradient(state)
  features = memory.features
  if options.context == "merged_sets":
    features = features.reshape(1, -1, features.shape[-1])
    chosen = jnp.zeros(regional_features.shape[:1], jnp.int32)
  else:
    chosen = select_sets(memory.anchors, regional_features, options)
  lam = _set_weights(regional_features, features, chosen, options.augment, options)
  selected = jax.nn.one_hot(chosen, features.shape[0], dtype=lam.dtype)
  context = jnp.einsum("nl,nk,lkc->nc", selected, lam, features)
  return _mix(regional_features, context, corrupted_ratio, options)


def kmeans_centers(regional_features: jax.Array, complete: jax.Array, initial: jax.Array,
                   options: CICMOptions = CICMOptions()) -> jax.Array:
  """Lloyd's k-means on ONE image's complete regions [M, C] from `initial` centres [L, C].

  Assignment by eq. 1's similarity (dot product, or cosine in the normalized mode: spherical
  k-means); a centre becomes the mean of its members, and a centre without members keeps its
  value. `options.kmeans_iterations` iterations; a fixed count keeps it jittable. Returns [L, C].
  """
  weight = complete.astype(regional_features.dtype)

  def lloyd(_, centers):
    assignment = jax.nn.one_hot(select_sets(centers, regional_features, options),
                                centers.shape[0], dtype=weight.dtype) * weight[:, None]
    counts = jnp.sum(assignment, axis=0)[:, None]
    means = (assignment.T @ regional_features) / jnp.maximum(counts, 1.0)
    return jnp.where(counts > 0, means, centers)

  return jax.lax.fori_loop(0, options.kmeans_iterations, lloyd, initial)


def single_image_augmentation(state: CICMState, regional_features: jax.Array,
                              complete: jax.Array, corrupted_ratio: jax.Array,
                              options: CICMOptions = CICMOptions()) -> jax.Array:
  """Table 2's single-image contexts: cluster centres group each image's own regions.

  "anchor_only": the anchors are the centres. "kmeans": per image, k-means on its complete
  regions starting from the anchors (`kmeans_centers`). For region m of image b, the centre of
  eq. 1 selects the complete regions of the same image assigned to that centre; their
  softmax-weighted sum (eq. 4's weights with F_n in place of C_{l,k}) is the context. With no
  such region the centre itself is the context. The clustering is a constant for gradients
  (like eq. 1's argmax); the context is differentiable in the member features.

  Args:
    regional_features: [B, M, C] (M regions per image). complete: [B, M].
    corrupted_ratio: [B, M]. Returns [B, M, C].
  """
  anchors = jax.lax.stop_gradient(state.anchors)
  if options.context == "kmeans":
    centers = jax.vmap(functools.partial(kmeans_centers, initial=anchors, options=options))(
        jax.lax.stop_gradient(regional_features), complete)
  else:
    centers = jnp.broadcast_to(anchors, (regional_features.shape[0], *anchors.shape))
  chosen = jax.vmap(functools.partial(select_sets, options=options))(centers,
                                                                     regional_features)
  logits = jax.vmap(lambda f: _similarity(f, f, options))(regional_features)  # [B, M, M]
  members = (chosen[:, :, None] == chosen[:, None, :]) & complete[:, None, :].astype(bool)
  logits = jnp.where(members, logits, -jnp.inf)
  has_members = jnp.any(members, axis=-1, keepdims=True)
  lam = jax.nn.softmax(jnp.where(has_members, logits, 0.0), axis=-1)
  context = jnp.where(has_members, jnp.einsum("bmn,bnc->bmc", lam, regional_features),
                      jnp.take_along_axis(centers, chosen[..., None], axis=1))
  return _mix(regional_features, context, corrupted_ratio, options)


def set_similarity_losses(state: CICMState, options: CICMOptions = CICMOptions()
                          ) -> tuple[jax.Array, jax.Array]:
  """Eq. 8: (L_inter, L_intra) = (sum_{l,o} A_l . A_o, sum_{l,k} A_l . C_{l,k}).

  Normalized mode: means of cosines instead of sums of dot products, terms in [-1, 1].
  L_inter is minimised and L_intra maximised (eq. 9). Without sets, L_intra is 0.
  """
  anchors, features = state.anchors, state.features
  reduce = jnp.sum
  if options.normalized:
    anchors, reduce = _unit(anchors), jnp.mean
    features = None if features is None else _unit(features)
  inter = reduce(anchors @ anchors.T)
  if features is None:
    return inter, jnp.zeros((), inter.dtype)
  return inter, reduce(jnp.einsum("lc,lkc->lk", anchors, features))


def diagnostics(state: CICMState) -> dict[str, jax.Array]:
  """What the memory looks like: anchor cosine similarities [L, L], never-updated features."""
  unit = _unit(state.anchors)
  out = {"anchor_similarity": unit @ unit.T}
  if state.injected is not None:
    out["never_updated"] = jnp.mean((state.injected == 0).astype(jnp.float32))
  return out
