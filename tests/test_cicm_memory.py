"""CICM's pure memory functions (gmsrm_jax/memory/cicm.py) against straightforward loops.

Every reference below is written region by region in float64 numpy, the way eqs. 1-4 and 8
read, independently of the vectorised einsum/top-k code under test.
"""

import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmsrm_jax.memory import cicm

L, K, C, N = 5, 8, 16, 40


def _unit(x):
  return x / np.linalg.norm(x)


def _similarity(x, y, options):
  if options.normalized:
    return float(_unit(x) @ _unit(y)) / options.temperature
  return float(x @ y)


def _weights(logits, selection):
  """Softmax of eq. 2/4 over the kept entries (all / top half / the best one)."""
  logits = np.asarray(logits, np.float64)
  keep = {"all": len(logits), "top50": math.ceil(len(logits) / 2), "top1": 1}[selection]
  kept = np.argsort(-logits, kind="stable")[:keep]
  weights = np.zeros_like(logits)
  exp = np.exp(logits[kept] - logits[kept].max())
  weights[kept] = exp / exp.sum()
  return weights


def _reference_generalization(state, features_in, complete, options):
  anchors = np.asarray(state.anchors, np.float64)
  memory = np.asarray(state.features, np.float64)
  before = np.asarray(state.injected, np.float64)
  injected = before.copy()
  added = np.zeros_like(memory)
  for n in range(len(features_in)):
    if not complete[n]:
      continue
    f = np.asarray(features_in[n], np.float64)
    chosen = int(np.argmax([_similarity(f, a, options) for a in anchors]))  # Eq. 1.
    lam = _weights([_similarity(f, c, options) for c in memory[chosen]], options.update)
    for k in range(memory.shape[1]):  # Eq. 2, against the memory before the batch.
      added[chosen, k] += lam[k] * f
      injected[chosen, k] += lam[k]
  new = memory + added
  if options.normalized:  # The weighted mean of everything injected so far.
    for l, k in zip(*np.nonzero(injected)):
      new[l, k] = (before[l, k] * memory[l, k] + added[l, k]) / injected[l, k]
  beta = options.momentum
  new_anchors = beta * anchors + (1 - beta) * new.mean(axis=1)  # Eq. 3.
  return new_anchors, new, injected


def _reference_augmentation(state, features_in, ratio, options):
  anchors = np.asarray(state.anchors, np.float64)
  memory = np.asarray(state.features, np.float64)
  if options.context == "merged_sets":
    memory = memory.reshape(1, -1, memory.shape[-1])
  out = []
  for m, f in enumerate(np.asarray(features_in, np.float64)):
    chosen = 0 if options.context == "merged_sets" else int(
        np.argmax([_similarity(f, a, options) for a in anchors]))
    lam = _weights([_similarity(f, c, options) for c in memory[chosen]], options.augment)
    context = sum(lam[k] * memory[chosen, k] for k in range(memory.shape[1]))
    gamma = ratio[m]
    out.append(gamma * f + (1 - gamma) * context if options.eq4_as_printed
               else (1 - gamma) * f + gamma * context)
  return np.stack(out)


def _random_inputs(seed, scale=1.0):
  rng = np.random.default_rng(seed)
  features_in = (scale * rng.normal(size=(N, C))).astype(np.float32)
  complete = rng.uniform(size=N) < 0.6
  ratio = rng.uniform(size=N).astype(np.float32)
  return features_in, complete, ratio


def _state(options, seed=1):
  return cicm.init_state(jax.random.key(seed), L, K, C, options)


EXACT = cicm.CICMOptions()
NORMALIZED = cicm.CICMOptions(normalized=True, temperature=0.2)


@pytest.mark.parametrize("options", [
    EXACT, NORMALIZED,
    cicm.CICMOptions(update="top50"), cicm.CICMOptions(update="top1"),
    cicm.CICMOptions(normalized=True, update="top1", momentum=0.8),
], ids=["exact", "normalized", "top50", "top1", "normalized_top1"])
def test_context_generalization_matches_eqs_1_to_3(options):
  state = _state(options)
  # Features of norm ~1 against memory of norm ~1: softmax weights are far from one-hot, so
  # every weight of eq. 2 matters.
  features_in, complete, _ = _random_inputs(0, scale=1.0 / math.sqrt(C))
  new = cicm.context_generalization(state, jnp.asarray(features_in), jnp.asarray(complete),
                                    options)
  anchors, memory, injected = _reference_generalization(state, features_in, complete, options)
  np.testing.assert_allclose(new.features, memory, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new.anchors, anchors, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new.injected, injected, rtol=1e-5, atol=1e-6)


