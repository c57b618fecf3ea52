"""Serve the dashboard: a Bokeh server on 127.0.0.1, standalone or from a notebook.

One poller thread reads the archive every ``every`` seconds
(:class:`~crscale.monitor.state.DashboardState`); the Bokeh server runs on its own Tornado
loop in a second thread, so that :func:`dashboard` returns at once in a Jupyter kernel and the
kernel stays free. Every page opened on the server shows the same latest view.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from typing import Any

from crscale.errors import OutputError
from crscale.interrupts import mark_handled
from crscale.monitor.state import DashboardState, View

log = logging.getLogger(__name__)

#: Address the dashboard binds to unless told otherwise (never all interfaces by default).
DEFAULT_ADDRESS = "127.0.0.1"


class Poller:
    """Makes a new :class:`~crscale.monitor.state.View` every ``every`` seconds in a thread.

    Parameters
    ----------
    state : DashboardState
        What reads the archive.
    every : float
        Seconds between ticks (a tick that takes longer is followed at once by the next).
    """

    def __init__(self, state: DashboardState, *, every: float = 2.0) -> None:
        self.state = state
        self.every = every
        self.view: View | None = None
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="crscale-dashboard-poller", daemon=True)

    def start(self) -> Poller:
        """Start ticking (the first view is made before this returns)."""
        self._tick()
        self._thread.start()
        return self

    def _tick(self) -> None:
        try:
            self.view = self.state.tick()
            self.error = None
        except Exception as exc:  # keep serving the last view; say why it is stale
            log.exception("dashboard tick failed")
            self.error = f"{type(exc).__name__}: {exc}"

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._tick()

    def stop(self) -> None:
        """Stop ticking and disconnect from the scheduler."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.state.close()


def _free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


class DashboardServer:
    """A running dashboard: its URL, and :meth:`stop`. Shown in a notebook as the page itself.

    Made by :func:`dashboard`; not meant to be built directly.
    """

    def __init__(self, archive: str | os.PathLike, *, port: int = 0, address: str = DEFAULT_ADDRESS,
                 every: float = 2.0, scheduler: bool = True, allow_origin: list[str] | None = None) -> None:
        self.archive = archive
        self.address = address
        self.port = port or _free_port(address)
        self.every = every
        self.poller = Poller(DashboardState(archive, scheduler=scheduler), every=every)
        self._allow_origin = allow_origin
        self._loop: Any = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """The page's address."""
        host = "127.0.0.1" if self.address in ("", "0.0.0.0") else self.address
        return f"http://{host}:{self.port}/"

    def _make_document(self, doc: Any) -> None:
        from crscale.monitor.app import DashboardDocument

        page = DashboardDocument(lambda: self.poller.view)
        page.refresh()
        doc.title = f"crscale · {os.path.basename(os.fspath(self.archive))}"
        doc.add_root(page.layout)
        doc.add_periodic_callback(page.refresh, int(max(self.every, 0.25) * 1000))

    def _serve(self) -> None:
        from bokeh.application import Application
        from bokeh.application.handlers.function import FunctionHandler
        from bokeh.server.server import Server
        from tornado.ioloop import IOLoop

        asyncio.set_event_loop(asyncio.new_event_loop())
        try:
            self._loop = IOLoop.current()
            # Hosts without a port match any port: the page also works through an SSH tunnel to
            # another local port, while pages of other sites still cannot open its websocket.
            origins = ["127.0.0.1", "localhost", self.address, *(self._allow_origin or [])]
            self._server = Server({"/": Application(FunctionHandler(self._make_document))},
                                  io_loop=self._loop, address=self.address, port=self.port,
                                  allow_websocket_origin=origins, check_unused_sessions_milliseconds=5000,
                                  unused_session_lifetime_milliseconds=15000)
            self._server.start()
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._started.set()
            return
        self._started.set()
        self._loop.start()

    def start(self) -> DashboardServer:
        """Start reading and serving; returns once the page can be loaded."""
        self.poller.start()
        self._thread = threading.Thread(target=self._serve, name="crscale-dashboard-server", daemon=True)
        self._thread.start()
        self._started.wait(30)
        if self._error is not None:
            self.poller.stop()
            raise OutputError(f"cannot serve the dashboard on {self.address}:{self.port}: {self._error}")
        log.info("dashboard of %s at %s", self.archive, self.url)
        return self

    def stop(self) -> None:
        """Stop the server and the reading (the job is not touched)."""
        if self._loop is not None and self._server is not None:
            done = threading.Event()

            def _close() -> None:
                with contextlib.suppress(Exception):
                    self._server.stop()
                self._loop.stop()
                done.set()

            self._loop.add_callback(_close)
            done.wait(10)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.poller.stop()

    def wait(self) -> None:
        """Block until interrupted (Ctrl-C), then stop."""
        try:
            while self._thread is not None and self._thread.is_alive():
                time.sleep(0.5)
        except KeyboardInterrupt:
            mark_handled()  # Ctrl-C is how this ends, not an interruption
        finally:
            self.stop()

    def _repr_html_(self) -> str:
        return (f'<p>crscale dashboard of <code>{self.archive}</code>: '
                f'<a href="{self.url}" target="_blank">{self.url}</a></p>'
                f'<iframe src="{self.url}" width="100%" height="900" '
                'style="border: 1px solid #ddd"></iframe>')

    def __repr__(self) -> str:
        return f"<crscale dashboard of {self.archive} at {self.url}>"


def dashboard(archive: str | os.PathLike, *, port: int = 0, address: str = DEFAULT_ADDRESS,
              every: float = 2.0, scheduler: bool = True,
              allow_origin: list[str] | None = None) -> DashboardServer:
    """Start the live dashboard of the job on ``archive`` and return it (one call in a notebook).

    In JupyterLab the returned object displays as the page itself (an iframe of the server) and
    its link. The page updates itself every ``every`` seconds without reloading, and keeps
    working across restarts of the job: all it needs is the archive.

    Parameters
    ----------
    archive : str or path
        The archive of the job (it need not exist yet: the page fills in when the job starts).
    port : int
        Port to serve on (0: a free one).
    address : str
        Interface to bind; ``127.0.0.1`` by default (reach it from elsewhere through an SSH
        tunnel, or pass another address deliberately).
    every : float
        Seconds between reads of the archive and page updates.
    scheduler : bool
        Ask the job's Dask scheduler (from ``jobs/current.json``) for its workers and tasks.
    allow_origin : list of str, optional
        More ``host[:port]`` the page may be loaded from (a reverse proxy's); ``127.0.0.1``,
        ``localhost`` and ``address`` are always allowed, on any port.

    Returns
    -------
    DashboardServer
        With ``url`` and ``stop()``.

    Examples
    --------
    >>> from crscale.monitor import dashboard  # doctest: +SKIP
    >>> dash = dashboard("survey.zarr")  # doctest: +SKIP
    >>> dash  # doctest: +SKIP
    """
    return DashboardServer(archive, port=port, address=address, every=every, scheduler=scheduler,
                           allow_origin=allow_origin).start()
