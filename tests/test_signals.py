"""SIGTERM / SIGHUP / SIGINT: a real `crscale run` process sent a real signal stops cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from crscale.interrupts import Interrupted, handle_signals
from crscale.io.archive import Archive
from tests.conftest import FZ

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def _detect_state(path: Path) -> str | None:
    try:
        return Archive(path).status("banzai_test_frame").get("detect", {}).get("state")
    except Exception:  # not created yet, or being written
        return None


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM, signal.SIGINT])
def test_handle_signals_raises_once_and_restores(signum):
    before = signal.getsignal(signum)
    with pytest.raises(KeyboardInterrupt) as info, handle_signals():
        os.kill(os.getpid(), signum)
        time.sleep(1)
    assert isinstance(info.value, Interrupted) and info.value.signum == signum
    assert signal.getsignal(signum) is before


class _SignalledInFinaliser:
    """An object whose ``__del__`` is running when the signal arrives (as the GC may be)."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)  # the handler runs here: Python prints "Exception ignored" and goes on


class _FailingFinaliser:
    def __del__(self) -> None:
        raise ValueError("a finaliser's own error")


def test_a_signal_swallowed_by_a_finaliser_still_stops_the_command(monkeypatch):
    from crscale.interrupts import raise_pending

    swallowed = []  # what Python would report as "Exception ignored in ..."

    def report(u):
        swallowed.append(u.exc_type)

    monkeypatch.setattr(sys, "unraisablehook", report)
    # The stages' checkpoint (each finished task) raises it ...
    reached = False
    with pytest.raises(Interrupted) as info, handle_signals():
        obj = _SignalledInFinaliser()
        del obj  # the handler's exception is lost here
        reached = True
        raise_pending()
        pytest.fail("the signal was lost")
    assert reached and info.value.signum == signal.SIGTERM
    # It was not printed as "Exception ignored" (CI's SIGTERM test saw that traceback once),
    # while other exceptions of finalisers still are.
    assert swallowed == []
    with handle_signals():
        obj = _FailingFinaliser()
        del obj
    assert swallowed == [ValueError]
    assert sys.unraisablehook is report  # given back
    # ... and so does the end of the command, when no checkpoint came after it.
    with pytest.raises(Interrupted), handle_signals():
        obj = _SignalledInFinaliser()
        del obj
    # Once raised, it is not raised again (the clean-up it starts is not cut short).
    with pytest.raises(Interrupted), handle_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
    raise_pending()  # nothing pending outside the context
    with handle_signals():
        raise_pending()  # nor before any signal


def test_an_interrupt_that_is_caught_and_handled_is_not_raised_again(capsys):
    """A caught interrupt turned into an exit status (the CLI's stages), or into another error
    (a batch cluster whose watch gave up interrupts the main thread): the end of the command
    must not raise it a second time (CI saw exit 130 instead of 2, and the message twice)."""
    from crscale.cli._run import EXIT_INTERRUPTED, guarded
    from crscale.interrupts import mark_handled, raise_pending

    def interrupted() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)

    with handle_signals():  # exits without raising
        value, status = guarded("detect", interrupted)
    assert (value, status) == (None, EXIT_INTERRUPTED)
    assert capsys.readouterr().err.count("re-run the same command") == 1

    with pytest.raises(RuntimeError, match="no worker can come"), handle_signals():
        try:
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # JobWatch's way
            time.sleep(1)
        except KeyboardInterrupt:
            mark_handled()
            raise RuntimeError("no worker can come") from None
    # Not handled: raised at the end as before.
    with pytest.raises(Interrupted), handle_signals():
        try:
            interrupted()
        except KeyboardInterrupt:
            pass  # swallowed without mark_handled: the command must still stop
    raise_pending()  # and nothing is left over


def test_sigterm_during_detect_exits_130_and_rerun_finishes(tmp_path):
    archive = tmp_path / "a.zarr"
    cmd = [sys.executable, "-m", "crscale.cli", "run", str(FZ), "--archive", str(archive),
           "--stages", "ingest,detect", "--workers", "2", "--no-progress"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while _detect_state(archive) != "running":  # the blocks are being computed now
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)  # what a batch system sends at the walltime
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    assert "interrupted" in err and err.count("re-run the same command") == 1, err
    assert "Traceback" not in err and "leaked semaphore" not in err, err
    status = Archive(archive).status("banzai_test_frame")
    assert status["ingest"]["state"] == "done"
    assert status["detect"]["state"] == "interrupted"  # never left `running`
    assert "SIGTERM" in status["detect"]["message"]

    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    status = Archive(archive).status("banzai_test_frame")
    assert status["detect"]["state"] == "done" and status["detect"]["n_cr_pixels"] > 0


def test_local_workers_drop_only_the_lost_scheduler_heartbeat_and_task_failure_records():
    import logging

    from crscale import interrupts

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("distributed.worker", logging.ERROR, __file__, 1, msg, None, None)

    worker_logger = logging.getLogger("distributed.worker")
    before = list(worker_logger.filters)
    handlers = {s: signal.getsignal(s) for s in interrupts.SIGNALS}
    try:
        interrupts.dask_setup(object())  # what a local worker runs at start
        assert not worker_logger.filter(record("Failed to communicate with scheduler during heartbeat."))
        assert not worker_logger.filter(record("Compute Failed\nKey: x"))
        assert worker_logger.filter(record("Worker stream died during communication with 127.0.0.1:1"))
        assert all(signal.getsignal(s) is signal.SIG_IGN for s in interrupts.SIGNALS)
    finally:
        worker_logger.filters[:] = before
        for s, h in handlers.items():
            signal.signal(s, h)
