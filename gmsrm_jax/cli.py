"""Shared flags of the entry points (train.py, evaluate.py, export.py, the pipeline).

Entry points that work on a trained run (`run(main, saved_config=True)`: evaluate.py,
export.py) read the config saved with the run's checkpoint when `--config` is not given;
`--config.*` flags then override fields of that config.
"""

import logging
import os
import re
import signal
import sys

from absl import app
from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

from gmsrm_jax import config_checks
from gmsrm_jax.train import parallel

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/base.py:demo. Override fields with "
    "--config.train.num_steps=10; unknown fields are an error. evaluate.py and export.py "
    "default to the config saved with the run's checkpoint.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", "", "host:port of process 0 for a multi-process job; 'auto' lets "
    "jax.distributed.initialize() detect a managed cluster (TPU pod, SLURM); empty for a "
    "single process.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "Processes in a multi-process job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "This process's index in the job.")
STEP = flags.DEFINE_integer(
    "step", None, "Checkpoint step to restore (default: the newest that restores). Training "
    "from an earlier step sets the newer checkpoints aside (<workdir>/checkpoints_set_aside).")
ALLOW_CONFIG_CHANGE = flags.DEFINE_list(
    "allow_config_change", [], "Config fields (or 'section.*') that may differ from the "
    "checkpoint's config although they change the next batch or the model, e.g. "
    "train.batch_size,seed. See docs/RELIABILITY.md.")
flags.mark_flags_as_required(["workdir"])
_SAVED_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "saved_config.py")


def _flag_value(argv: list[str], name: str) -> str | None:
  """The last value of --name=V or --name V in argv (before absl parses it)."""
  value = None
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      value = arg.split("=", 1)[1]
    elif arg == f"--{name}" and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def with_saved_config(argv: list[str]) -> list[str]:
  """argv with --config pointing at the config saved with --workdir's checkpoint (--step's, or
  the newest) when argv gives no --config."""
  if any(re.match(r"^--config(=|$)", arg) for arg in argv):
    return argv
  workdir = _flag_value(argv, "workdir")
  if workdir is None:
    return argv
  step = _flag_value(argv, "step") or ""
  return [argv[0], f"--config={_SAVED_CONFIG}:{step}:{os.path.abspath(workdir)}", *argv[1:]]


def _show_in_help(flag_values) -> None:
  """Lists the project's flags under `--help` (absl shows only the main module's otherwise)."""
  for module, module_flags in flag_values.flags_by_module_dict().items():
    if module.startswith("gmsrm_jax"):
      for flag in module_flags:
        flag_values.register_key_flag_for_module(sys.argv[0], flag)


def _packaged_config(argv: list[str]) -> list[str]:
  """--config=configs/x.py[:variant] from the installed `configs` package when the path does
  not exist here (an installed package run from another directory)."""
  result = []
  for arg in argv:
    match = re.match(r"^--config=(configs/[^:]+)(.*)$", arg)
    if match and not os.path.exists(match.group(1)):
      import configs  # pylint: disable=g-import-not-at-top
      packaged = os.path.join(os.path.dirname(configs.__file__), match.group(1)[len("configs/"):])
      if os.path.exists(packaged):
        arg = f"--config={packaged}{match.group(2)}"
    result.append(arg)
  return result


def parse_flags(argv: list[str], *, saved_config: bool = False) -> list[str]:
  """absl's flag parsing, with unknown --config.* fields named by their full path.

  ml_collections reports an unknown override only by its last key ("'no_such_key'").
  """
  _show_in_help(flags.FLAGS)
  argv = _packaged_config(argv)
  if saved_config:
    argv = with_saved_config(argv)
  try:
    remaining = flags.FLAGS(argv)
    try:
      # ml_collections defers a config file's load error (a missing file, or a workdir without
      # a checkpoint to read the saved config from) to the first access: report it now.
      _CONFIG.value is not None and _CONFIG.value.get("task")  # pylint: disable=expression-not-assigned
    except OSError as error:
      sys.stderr.write(f"FATAL {error}\n")
      sys.exit(1)
    if _CONFIG.value is None:
      sys.stderr.write("FATAL Flags parsing error: --config is required (a config file, e.g. "
                       "--config=configs/base.py:demo).\n")
      sys.exit(1)
    return remaining
  except (AttributeError, KeyError) as error:
    config_checks.exit_if_unknown_override(error, argv)
    raise


def run(main, *, saved_config: bool = False) -> None:
  """app.run with parse_flags; a stopped run exits with preemption.EXIT_CODE (it raises
  preemption.Stopped, a SystemExit). `saved_config`: --config defaults to the run's own."""

  def main_then_finish(argv):
    main(argv)
    # Everything is saved; a stop signal during the interpreter's teardown (which takes a
    # while after JAX and TensorFlow) must not turn a finished run's status 0 into "killed".
    for signum in (signal.SIGTERM, signal.SIGINT):
      signal.signal(signum, signal.SIG_IGN)

  app.run(main_then_finish,
          flags_parser=lambda argv: parse_flags(argv, saved_config=saved_config))


def setup():
  """Hides accelerators from TensorFlow (used for data only), joins a multi-process job."""
  # orbax logs every checkpoint phase at INFO; keep its warnings, drop the play-by-play.
  absl_logging.get_absl_handler().addFilter(
      lambda record: record.levelno >= logging.WARNING or "/orbax/" not in record.pathname)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  parallel.maybe_initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value,
                                        _PROCESS_ID.value)
  if flags.FLAGS["config"].config_filename.startswith(_SAVED_CONFIG):
    absl_logging.info("Config: the one saved with %s's checkpoint%s, with the --config.* "
                      "flags applied.", _WORKDIR.value,
                      f" step {STEP.value}" if STEP.value is not None else "")
  return _CONFIG.value, _WORKDIR.value
