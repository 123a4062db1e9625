"""Two local processes (127.0.0.1, gloo CPU collectives) x 4 devices train the same state as
one process with 8 devices, and agree with each other exactly."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np

from configs import base as base_config
from gmsrm_jax.train import loop

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multiprocess_worker.py")


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_two_processes(data_dir, tmp_path, config_name="base:tiny"):
  """Trains `config_name` (see the worker) for 2 steps in 2 processes x 4 devices.

  Returns (workdir, [per-process results: process/device counts, every state leaf]).
  """
  port = _free_port()
  workdir = str(tmp_path / "two_process")
  outs = [str(tmp_path / f"process_{i}.json") for i in range(2)]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  procs = [subprocess.Popen([sys.executable, WORKER, str(i), str(port), workdir, data_dir,
                             outs[i], config_name], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  logs = []
  for proc in procs:
    try:
      logs.append(proc.communicate(timeout=420)[0])
    except subprocess.TimeoutExpired:
      for p in procs:
        p.kill()
      raise
  for proc, log in zip(procs, logs):
    assert proc.returncode == 0, log[-4000:]

  results = []
  for out in outs:
    with open(out) as f:
      results.append(json.load(f))
  return workdir, results


def test_two_processes_agree_with_each_other_and_with_one_process(tiny_data_dir, tmp_path):
  workdir, results = run_two_processes(tiny_data_dir, tmp_path)
  assert [r["process_count"] for r in results] == [2, 2]
  assert [r["device_count"] for r in results] == [8, 8]
  assert results[0]["leaves"] == results[1]["leaves"]  # Bit-identical across processes.

  config = base_config.get_config("tiny")
  config.data.data_dir = tiny_data_dir
  config.train.num_steps = 2
  single = loop.train_and_evaluate(config, str(tmp_path / "one_process"))
  assert jax.device_count() == 8
  for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(single))[0]:
    name = jax.tree_util.keystr(path)
    np.testing.assert_allclose(np.asarray(results[0]["leaves"][name]), leaf, rtol=1e-5,
                               atol=1e-6, err_msg=name)
  # Both processes took part in one checkpoint.
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "2"))
