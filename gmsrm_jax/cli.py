"""Shared flags of the entry points (train.py, evaluate.py)."""

import logging

from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

from gmsrm_jax.train import parallel

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/base.py:demo. Override fields with "
    "--config.train.num_steps=10; unknown fields are an error.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", "", "host:port of process 0 for a multi-process job; 'auto' lets "
    "jax.distributed.initialize() detect a managed cluster (TPU pod, SLURM); empty for a "
    "single process.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "Processes in a multi-process job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "This process's index in the job.")
flags.mark_flags_as_required(["config", "workdir"])


def setup():
  """Hides accelerators from TensorFlow (used for data only), joins a multi-process job."""
  # orbax logs every checkpoint phase at INFO; keep its warnings, drop the play-by-play.
  absl_logging.get_absl_handler().addFilter(
      lambda record: record.levelno >= logging.WARNING or "/orbax/" not in record.pathname)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  parallel.maybe_initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value,
                                        _PROCESS_ID.value)
  return _CONFIG.value, _WORKDIR.value
