"""Config checks: one validation pass before any model work, and what a resume may change.

`validate(config)` checks every field below that the config has (configs differ by task) and
raises one `ConfigError` listing each bad field with its allowed values.

`check_changes(stored, config, ...)` compares the config saved in a checkpoint with the one a
run is started with. A resumed run continues the same training only if the next batch and the
model are what they would have been: the data position is step x batch size, masks and
augmentation depend on the seed, and the model's fields define what the weights mean. So
changes to RESUME_GUARDED fields are an error unless named in `allowed`
(--allow_config_change); the rest (num_steps, intervals, eval.*, learning rates, ...) pass and
are logged. Evaluation, export and inpainting guard INFERENCE_GUARDED (the model and the
data) the same way.
"""

import json
import math
import re
import sys
from typing import Any, Callable, Iterable

from absl import logging
import ml_collections

from gmsrm_jax import precision


class ConfigError(ValueError):
  """A config field holds a value it cannot have; the message names the field(s)."""


class ConfigChangeError(ConfigError):
  """A resumed (or evaluated) run's config differs from its checkpoint's in a guarded field."""


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))


def _int_at_least(low: int) -> tuple[Callable[[Any], bool], str]:
  return (lambda v: _is_int(v) and v >= low), f"an integer >= {low}"


_POSITIVE_INT = _int_at_least(1)
_NON_NEGATIVE_INT = _int_at_least(0)
_FINITE = (_is_number, "a finite number")
_NON_NEGATIVE = ((lambda v: _is_number(v) and v >= 0), "a finite number >= 0")
_PROBABILITY = ((lambda v: _is_number(v) and 0 <= v <= 1), "a number in [0, 1]")
_ADAM_BETA = ((lambda v: _is_number(v) and 0 <= v < 1), "a number in [0, 1)")
# The memory's upsampling conv (stylegan.networks.UPSAMPLE_FORMS; DESIGN M5).
_UPSAMPLE = ((lambda v: v in ("transposed", "fir_then_conv")), '"transposed" or "fir_then_conv"')
_RATIO_RANGE = ((lambda v: isinstance(v, (tuple, list)) and len(v) == 2
                 and all(_is_number(x) for x in v) and 0 <= v[0] < v[1] <= 1),
                "a pair (lo, hi) with 0 <= lo < hi <= 1")

TRANSFER_GUARD_LEVELS = ("allow", "log", "disallow", "log_explicit", "disallow_explicit")

INPAINT_FORMS = ("l2", "hole_weighted_l1")  # config.loss.inpaint_form (CICM objective).

# field -> (test, allowed values). Fields a config lacks are not checked.
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": _NON_NEGATIVE_INT,
    "train.num_steps": _NON_NEGATIVE_INT,
    "train.batch_size": _POSITIVE_INT,
    "train.log_every": _POSITIVE_INT,
    "train.sample_every": _POSITIVE_INT,
    "train.checkpoint_every": _POSITIVE_INT,
    "train.eval_every": _NON_NEGATIVE_INT,
    "train.max_to_keep": ((lambda v: v is None or (_is_int(v) and v >= 1)),
                          "None (keep all) or an integer >= 1"),
    "train.ema_decay": _PROBABILITY,
    "train.compute_dtype": ((lambda v: v in precision.COMPUTE_DTYPES),
                            " or ".join(map(repr, precision.COMPUTE_DTYPES))),
    "train.device_to_host_guard": (
        (lambda v: v in TRANSFER_GUARD_LEVELS),
        " or ".join(f'"{level}"' for level in TRANSFER_GUARD_LEVELS)),
    "train.compilation_cache_dir": ((lambda v: isinstance(v, str)), 'a directory or "" (off)'),
    "eval.batch_size": _POSITIVE_INT,
    "eval.num_images": _POSITIVE_INT,
    "eval.mask_seed": _int_at_least(-1),
    "data.crop_size": _POSITIVE_INT,
    "data.resize_shorter": _POSITIVE_INT,
    "masks.irregular_prob": _PROBABILITY,
    "masks.hole_ratio_range": _RATIO_RANGE,
    "model.fill_iterations": _NON_NEGATIVE_INT,
    "model.fill_biharmonic_iterations": _NON_NEGATIVE_INT,
    "model.hole_fill": ((lambda v: v in ("zero", "pyramid")), '"zero" or "pyramid"'),
    "masks.ratio_sampling": ((lambda v: v in ("natural", "overlay")), '"natural" or "overlay"'),
    "model.upsample": _UPSAMPLE,
    "model.memory.architecture.upsample": _UPSAMPLE,
    "optim.learning_rate": _NON_NEGATIVE,
    "optim.d_learning_rate": _NON_NEGATIVE,
    "optim.schedule": ((lambda v: v in ("constant", "cosine")), '"constant" or "cosine"'),
    "optim.warmup_steps": _NON_NEGATIVE_INT,
    "optim.final_lr_fraction": _NON_NEGATIVE,
    "optim.b1": _ADAM_BETA,
    "optim.b2": _ADAM_BETA,
    "loss.r1_interval": _POSITIVE_INT,
    "loss.pl_interval": _POSITIVE_INT,
    "loss.ssim_weight": _NON_NEGATIVE,
    "loss.inpaint_form": ((lambda v: v in INPAINT_FORMS), " or ".join(map(repr, INPAINT_FORMS))),
}
# Every float and int under these sections must be finite (loss weights may be negative).
_FINITE_SECTIONS = ("loss.", "optim.")