def test_top1_update_touches_one_feature_per_region_and_incomplete_regions_nothing():
  options = cicm.CICMOptions(update="top1")
  state = _state(options)
  features_in, _, _ = _random_inputs(0)
  complete = np.zeros(N, bool)
  complete[3] = True
  new = cicm.context_generalization(state, jnp.asarray(features_in), jnp.asarray(complete),
                                    options)
  changed = np.any(np.asarray(new.features) != np.asarray(state.features), axis=-1)
  assert changed.sum() == 1
  assert float(jnp.sum(new.injected)) == 1.0
  nothing = cicm.context_generalization(state, jnp.asarray(features_in), jnp.zeros(N, bool),
                                        options)
  np.testing.assert_array_equal(nothing.features, state.features)
  # Eq. 3 still runs once per batch, even when no region was injected.
  np.testing.assert_allclose(nothing.anchors, 0.5 * state.anchors
                             + 0.5 * jnp.mean(state.features, axis=1), rtol=1e-6)


def test_generalization_is_independent_of_region_order():
  """Summed injections: the same memory however the batch is ordered or split over devices."""
  state = _state(NORMALIZED)
  features_in, complete, _ = _random_inputs(2)
  order = np.random.default_rng(3).permutation(N)
  a = cicm.context_generalization(state, features_in, complete, NORMALIZED)
  b = cicm.context_generalization(state, features_in[order], complete[order], NORMALIZED)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("options", [
    EXACT, NORMALIZED, cicm.CICMOptions(augment="top50"), cicm.CICMOptions(augment="top1"),
    cicm.CICMOptions(context="merged_sets"), cicm.CICMOptions(eq4_as_printed=True),
    cicm.CICMOptions(normalized=True, context="merged_sets", augment="top50"),
], ids=["exact", "normalized", "top50", "top1", "merged", "as_printed", "normalized_merged"])
def test_context_augmentation_matches_eq_4(options):
  state = _state(options)
  features_in, _, ratio = _random_inputs(4, scale=1.0 / math.sqrt(C))
  out = cicm.context_augmentation(state, jnp.asarray(features_in), jnp.asarray(ratio), options)
  np.testing.assert_allclose(out, _reference_augmentation(state, features_in, ratio, options),
                             rtol=1e-5, atol=1e-6)


def test_ratio_endpoints_follow_section_4_2():
  """gamma = 0 keeps the regional feature; gamma = 1 ("w/o ratio") is all context."""
  state = _state(EXACT)
  features_in, _, _ = _random_inputs(5)
  keep = cicm.context_augmentation(state, features_in, jnp.zeros(N), EXACT)
  np.testing.assert_allclose(keep, features_in, rtol=1e-6)
  full = cicm.context_augmentation(state, features_in, jnp.ones(N), EXACT)
  printed = cicm.CICMOptions(eq4_as_printed=True)
  np.testing.assert_allclose(full, cicm.context_augmentation(state, features_in, jnp.zeros(N),
                                                             printed), rtol=1e-6)
  assert not np.allclose(full, features_in)


@pytest.mark.parametrize("options", [EXACT, NORMALIZED], ids=["exact", "normalized"])
def test_set_similarity_losses_match_eq_8(options):
  state = _state(options)
  anchors = np.asarray(state.anchors, np.float64)
  memory = np.asarray(state.features, np.float64)
  if options.normalized:  # Mean cosines.
    dot = lambda a, b: _unit(a) @ _unit(b)
    inter = sum(dot(anchors[l], anchors[o]) for l in range(L) for o in range(L)) / L**2
    intra = sum(dot(anchors[l], memory[l, k]) for l in range(L) for k in range(K)) / (L * K)
  else:
    inter = sum(anchors[l] @ anchors[o] for l in range(L) for o in range(L))
    intra = sum(anchors[l] @ memory[l, k] for l in range(L) for k in range(K))
  got_inter, got_intra = cicm.set_similarity_losses(state, options)
  np.testing.assert_allclose(got_inter, inter, rtol=1e-5)
  np.testing.assert_allclose(got_intra, intra, rtol=1e-5)


