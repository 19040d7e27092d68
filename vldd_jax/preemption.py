"""SIGTERM as a request to stop at the next safe point.

A preempted TPU VM, a cluster's job time limit and `kill` all send SIGTERM
first. Its default action ends the process at once, losing everything since
the last checkpoint; inside `StopOnSigterm` it only sets a flag that a loop
reads between steps, so the loop can checkpoint and exit cleanly.
"""
import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils


class Stopped(Exception):
  """A loop checkpointed and stopped on SIGTERM; rerunning goes on from there."""


class StopOnSigterm:
  """Context manager: while inside, SIGTERM sets `requested` instead of killing."""

  def __init__(self):
    self._flag = False
    self._previous = None

  def __enter__(self) -> "StopOnSigterm":
    # Signal handlers can only be set from the main thread; elsewhere (a
    # notebook's worker thread) SIGTERM keeps its default action.
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, exc_type, *exc) -> None:
    if self._previous is None:
      return
    signal.signal(signal.SIGTERM, self._previous)
    if not self._flag or exc_type is not None:
      return
    # A SIGTERM after the loop's last check is not dropped: an enclosing loop
    # gets it (its handler sets its flag); at the top, the process stops here.
    if callable(self._previous):
      self._previous(signal.SIGTERM, None)
    elif self._previous == signal.SIG_DFL:
      raise Stopped("Stopped by SIGTERM; what finished before it is saved. Rerun the "
                    "same command to go on.")

  def stop_if_requested(self, what: str) -> None:
    """Raises `Stopped` (naming `what` was saved) if any process got SIGTERM."""
    if self.requested:
      raise Stopped(f"Stopped by SIGTERM after {what}. Rerun the same command to go on "
                    "from there.")

  def _handle(self, signum, frame) -> None:
    del signum, frame
    self._flag = True

  @property
  def requested(self) -> bool:
    """Whether any process got SIGTERM; on several hosts every process agrees
    (one small all-gather), so all stop at the same step."""
    if jax.process_count() == 1:
      return self._flag
    return bool(multihost_utils.process_allgather(np.asarray(self._flag)).any())
