"""Signals: SIGTERM and SIGHUP end a command the way Ctrl-C does.

A batch system ends a job at its walltime (or on ``scancel``) with SIGTERM, and a closed terminal
sends SIGHUP. :func:`handle_signals` turns both, and SIGINT, into :class:`Interrupted` (a
:class:`KeyboardInterrupt`) raised in the main thread, so that every command cancels its work the
same way: in-flight exposures are marked ``interrupted`` (never left ``running``), the cluster is
closed, and the CLI prints the re-run message and exits 130.

The Dask worker processes of a local cluster ignore these signals (:func:`dask_setup`, loaded as
a worker preload): a signal sent to the whole process group (Ctrl-C in a terminal, SLURM
signalling every process of a job step) reaches the client, which cancels the tasks and closes
the workers, instead of killing workers mid-task with a traceback each. A worker whose parent
dies still exits (distributed closes it when the pipe to its nanny closes).

Only the standard library is imported here: the CLI installs the handlers before it imports
the heavy layers.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

#: Signals handled like Ctrl-C.
SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


class Interrupted(KeyboardInterrupt):
    """A command was asked to stop by a signal.

    Parameters
    ----------
    signum : int
        The signal received.
    """

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(f"{signal.Signals(self.signum).name} received")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.signum,))


@contextlib.contextmanager
def handle_signals() -> Iterator[None]:
    """Raise :class:`Interrupted` in the main thread on SIGINT, SIGTERM or SIGHUP.

    Only the first signal raises: later ones (a batch system repeating SIGTERM, a second
    Ctrl-C) are ignored so that they cannot abort the clean-up the first one started. The
    previous handlers are restored on exit. Outside the main thread this does nothing.
    An :class:`Interrupted` swallowed by a finaliser is not printed (it is raised again, see
    :func:`raise_pending`); other unraisable exceptions go to the previous ``sys.unraisablehook``.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def handler(signum: int, _frame: Any) -> None:
        nonlocal fired
        if fired:
            return
        fired = True
        _pending[:] = [signum]
        # Workers cancelled and closed on purpose are not news: keep the terminal to the message.
        logging.getLogger("distributed").setLevel(logging.ERROR)
        raise Interrupted(signum)

    report_unraisable = sys.unraisablehook

    def unraisable(info: Any) -> None:
        # A finaliser swallowed the signal's exception: raise_pending raises it again, so the
        # "Exception ignored in ..." traceback Python would print is noise to the user.
        if not isinstance(info.exc_value, Interrupted):
            report_unraisable(info)

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    sys.unraisablehook = unraisable
    try:
        yield
    except BaseException:
        raise
    else:
        raise_pending()  # the signal's exception was swallowed and the command ran to its end
    finally:
        _pending.clear()
        if sys.unraisablehook is unraisable:
            sys.unraisablehook = report_unraisable
        for s, old in previous.items():
            signal.signal(s, old)


# The signal received under handle_signals, until its Interrupted is known to be on its way.
_pending: list[int] = []


def raise_pending() -> None:
    """Raise the :class:`Interrupted` of a signal whose own exception was swallowed (once).

    A signal handler's exception is raised wherever the main thread is. When that is a
    finaliser (a ``__del__``, a weakref callback run by the garbage collector), Python prints
    "Exception ignored" and goes on: the signal is lost and the command would run to its end
    and exit 0. The stages call this as each task finishes, and :func:`handle_signals` when
    the command ends, so that the signal still stops the command.
    """
    if _pending:
        raise Interrupted(_pending.pop())


def mark_handled() -> None:
    """The signal's :class:`Interrupted` was caught and dealt with: never raise it again.

    Whoever catches the interrupt and turns it into something else calls this: an error of
    its own (a batch cluster whose watch gave up interrupts the main thread to stop its wait),
    an exit status with the re-run message printed, or the normal end of a command that
    runs until Ctrl-C (the dashboard). Otherwise :func:`raise_pending` would raise it a
    second time when the command ends.
    """
    _pending.clear()


def worker_preload(config: Any) -> list[str]:
    """The ``distributed.worker.preload`` list with this module added (for local clusters)."""
    current = config.get("distributed.worker.preload", []) or []
    current = [current] if isinstance(current, str) else list(current)
    return current if __name__ in current else [*current, __name__]


def _not_a_task_failure(record: logging.LogRecord) -> bool:
    # crscale reports every failed task itself, naming the exposure: the worker's own
    # "Compute Failed" record, with its traceback, would only come first and repeat it.
    return not str(record.msg).startswith("Compute Failed")


def _not_a_lost_local_scheduler(record: logging.LogRecord) -> bool:
    # This preload runs on local clusters only, whose scheduler lives in the crscale process:
    # when a heartbeat cannot reach it, that process is closing the cluster (the end of a
    # command, or an interrupt), and the worker is about to be closed too.
    return not str(record.msg).startswith("Failed to communicate with scheduler during heartbeat")


def dask_setup(worker: Any) -> None:
    """Worker preload: ignore the signals that the client handles (see the module notes).

    It also leaves the reporting of failed tasks to the client, and keeps a worker from
    printing a traceback when the closing crscale process's scheduler is gone before it.
    """
    logging.getLogger("distributed.worker").addFilter(_not_a_task_failure)
    logging.getLogger("distributed.worker").addFilter(_not_a_lost_local_scheduler)
    if threading.current_thread() is not threading.main_thread():
        return
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
