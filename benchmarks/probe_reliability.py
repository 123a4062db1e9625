"""Fault probes on the tiny config (issue #10; docs/RELIABILITY.md has the table they fill).

Run from the repository root (minutes: every training run is a fresh `python train.py`):
  python benchmarks/probe_reliability.py [--kill9 20] [--sigterm 10] [--steps 12]
      [--workdir DIR] [--seed 0]

Probes, each printed as one line of counts:
  * kill -9 at random points of a run (async saves in flight included), then a plain rerun:
    the final state must equal an uninterrupted run's, bit for bit, every leaf.
  * SIGTERM at random points: exit status 75, the logged step is the saved one, and the rerun
    ends bit-exact.
  * a damaged latest checkpoint (truncated data, deleted OCDBT manifest, flipped byte, deleted
    state/, truncated _METADATA, unreadable config item): evaluation names the step; training
    falls back to the previous checkpoint, logs it, and ends bit-exact; no "Event loop is
    closed" noise. Every checkpoint damaged: one error, nothing trained.
  * a non-finite state (loss.rec_weight=1e30 overflows Adam's second moment): exit 1, no new
    checkpoint.
  * invalid configs and a resume with a changed batch size: exit 1 before any model work,
    naming the field (seconds to the error printed).
  * a damaged export file: the loader's error names it.
  * damaged dataset bytes: 1 record substituted and counted; many -> an error naming the file.
  * a 2-process job (127.0.0.1, 4 CPU devices each): SIGTERM, then SIGINT, to process 0 only;
    both processes must save the same step and exit 75.
Not part of the test suite (tests/test_reliability.py covers each mechanism once, in seconds).
"""

import argparse
import glob
import os
import pathlib
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # pylint: disable=g-import-not-at-top

from configs import base  # pylint: disable=g-import-not-at-top
from gmsrm_jax import export as export_lib  # pylint: disable=g-import-not-at-top
from gmsrm_jax.data.prepare import prepare  # pylint: disable=g-import-not-at-top
from gmsrm_jax.train import checkpoint  # pylint: disable=g-import-not-at-top
from gmsrm_jax.train import loop  # pylint: disable=g-import-not-at-top
from gmsrm_jax.train import parallel  # pylint: disable=g-import-not-at-top
from gmsrm_jax.train import preemption  # pylint: disable=g-import-not-at-top

_STARTED = "Training steps"


def _config(data_dir, steps):
  config = base.get_config("tiny")
  config.data.data_dir = data_dir
  config.train.num_steps = steps
  return config


def _command(script, workdir, data_dir, steps, *extra):
  return [sys.executable, script, "--config=configs/base.py:tiny", f"--workdir={workdir}",
          f"--config.data.data_dir={data_dir}", f"--config.train.num_steps={steps}", *extra]


class Run:
  """A subprocess whose output is collected; optionally signalled `delay` s after it starts
  training. `in_flight` says whether a save was being written when the signal went."""

  def __init__(self, command, sig=None, delay=0.0):
    self.started = time.perf_counter()
    self.proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
    self.lines, self.in_flight, self.training_at = [], False, None
    training = threading.Event()

    def read():
      for line in self.proc.stdout:
        self.lines.append(line)
        if _STARTED in line and not training.is_set():
          self.training_at = time.perf_counter()
          training.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if sig is not None and training.wait(timeout=600):
      time.sleep(delay)
      workdir = next(a.split("=", 1)[1] for a in command if a.startswith("--workdir="))
      self.in_flight = bool(glob.glob(os.path.join(workdir, "checkpoints", "*tmp*")))
      if self.proc.poll() is None:
        self.proc.send_signal(sig)
    self.returncode = self.proc.wait(timeout=1200)
    reader.join()
    self.seconds = time.perf_counter() - self.started
    self.log = "".join(self.lines)


def _leaves(data_dir, workdir, steps):
  _, state, step = loop.restore_run(_config(data_dir, steps), workdir, parallel.make_mesh())
  return step, [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state))]


def _same(a, b) -> bool:
  return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def _state_file(workdir, step, name):
  state = os.path.join(workdir, "checkpoints", str(step), "state")
  if name == "data":
    (path,) = glob.glob(os.path.join(state, "d", "*"))
    return path
  return os.path.join(state, name)


def _flip(path, rng, count=1, within=(0.0, 1.0)):
  """Flips one random bit in each of `count` random bytes (in the `within` part of the file)."""
  data = bytearray(pathlib.Path(path).read_bytes())
  for _ in range(count):
    data[int(len(data) * rng.uniform(*within))] ^= 1 << rng.randrange(8)
  pathlib.Path(path).write_bytes(bytes(data))


