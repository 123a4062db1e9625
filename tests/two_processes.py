"""Runs a two-process job for the tests: two local processes (127.0.0.1, gloo CPU collectives)
x 4 devices, each one tests/multiprocess_worker.py. Used by tests/test_cicm_train.py, whose
UNet-CICM job also carries state updated outside the gradients (the memory)."""

import json
import os
import socket
import subprocess
import sys

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multiprocess_worker.py")


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_two_processes(data_dir, tmp_path, config_name):
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