def test_anchor_only_variant():
  """Table 2 "anchor only": anchors follow the mean of what they receive; the context of a
  region is its own image's complete regions under the same anchor (else the anchor)."""
  options = cicm.CICMOptions(context="anchor_only")
  state = _state(options)
  assert state.features is None
  features_in, complete, ratio = _random_inputs(6)
  new = cicm.context_generalization(state, features_in, complete, options)
  anchors = np.asarray(state.anchors, np.float64)
  chosen = np.argmax(features_in @ anchors.T, axis=-1)
  for l in range(L):
    members = features_in[(chosen == l) & complete]
    expected = anchors[l] if not len(members) else 0.5 * anchors[l] + 0.5 * members.mean(0)
    np.testing.assert_allclose(new.anchors[l], expected, rtol=1e-5, atol=1e-6)
  assert float(cicm.set_similarity_losses(new)[1]) == 0.0

  batch, regions = 4, N // 4
  grouped = features_in.reshape(batch, regions, C)
  out = cicm.single_image_augmentation(state, grouped, complete.reshape(batch, regions),
                                       ratio.reshape(batch, regions), options)
  for b in range(batch):
    for m in range(regions):
      f = grouped[b, m].astype(np.float64)
      members = [n for n in range(regions) if complete.reshape(batch, regions)[b, n]
                 and chosen.reshape(batch, regions)[b, n] == chosen.reshape(batch, regions)[b, m]]
      if members:
        lam = _weights([f @ grouped[b, n] for n in members], "all")
        context = sum(w * grouped[b, n] for w, n in zip(lam, members))
      else:
        context = anchors[chosen.reshape(batch, regions)[b, m]]
      gamma = ratio.reshape(batch, regions)[b, m]
      np.testing.assert_allclose(out[b, m], (1 - gamma) * f + gamma * context, rtol=1e-4,
                                 atol=1e-5)
  with pytest.raises(ValueError, match="single_image_augmentation"):
    cicm.context_augmentation(state, features_in, ratio, options)


def _reference_kmeans(features_in, complete, centers, options):
  """Lloyd's algorithm, one region and one centre at a time."""
  centers = np.array(centers, np.float64)
  for _ in range(options.kmeans_iterations):
    members = [[] for _ in centers]
    for f, is_complete in zip(features_in.astype(np.float64), complete):
      if is_complete:
        members[int(np.argmax([_similarity(f, c, options) for c in centers]))].append(f)
    centers = np.stack([np.mean(m, axis=0) if m else c for m, c in zip(members, centers)])
  return centers


@pytest.mark.parametrize("options", [cicm.CICMOptions(context="kmeans", kmeans_iterations=4),
                                     cicm.CICMOptions(context="kmeans", normalized=True)])
def test_kmeans_variant(options):
  """Table 2 "k-means": per image, Lloyd's algorithm on its complete regions from the anchors;
  then the anchor-only rule with the image's own centres. The anchors update as anchor-only."""
  state = _state(options)
  assert state.features is None
  features_in, complete, ratio = _random_inputs(8)
  anchor_only = cicm.CICMOptions(context="anchor_only", normalized=options.normalized)
  np.testing.assert_array_equal(
      cicm.context_generalization(state, features_in, complete, options).anchors,
      cicm.context_generalization(state, features_in, complete, anchor_only).anchors)

  batch, regions = 4, N // 4
  grouped, complete = features_in.reshape(batch, regions, C), complete.reshape(batch, regions)
  ratio = ratio.reshape(batch, regions)
  out = cicm.single_image_augmentation(state, grouped, complete, ratio, options)
  moved = False
  for b in range(batch):
    centers = _reference_kmeans(grouped[b], complete[b], state.anchors, options)
    np.testing.assert_allclose(
        cicm.kmeans_centers(grouped[b], complete[b], state.anchors, options), centers,
        rtol=1e-4, atol=1e-5)
    moved |= not np.allclose(centers, state.anchors)
    chosen = [int(np.argmax([_similarity(f, c, options) for c in centers])) for f in grouped[b]]
    for m in range(regions):
      f = grouped[b, m].astype(np.float64)
      members = [n for n in range(regions) if complete[b, n] and chosen[n] == chosen[m]]
      if members:
        lam = _weights([_similarity(f, grouped[b, n], options) for n in members], "all")
        context = sum(w * grouped[b, n] for w, n in zip(lam, members))
      else:
        context = centers[chosen[m]]
      np.testing.assert_allclose(out[b, m], (1 - ratio[b, m]) * f + ratio[b, m] * context,
                                 rtol=1e-4, atol=1e-5)
  assert moved  # The per-image clustering did something beyond the anchors.
  with pytest.raises(ValueError, match="single_image_augmentation"):
    cicm.context_augmentation(state, features_in, ratio.reshape(-1), options)