def _truncate(path):
  os.truncate(path, os.path.getsize(path) // 2)


def _remove(path):
  shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def _two_processes_signalled(workdir, data_dir, sig):
  """Exit statuses of a 2-process job whose process 0 gets `sig` once both train."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  procs, ready = [], []
  for i in range(2):
    command = _command("train.py", workdir, data_dir, 10**6,
                       "--config.train.checkpoint_every=1000000", "--config.train.log_every=1",
                       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                       f"--process_id={i}")
    procs.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
    ready.append(threading.Event())

  def read(i):
    for line in procs[i].stdout:
      if "steps_per_sec" in line:  # Logged after a completed step.
        ready[i].set()

  readers = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(2)]
  for reader in readers:
    reader.start()
  for event in ready:
    event.wait(timeout=600)
  procs[0].send_signal(sig)
  return [proc.wait(timeout=600) for proc in procs]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--kill9", type=int, default=20)
  parser.add_argument("--sigterm", type=int, default=10)
  parser.add_argument("--steps", type=int, default=12)
  parser.add_argument("--workdir", default="")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  root = args.workdir or tempfile.mkdtemp(prefix="probe_reliability_")
  rng = random.Random(args.seed)
  steps, half = args.steps, args.steps // 2 // 2 * 2  # half: a checkpoint step.
  data_dir = os.path.join(root, "data")
  prepare("synthetic_scenes", "tiny", data_dir)
  new_dir = lambda name: tempfile.mkdtemp(prefix=f"{name}_", dir=root)

  reference_dir = new_dir("reference")
  reference = Run(_command("train.py", reference_dir, data_dir, steps))
  assert reference.returncode == 0, reference.log[-3000:]
  training_seconds = reference.started + reference.seconds - reference.training_at
  _, expected = _leaves(data_dir, reference_dir, steps)
  print(f"reference: {steps} steps in {reference.seconds:.0f} s, {len(expected)} leaves",
        flush=True)

  def rerun_matches(workdir):
    rerun = Run(_command("train.py", workdir, data_dir, steps))
    return rerun.returncode == 0 and _same(_leaves(data_dir, workdir, steps)[1], expected)

  exact = in_flight = killed_count = 0
  for _ in range(args.kill9):
    workdir = new_dir("kill9")
    killed = Run(_command("train.py", workdir, data_dir, steps), signal.SIGKILL,
                 rng.uniform(0, training_seconds))
    killed_count += killed.returncode == -signal.SIGKILL
    in_flight += killed.in_flight
    exact += rerun_matches(workdir)
  print(f"kill -9 at {args.kill9} points ({killed_count} killed before the end, {in_flight} "
        f"with a save in flight): {exact}/{args.kill9} bit-exact after a rerun", flush=True)

  exact = status = named = finished = 0
  for _ in range(args.sigterm):
    workdir = new_dir("sigterm")
    stopped = Run(_command("train.py", workdir, data_dir, steps), signal.SIGTERM,
                  rng.uniform(0, training_seconds))
    if stopped.returncode == 0 and "Stopped by" not in stopped.log:
      finished += 1  # Done before the signal went: nothing to stop.
    else:
      status += stopped.returncode == preemption.EXIT_CODE
      match = re.search(r"Stopped by SIGTERM after step (\d+)", stopped.log)
      saved = checkpoint.create_manager(workdir, read_only=True).latest_step()
      named += bool(match) and int(match.group(1)) == saved and "Resume by" in stopped.log
    exact += rerun_matches(workdir)
  signalled = args.sigterm - finished
  print(f"SIGTERM at {args.sigterm} points ({finished} after the run had finished): exit "
        f"{preemption.EXIT_CODE} {status}/{signalled}, saved step logged {named}/{signalled}, "
        f"{exact}/{args.sigterm} bit-exact after a rerun", flush=True)

  partial = new_dir("partial")
  assert Run(_command("train.py", partial, data_dir, half)).returncode == 0
  damages = {
      "truncated data file": lambda d: _truncate(_state_file(d, half, "data")),
      "deleted OCDBT manifest": lambda d: _remove(_state_file(d, half, "manifest.ocdbt")),
      "flipped byte in data file": lambda d: _flip(_state_file(d, half, "data"), rng),
      "deleted state/": lambda d: _remove(os.path.dirname(_state_file(d, half, "_METADATA"))),
      "truncated _METADATA": lambda d: _truncate(_state_file(d, half, "_METADATA")),
      "unreadable config item": lambda d: pathlib.Path(
          d, "checkpoints", str(half), "config", "metadata").write_text("{"),
  }
  results = []
  for name, damage in damages.items():
    workdir = new_dir("damaged")
    shutil.copytree(partial, workdir, dirs_exist_ok=True)
    damage(workdir)
    try:
      _leaves(data_dir, workdir, steps)
      evaluation_named = False
    except checkpoint.CheckpointDamagedError as e:
      evaluation_named = f"step {half}" in str(e) and "--step=N" in str(e)
    resumed = Run(_command("train.py", workdir, data_dir, steps))
    ok = (evaluation_named and resumed.returncode == 0
          and f"CHECKPOINT STEP {half} IN" in resumed.log
          and f"Restored checkpoint at step {half - 2}" in resumed.log
          and "Event loop is closed" not in resumed.log
          and _same(_leaves(data_dir, workdir, steps)[1], expected))
    results.append(ok)
    print(f"  damaged checkpoint, {name}: {'ok' if ok else 'FAILED'}", flush=True)
  print(f"damaged latest checkpoint, {len(damages)} kinds: evaluation names the step, training "
        f"falls back to step {half - 2}, logs it, ends bit-exact: {sum(results)}/{len(damages)}",
        flush=True)

  workdir = new_dir("all_damaged")
  shutil.copytree(partial, workdir, dirs_exist_ok=True)
  for step in checkpoint.create_manager(workdir, read_only=True).all_steps():
    _remove(_state_file(workdir, step, "manifest.ocdbt"))
  failed = Run(_command("train.py", workdir, data_dir, steps))
  print(f"every checkpoint damaged: exit {failed.returncode}, one error: "
        f"{'No checkpoint in' in failed.log and 'can be restored' in failed.log}, "
        f"'Event loop is closed' lines: {failed.log.count('Event loop is closed')}", flush=True)

  workdir = new_dir("non_finite")
  shutil.copytree(partial, workdir, dirs_exist_ok=True)
  failed = Run(_command("train.py", workdir, data_dir, steps, "--config.loss.rec_weight=1e30"))
  latest = checkpoint.create_manager(workdir, read_only=True).latest_step()
  print(f"non-finite state: exit {failed.returncode}, "
        f"named: {'Non-finite values first at step' in failed.log}, "
        f"latest checkpoint {latest} (was {half})", flush=True)

  for override, field in [("--config.train.checkpoint_every=0", "checkpoint_every"),
                          ("--config.train.log_every=0", "log_every"),
                          ("--config.train.batch_size=0", "batch_size"),
                          ("--config.train.num_steps=-5", "num_steps"),
                          ("--config.optim.learning_rate=nan", "learning_rate"),
                          ("--config.train.no_such_key=3", "config.train.no_such_key"),
                          ("--config.train.batch_size=16", "--allow_config_change")]:
    command = _command("train.py", partial, data_dir, steps) + [override]
    if "num_steps" in override:
      command.remove(f"--config.train.num_steps={steps}")
    failed = Run(command)
    print(f"{override}: exit {failed.returncode} after {failed.seconds:.1f} s, names "
          f"{field}: {field in failed.log}", flush=True)

  export_dir = os.path.join(root, "export")
  exported = Run(_command("export.py", reference_dir, data_dir, steps, f"--output={export_dir}",
                          "--platforms=cpu"))
  assert exported.returncode == 0, exported.log[-3000:]
  files = sorted(export_lib._read_manifest(export_dir)["sha256"]) + ["manifest.json"]
  named = 0
  for name in files:
    damaged = new_dir("export")
    shutil.copytree(export_dir, damaged, dirs_exist_ok=True)
    if rng.random() < 0.5:
      _truncate(os.path.join(damaged, name))
    else:
      _flip(os.path.join(damaged, name), rng)
    for loader in (export_lib.load, export_lib.load_serving):
      try:
        loader(damaged)
      except (ValueError, FileNotFoundError) as e:
        named += os.path.join(damaged, name) in str(e)
  print(f"damaged export file ({len(files)} files, 2 loaders): error names the file "
        f"{named}/{2 * len(files)}", flush=True)

  damaged_data = new_dir("data")
  shutil.copytree(data_dir, damaged_data, dirs_exist_ok=True)
  (train_file,) = glob.glob(os.path.join(damaged_data, "*", "*", "*", "*train.array_record*"))
  # Records fill the file up to its index at the end; a flip there breaks every record.
  _flip(train_file, rng, within=(0.05, 0.9))
  epoch = 128 // base.get_config("tiny").train.batch_size  # Every record read once.
  one = Run(_command("train.py", new_dir("one_record"), damaged_data, epoch))
  _flip(train_file, rng, count=12, within=(0.05, 0.9))
  many = Run(_command("train.py", new_dir("many_records"), damaged_data, epoch))
  print(f"damaged dataset bytes: 1 flip -> exit {one.returncode}, counted "
        f"{'records cannot be read' in one.log and 'skipped (corrupt)' in one.log}; 13 flips -> "
        f"exit {many.returncode}, names the file and the prepare command "
        f"{train_file in many.log and 'gmsrm_jax.data.prepare' in many.log}", flush=True)
  for sig in (signal.SIGTERM, signal.SIGINT):
    workdir = new_dir("two_processes")
    statuses = _two_processes_signalled(workdir, data_dir, sig)
    saved = checkpoint.create_manager(workdir, read_only=True).all_steps()
    print(f"2 processes, {sig.name} to process 0: exit statuses {statuses}, checkpoints "
          f"{saved}", flush=True)
  print(f"(work files in {root})")


if __name__ == "__main__":
  main()
