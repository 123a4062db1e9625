"""What a trained CICM memory holds, and whether its context brings a hole region closer to
the truth than the network's own feature does (issue #12, part 3; docs/CICM_RESULTS.md).

  python benchmarks/diagnose_cicm.py --workdir=RUN [--config.data.eval_split='train[3744:]']
      [--bins=0-20,20-40,40-60] [--num_images=128]

Trains nothing. Restores the run (its saved config) and prints:
- the memory: mean cosine between the K features of a set (1.0 = the set is one vector),
  between features of different sets, between anchors; the effective number of features per
  set (exp of the entropy of each feature's share of the injected mass);
- per mask bin, over the regions of the bottleneck that the mask corrupts, the cosine to the
  TRUE regional feature (the same network on the unmasked image) of:
    own       the corrupted region's feature F_m (what the decoder gets without CICM);
    context   eq. 4's context for F_m (the lambda-weighted features of the set eq. 1 picks);
    mixed     eq. 4's output with the ground-truth ratio gamma (eq. 7);
    best set  the best single feature of the chosen set (what top-1 augmentation could give);
    best mem  the best single feature in the whole memory (what any read of it could give);
    other image  the best complete region of ANOTHER image of the batch (the data's
              cross-image redundancy: an upper bound on what a memory of regions can hold);
  and the effective number of features lambda spreads over (exp of lambda's entropy).
Context helps the decoder only where it is closer to the truth than F_m.
"""

import sys

from absl import flags

sys.path.insert(0, __file__.rsplit("/benchmarks/", 1)[0])
from gmsrm_jax import cli  # pylint: disable=g-import-not-at-top

_BINS = flags.DEFINE_list("bins", None, "Mask bins (default: the config's eval.mask_bins).")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 128, "Evaluation images per bin.")


