"""One process of the two-process job (tests/two_processes.py); not a test itself.

Usage: python tests/multiprocess_worker.py PROCESS_ID PORT WORKDIR DATA_DIR OUT_JSON CONFIG
CONFIG is "<module in configs/>:<argument>", e.g. "unet_cicm:tiny".
"""

import importlib
import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gmsrm_jax.train import loop  # pylint: disable=g-import-not-at-top
from gmsrm_jax.train import parallel  # pylint: disable=g-import-not-at-top


def main(process_id, port, workdir, data_dir, out_json, config_name):
  parallel.maybe_initialize_distributed(f"127.0.0.1:{port}", 2, int(process_id))
  module, argument = config_name.split(":")
  config = importlib.import_module(f"configs.{module}").get_config(argument)
  config.data.data_dir = data_dir
  config.train.num_steps = 2
  state = loop.train_and_evaluate(config, workdir)
  # The local copy of every replicated leaf, exactly, so the test can compare processes.
  leaves = {jax.tree_util.keystr(path): np.asarray(leaf.addressable_data(0)).tolist()
            for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]}
  with open(out_json, "w") as f:
    json.dump({"process_count": jax.process_count(), "device_count": jax.device_count(),
               "leaves": leaves}, f)


if __name__ == "__main__":
  main(*sys.argv[1:])
