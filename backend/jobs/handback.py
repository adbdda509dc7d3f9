"""Hand-back: a worker asked to stop in the middle of a training queues the training again.

Kubernetes stops a pod (a KEDA scale-in, a node drain, a rollout) with SIGTERM to its first
process, then SIGKILL once terminationGracePeriodSeconds have passed. RQ's own warm shutdown
waits for the running job however long it takes, so a training longer than the grace period
would die by SIGKILL and start over only once its lock expired and a retry or reconciliation
came round. Instead:

- `mlassist worker` sends its work horse HAND_BACK_SIGNAL on SIGTERM; in the horse that signal
  only sets a flag (`install_in_horse`);
- a training checks the flag after every optimizer step (`raise_if_asked`) and raises
  HandedBack; `train_project` then releases the project's lock and requests the training
  again, so another worker runs it from the start: never two at once (the lock is released
  before the request), never lost (the request is in Redis before the horse exits);
- a job that does not check the flag (a push-back, a reconciliation) runs on, and the worker
  kills it after WORKER_STOP_TIMEOUT seconds: RQ's retry runs it elsewhere, a push-back from
  its saved cursor.

A round handed back after its evaluation started is not interrupted: committing it takes
seconds, re-running it minutes.
"""

from __future__ import annotations

import signal
import threading

from backend.core.errors import HandedBack

HAND_BACK_SIGNAL = signal.SIGUSR1

_asked = threading.Event()  # per process: set only in a work horse, by the signal


def install_in_horse() -> None:
    """In a new work horse: HAND_BACK_SIGNAL sets the flag instead of ending the process."""
    _asked.clear()
    signal.signal(HAND_BACK_SIGNAL, lambda *_: _asked.set())


def asked() -> bool:
    """True once this work horse's worker asked it to hand its job back."""
    return _asked.is_set()


def raise_if_asked(what: str) -> None:
    """Raise HandedBack when the worker is stopping (called between units of work)."""
    if _asked.is_set():
        raise HandedBack(f"{what}: the worker is stopping, so the job is handed back")