# Fields a resume may not change silently (prefixes end with a dot), and the exceptions.
RESUME_GUARDED = ("seed", "task", "train.batch_size", "data.", "masks.", "model.", "disc.")
RESUME_UNGUARDED = (
    "model.memory.path",  # GM-SRM stage 2: the memory itself is restored from the checkpoint.
    "data.data_dir", "data.manual_dir",  # Where the same prepared data is.
    "data.num_threads", "data.prefetch",  # Speed only.
    "data.eval_split",  # Not read by training.
)
# Evaluation, export and inpainting read a trained run: its model, and the data it was trained
# and is evaluated on (a different dataset or split would not measure the run silently).
INFERENCE_GUARDED = ("task", "model.", "data.")
INFERENCE_UNGUARDED = ("model.memory.path", "data.data_dir", "data.manual_dir",
                       "data.num_threads", "data.prefetch")
_RESUME_REASON = ("fields that change the next batch or the model (the data position is step "
                  "x batch size, masks and augmentation follow the seed)")
INFERENCE_REASON = ("fields that change the model or the data of the trained run (the "
                    "results would not describe that run)")
# Fields added after checkpoints were written, with the value that reproduces how those
# checkpoints were made: a stored config without the field reads as having this value.
ADDED_FIELDS = {
    "masks.ratio_sampling": "natural",
    "train.ema_warmup": False,
    "model.output_skip": True,
    "model.hole_fill": "zero",
    "model.fill_iterations": 8,
    "model.fill_biharmonic_iterations": 0,
    "model.residual_output": False,
    "train.compute_dtype": "float32",
    "train.compilation_cache_dir": "",
    "train.device_to_host_guard": "allow",
    "model.upsample": "fir_then_conv",  # The generative memory's (stage 1) ...
    "model.memory.architecture.upsample": "fir_then_conv",  # ... and as stage 2 records it.
    "loss.inpaint_form": "l2",  # CICM eq. 5.
    "eval.mask_seed": -1,  # Generated test masks followed config.seed.
    "loss.ssim_weight": 0.0,
}


def unknown_override(error: Exception, argv: list[str]) -> str | None:
  """The message for ml_collections' error about a --config.* override naming no field, with
  the override's full path (ml_collections names only its last key: "'no_such_key'"); None
  when `error` is not about one of argv's overrides."""
  message = str(error.args[0] if error.args else error)
  unknown = re.search(r"'([^']+)'", message)
  overrides = [arg[2:].split("=")[0] for arg in argv if arg.startswith("--config.")]
  culprits = [o for o in overrides if unknown and unknown.group(1) in o.split(".")[1:]]
  if not culprits:
    return None
  hint = message.split("\n", 1)[1].strip() if "\n" in message else ""
  return (f"--{culprits[0]}: the config has no field {culprits[0]} ({unknown.group(1)!r} is "
          f"unknown). {hint}".rstrip() + "\nEvery --config.* override must name an existing field.")


