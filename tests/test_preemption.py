"""SIGTERM inside `StopOnSigterm`: a flag the loop reads, never a lost signal."""
import os
import signal
import threading

import pytest

from vldd_jax import preemption

pytestmark = pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                                reason="signal handlers are set from the main thread only")


def test_a_sigterm_is_a_flag_until_the_loop_checks_it():
  with pytest.raises(preemption.Stopped, match=r"after epoch 3; saved x\. Rerun"):
    with preemption.StopOnSigterm() as stop:
      stop.stop_if_requested("epoch 2")  # Nothing yet.
      os.kill(os.getpid(), signal.SIGTERM)
      assert stop.requested
      stop.stop_if_requested("epoch 3; saved x")
  assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_a_sigterm_after_the_last_check_reaches_the_enclosing_loop_then_stops():
  with pytest.raises(preemption.Stopped, match="what finished before it is saved"):
    with preemption.StopOnSigterm() as outer:
      with preemption.StopOnSigterm() as inner:  # E.g. distill inside compare.
        os.kill(os.getpid(), signal.SIGTERM)
      assert inner.requested and outer.requested  # Passed on, not dropped.
  # A loop that stops by its own exception passes nothing on.
  with preemption.StopOnSigterm() as outer:
    with pytest.raises(preemption.Stopped):
      with preemption.StopOnSigterm() as inner:
        os.kill(os.getpid(), signal.SIGTERM)
        inner.stop_if_requested("step 1")
    assert not outer.requested