def test_options_are_validated():
  with pytest.raises(ValueError, match="update"):
    cicm.CICMOptions(update="top10")
  with pytest.raises(ValueError, match="context"):
    cicm.CICMOptions(context="ruc")


def _many_updates(options, steps, seed=0):
  """`steps` batches of random features injected one after another; returns the memory and
  the largest regional feature norm seen. The features share a mean direction (as real
  features do), so the paper's sums add up instead of cancelling."""
  direction = jax.random.normal(jax.random.key(seed + 1), (C,))

  def body(carry, key):
    state, largest = carry
    f_key, c_key, s_key = jax.random.split(key, 3)
    scale = jax.random.uniform(s_key, (N, 1), minval=0.1, maxval=10.0)
    features_in = scale * (direction + jax.random.normal(f_key, (N, C)))
    complete = jax.random.uniform(c_key, (N,)) < 0.5
    largest = jnp.maximum(largest, jnp.max(jnp.linalg.norm(features_in, axis=-1)))
    return (cicm.context_generalization(state, features_in, complete, options), largest), None

  (state, largest), _ = jax.lax.scan(jax.jit(body), (_state(options), 0.0),
                                     jax.random.split(jax.random.key(seed), steps))
  return state, float(largest)


def test_normalized_memory_stays_bounded_over_thousands_of_updates():
  initial = _state(NORMALIZED)
  state, largest = _many_updates(NORMALIZED, 3000)
  bound = max(largest, float(jnp.max(jnp.linalg.norm(initial.features, axis=-1))),
              float(jnp.max(jnp.linalg.norm(initial.anchors, axis=-1))))
  assert float(jnp.max(jnp.linalg.norm(state.features, axis=-1))) <= bound * (1 + 1e-5)
  assert float(jnp.max(jnp.linalg.norm(state.anchors, axis=-1))) <= bound * (1 + 1e-5)
  assert float(jnp.min(state.injected)) > 100  # Every feature took part: not a frozen memory.
  inter, intra = cicm.set_similarity_losses(state, NORMALIZED)
  assert abs(float(inter)) <= 1 + 1e-5 and abs(float(intra)) <= 1 + 1e-5
  # Eq. 4 mixes two vectors no longer than the largest feature: it cannot blow up either.
  features_in, _, ratio = _random_inputs(7, scale=10.0)
  out = cicm.context_augmentation(state, features_in, ratio, NORMALIZED)
  limit = np.maximum(np.linalg.norm(features_in, axis=-1), bound)
  assert np.all(np.linalg.norm(out, axis=-1) <= limit * (1 + 1e-5))


def test_paper_exact_memory_grows_without_bound():
  """Why the normalized mode exists: eq. 2 only ever adds (DESIGN.md)."""
  norms = [float(jnp.max(jnp.linalg.norm(_many_updates(EXACT, steps)[0].features, axis=-1)))
           for steps in (10, 1000)]
  assert norms[1] > 20 * norms[0], norms


def test_generalized_memory_is_differentiable_in_the_injected_features():
  """The eq. 8 losses on the new memory give gradients to exactly the injected regions."""
  for options in (EXACT, NORMALIZED):
    state = _state(options)
    features_in, complete, _ = _random_inputs(8, scale=1.0 / math.sqrt(C))

    def losses(f):
      inter, intra = cicm.set_similarity_losses(
          cicm.context_generalization(state, f, complete, options), options)
      return inter - intra

    grads = np.asarray(jax.grad(losses)(jnp.asarray(features_in)))
    assert np.all(np.abs(grads[complete]).sum(-1) > 0)
    np.testing.assert_array_equal(grads[~complete], 0.0)


def test_memory_module_imports_without_the_training_code():
  """The research API stands alone: no optax, orbax, models or training modules."""
  script = ("import sys; import gmsrm_jax.memory.cicm\n"
            "loaded = [m for m in sys.modules if m.split('.')[0] in ('optax', 'orbax') or\n"
            "          m.startswith(('gmsrm_jax.train', 'gmsrm_jax.models'))]\n"
            "assert not loaded, loaded\n")
  subprocess.run([sys.executable, "-c", script], check=True)
