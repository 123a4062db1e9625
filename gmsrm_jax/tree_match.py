"""Strict comparison of a stored array tree with the tree a model expects.

Neutral ground for every loader (train checkpoints, the stage-1 memory export, exports for
serving): orbax alone would load part of a tree, so each loader checks first and names the
leaves that differ.
"""

from typing import Any

import jax


class CheckpointMismatchError(ValueError):
  """The arrays on disk do not fit the model the config builds."""


def leaf_paths(tree: Any) -> dict[str, Any]:
  """{'a/b/c': leaf} for every leaf of a pytree."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(path, simple=True, separator="/"): leaf for path, leaf in flat}


def check_compatible(metadata_tree: Any, abstract_tree: Any) -> None:
  """Raises naming the first leaves that differ in presence or shape."""
  stored = leaf_paths(metadata_tree)
  wanted = leaf_paths(abstract_tree)
  problems = []
  for name in sorted(set(wanted) - set(stored)):
    problems.append(f"missing in checkpoint: {name}")
  for name in sorted(set(stored) - set(wanted)):
    problems.append(f"not in the model: {name}")
  for name in sorted(set(stored) & set(wanted)):
    s_shape, w_shape = tuple(stored[name].shape), tuple(wanted[name].shape)
    if s_shape != w_shape:
      problems.append(f"{name}: checkpoint shape {s_shape} != model shape {w_shape}")
  if problems:
    shown = "\n  ".join(problems[:20])
    more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
    raise CheckpointMismatchError(
        "The checkpoint does not match the model built from this config (was it written with "
        f"a different model/config?):\n  {shown}{more}")
