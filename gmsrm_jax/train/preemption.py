"""Stopping a run cleanly on SIGTERM or SIGINT: the current step is saved, then the process
exits with EXIT_CODE, which schedulers read as "not finished, run me again".

Single process: our handlers set a flag the loop reads after each step (a host bool; no
device sync). Several processes must agree on the step they save at, so there the loop asks
orbax (`CheckpointManager.reached_preemption`, JAX's coordinated preemption sync point, fed
by the SIGTERM handler `jax.distributed.initialize` installs); SIGINT is forwarded to it as
SIGTERM, so Ctrl-C stops a multi-process job the same way.
"""

import os
import signal
import threading

from absl import logging

# os.EX_TEMPFAIL: distinct from success (0) and from errors (1), and resumable by rerunning.
EXIT_CODE = 75


class Stopped(SystemExit):
  """The run stopped on a signal after saving its current step; exits with EXIT_CODE."""

  def __init__(self, message: str):
    super().__init__(EXIT_CODE)
    self.message = message

  def __str__(self) -> str:
    return self.message


class StopRequests:
  """Context manager owning SIGTERM/SIGINT for the duration of a training loop.

  A second signal while stopping restores the previous handlers and raises KeyboardInterrupt
  at once (the in-flight save is still finished by the loop's cleanup).
  """

  def __init__(self, process_count: int):
    self._multiprocess = process_count > 1
    self._previous = {}
    self.signal_name = None

  def __enter__(self) -> "StopRequests":
    if threading.current_thread() is not threading.main_thread():
      logging.warning("Training outside the main thread: SIGTERM/SIGINT will not save a "
                      "checkpoint before stopping.")
      return self
    # With several processes, SIGTERM belongs to JAX's preemption notifier (replacing it
    # would break the coordinated save), so only SIGINT is ours, forwarded to it.
    names = (signal.SIGINT,) if self._multiprocess else (signal.SIGTERM, signal.SIGINT)
    for signum in names:
      self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc_info) -> None:
    self._restore_handlers()

  def _restore_handlers(self) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  def _handle(self, signum, frame) -> None:
    del frame
    name = signal.Signals(signum).name
    if self.signal_name is not None:
      self._restore_handlers()
      raise KeyboardInterrupt(f"second stop signal ({name}) while stopping")
    self.signal_name = name
    logging.warning("%s received: saving the current step, then stopping (send it again to "
                    "stop at once without that save).", name)
    if self._multiprocess:
      os.kill(os.getpid(), signal.SIGTERM)

  def requested(self, manager, step: int) -> str | None:
    """The reason to stop after `step`, or None. Called at every step by every process."""
    if self._multiprocess:
      return "a preemption notice (SIGTERM)" if manager.reached_preemption(step) else None
    return self.signal_name