def exit_if_unknown_override(error: Exception, argv: list[str]) -> None:
  """A command's flag parser: exits with status 1 and `unknown_override`'s message when
  `error` is about one of argv's overrides; returns otherwise (the caller re-raises)."""
  message = unknown_override(error, argv)
  if message is not None:
    sys.stderr.write(f"FATAL Flags parsing error: {message}\n")
    sys.exit(1)


def added_field(section: ml_collections.ConfigDict, name: str) -> Any:
  """The ADDED_FIELDS field `name` ("train.ema_warmup") read from its `section`
  (config.train): its value, or in a config saved before it existed, the value its run used."""
  return section.get(name.rsplit(".", 1)[1], ADDED_FIELDS[name])


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
  """{"a.b.c": leaf} of a nested dict."""
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      flat.update(flatten(value, f"{name}."))
    else:
      flat[name] = value
  return flat


def as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as a checkpoint stores it (JSON types), so the two compare like for like."""
  return json.loads(json.dumps(config.to_dict()))


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming every invalid field, its value and the allowed values."""
  fields = flatten(config.to_dict())
  problems = []
  for name, value in fields.items():
    rule = RULES.get(name)
    if rule is None and name.startswith(_FINITE_SECTIONS) and isinstance(value, (int, float)):
      rule = _FINITE
    if rule is not None and not rule[0](value):
      problems.append(f"config.{name} = {value!r}: must be {rule[1]}")
  crop, resize = fields.get("data.crop_size"), fields.get("data.resize_shorter")
  if _is_int(crop) and _is_int(resize) and crop > resize:
    problems.append(f"config.data.crop_size = {crop}: must be <= config.data.resize_shorter "
                    f"({resize}); a crop must fit inside the resized image")
  if problems:
    raise ConfigError("Invalid config:\n  " + "\n  ".join(problems))


def _matches(name: str, patterns: Iterable[str]) -> bool:
  return any(name == p or (p.endswith(".") and name.startswith(p)) for p in patterns)


def check_changes(stored: dict[str, Any], config: ml_collections.ConfigDict, *,
                  guarded: Iterable[str], unguarded: Iterable[str] = (),
                  allowed: Iterable[str] = (), what: str,
                  reason: str = _RESUME_REASON) -> None:
  """Raises ConfigChangeError for guarded fields that differ from `stored` and are not
  `allowed` (exact names, or "section.*"); logs every other difference.

  `stored` is the checkpoint's config (`as_json` form); `what` says which checkpoint.
  """
  after = flatten(as_json(config))
  # Only for configs that have the field now (stage 1's model, for one, has none of them).
  before = {**{k: v for k, v in ADDED_FIELDS.items() if k in after}, **flatten(stored)}
  allowed = tuple(a[:-1] if a.endswith(".*") else a for a in allowed)
  unknown = [a for a in allowed if not any(_matches(n, [a]) for n in {*before, *after})]
  if unknown:
    raise ConfigError(f"--allow_config_change names {', '.join(unknown)}, which "
                      f"{'is' if len(unknown) == 1 else 'are'} not config fields.")
  changed = sorted(n for n in {*before, *after}
                   if json.dumps(before.get(n, "<absent>")) != json.dumps(after.get(n, "<absent>")))
  describe = lambda n: f"{n}: {before.get(n, '<absent>')!r} -> {after.get(n, '<absent>')!r}"
  refused = [n for n in changed if _matches(n, guarded) and not _matches(n, unguarded)
             and not _matches(n, allowed)]
  if refused:
    raise ConfigChangeError(
        f"The config differs from the one saved with {what} in {reason}:\n  "
        + "\n  ".join(map(describe, refused)) + "\nKeep the saved "
        "values, start a new --workdir, or accept the change explicitly with "
        f"--allow_config_change={','.join(refused)}")
  overridden = [n for n in changed if _matches(n, guarded) and not _matches(n, unguarded)]
  if overridden:
    logging.warning("CONFIG OVERRIDE: %s differs from the config saved with %s, accepted by "
                    "--allow_config_change:\n  %s", ", ".join(overridden), what,
                    "\n  ".join(map(describe, overridden)))
  if changed:
    logging.warning("Config changed since %s (fields a resume may change):\n  %s", what,
                    "\n  ".join(map(describe, changed)))