def _unit(x):
  import numpy as np  # pylint: disable=g-import-not-at-top
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def memory_summary(anchors, features, injected) -> dict[str, float]:
  """Cosines within / across sets and the effective number of features per set."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  num_sets, set_size, _ = features.shape
  unit = _unit(features)
  within = np.einsum("lkc,ljc->lkj", unit, unit)
  off_diagonal = ~np.eye(set_size, dtype=bool)
  flat = unit.reshape(num_sets * set_size, -1)
  across = flat @ flat.T
  same_set = np.kron(np.eye(num_sets, dtype=bool), np.ones((set_size, set_size), bool))
  unit_anchors = _unit(anchors)
  anchor_cos = unit_anchors @ unit_anchors.T
  share = injected / np.maximum(injected.sum(axis=1, keepdims=True), 1e-12)
  entropy = -np.sum(np.where(share > 0, share * np.log(np.maximum(share, 1e-30)), 0.0), axis=1)
  return {"within-set cosine": float(within[:, off_diagonal].mean()),
          "across-set cosine": float(across[~same_set].mean()),
          "anchor cosine": float(anchor_cos[~np.eye(num_sets, dtype=bool)].mean()),
          "effective features per set (mass)": float(np.exp(entropy).mean()),
          "largest feature's mass share": float(share.max(axis=1).mean())}


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from gmsrm_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from gmsrm_jax.memory import cicm as cicm_lib  # pylint: disable=g-import-not-at-top
  from gmsrm_jax.models import cicm_module  # pylint: disable=g-import-not-at-top
  from gmsrm_jax.train import loop  # pylint: disable=g-import-not-at-top
  from gmsrm_jax.train import parallel  # pylint: disable=g-import-not-at-top
  from gmsrm_jax.train import step as step_lib  # pylint: disable=g-import-not-at-top

  config, workdir = cli.setup()
  mesh = parallel.make_mesh()
  components, state, step = loop.restore_run(config, workdir, mesh, step=cli.STEP.value)
  variables = step_lib.inference_variables(config, state)
  memory_tree = variables[cicm_module.MEMORY]
  while "anchors" not in memory_tree:
    (memory_tree,) = memory_tree.values()
  memory = {k: np.asarray(v, np.float64) for k, v in memory_tree.items()}
  if "features" not in memory:
    raise ValueError(f"{workdir}: the {config.model.cicm.context!r} variant keeps no feature "
                     "sets; nothing to diagnose.")
  options = cicm_module.create_memory(config.model.cicm).options
  state_np = cicm_lib.CICMState(anchors=jnp.asarray(memory["anchors"], jnp.float32),
                                features=jnp.asarray(memory["features"], jnp.float32),
                                injected=jnp.asarray(memory["injected"], jnp.float32))

  print(f"# {workdir} step {step}: {config.model.name}, "
        f"L={memory['features'].shape[0]} K={memory['features'].shape[1]}, "
        f"normalized={options.normalized} T={options.temperature} update={options.update}")
  for name, value in memory_summary(memory["anchors"], memory["features"],
                                    memory["injected"]).items():
    print(f"  {name}: {value:.3f}")

  def regional_features(image, mask):
    captured = []

    def record(next_fun, args, kwargs, context):
      if isinstance(context.module, cicm_module.CrossImageContextMemory):
        captured.append(args[0])
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
      components.generator.apply(variables, image, mask, train=False, rngs={"noise":
                                                                             jax.random.key(0)})
    return captured[0]

  features_of = jax.jit(regional_features)
  rows = []
  for bin_name in _BINS.value or config.eval.mask_bins:
    sums, count = {}, 0
    for batch in pipeline.create_eval_iterator(config, mask_spec=("bin", bin_name),
                                               num_images=_NUM_IMAGES.value):
      real = np.asarray(batch["weight"]) > 0
      image, mask = batch["image"][real], batch["mask"][real]
      own = features_of(image, mask)
      true = features_of(image, np.zeros_like(mask))
      batch_size, rows_, cols, channels = own.shape
      grid = (rows_, cols)
      complete = np.asarray(cicm_module.complete_regions(mask, grid)).reshape(-1)
      gamma = np.asarray(cicm_module.corrupted_ratio_target(image, mask, grid)).reshape(-1)
      own_flat = own.reshape(-1, channels)
      true_flat = np.asarray(true, np.float64).reshape(-1, channels)
      context = np.asarray(cicm_lib.context_augmentation(
          state_np, own_flat, jnp.ones_like(gamma), options), np.float64)
      mixed = (1 - gamma[:, None]) * np.asarray(own_flat, np.float64) + gamma[:, None] * context
      chosen = np.asarray(cicm_lib.select_sets(state_np.anchors, own_flat, options))
      unit_mem = _unit(memory["features"])  # [L, K, C]
      unit_true = _unit(true_flat)
      to_mem = np.einsum("nc,lkc->nlk", unit_true, unit_mem)
      # Eq. 4's weights as the model computes them (the config's augment selection).
      lam = np.asarray(cicm_lib._set_weights(  # pylint: disable=protected-access
          own_flat, state_np.features, jnp.asarray(chosen), options.augment, options),
          np.float64)
      lam_entropy = -np.sum(lam * np.log(np.maximum(lam, 1e-30)), axis=1)
      image_of = np.repeat(np.arange(batch_size), rows_ * cols)
      region_cos = unit_true @ unit_true.T
      other_complete = (image_of[None, :] != image_of[:, None]) & complete[None, :]
      other_best = np.where(other_complete, region_cos, -np.inf).max(axis=1)
      hole = gamma > 0
      cos = lambda a: np.sum(_unit(np.asarray(a, np.float64)) * unit_true, axis=1)
      values = {"own": cos(own_flat), "context": cos(context), "mixed": cos(mixed),
                "best set": to_mem[np.arange(len(chosen)), chosen].max(axis=1),
                "best mem": to_mem.reshape(len(chosen), -1).max(axis=1),
                "other image": other_best, "lambda eff. features": np.exp(lam_entropy),
                "gamma": gamma}
      for name, value in values.items():
        sums[name] = sums.get(name, 0.0) + float(np.sum(value[hole]))
      count += int(hole.sum())
    rows.append((bin_name, count, {k: v / max(count, 1) for k, v in sums.items()}))

  names = list(rows[0][2])
  print("\n| bin | corrupted regions | " + " | ".join(names) + " |")
  print("|---|---|" + "---|" * len(names))
  for bin_name, count, means in rows:
    print(f"| {bin_name} | {count} | " + " | ".join(f"{means[n]:.3f}" for n in names) + " |")


if __name__ == "__main__":
  cli.run(main, saved_config=True)
