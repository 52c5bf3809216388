"""``python -m tuner dashboard``: optuna-dashboard on the project's storage and artifact store.

The dashboard opens the storage the way workers do (:func:`tuner.tune.storage.open_storage`: WAL
mode on SQLite and a long busy timeout), so it can be watched while stages run: readers never
block the writer in WAL mode, and a write that meets a lock waits instead of failing with
"database is locked". It serves the study notes, the intermediate values (learning curves) and
the plot artifacts under ``WORKDIR/artifacts`` that the stages write.

It listens on loopback by default. optuna-dashboard has no authentication and its API can edit
notes and delete studies: bind another address only on a trusted network.
"""

from __future__ import annotations

import logging
import signal
import socketserver
import threading
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from tuner.errors import TunerError
from tuner.report.notes import artifact_store
from tuner.tune.storage import check_url, open_storage, redact
from tuner.tune.studies import check_exists

logger = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    """One thread per request (the single-page app loads several files at once)."""

    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the stdlib's name
        logger.debug("%s - %s", self.address_string(), format % args)


def _identity_when_unsaid(app):
    """optuna-dashboard reads ``request.headers["Accept-Encoding"]`` for its static files and
    answers 500 (``KeyError: 'HTTP_ACCEPT_ENCODING'``) to a client that sends no such header
    (curl without ``--compressed``, some proxies). A client that says nothing accepts the
    identity encoding (RFC 9110, 12.5.3): say so for it."""

    def wrapped(environ, start_response):
        environ.setdefault("HTTP_ACCEPT_ENCODING", "identity")
        return app(environ, start_response)

    return wrapped


class Dashboard:
    """A running dashboard server: ``url``, ``serve_forever()`` or ``start()``/``stop()``."""

    def __init__(self, storage_url: str, workdir: Path, host: str = "127.0.0.1", port: int = 8080):
        import optuna_dashboard

        check_exists(storage_url)
        check_url(storage_url)
        self.storage = open_storage(storage_url, heartbeat_interval=5, grace_period=20)
        self.artifacts = artifact_store(workdir)
        app = _identity_when_unsaid(
            optuna_dashboard.wsgi(self.storage, artifact_store=self.artifacts)
        )
        try:
            self.server = make_server(
                host, port, app, server_class=_Server, handler_class=_QuietHandler
            )
        except OSError as err:
            self.storage.engine.dispose()
            raise TunerError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
        self.host = host
        self.port = self.server.server_port
        self.storage_url = storage_url
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/dashboard"

    def serve_forever(self) -> None:
        self.server.serve_forever(poll_interval=0.2)

    def start(self) -> Dashboard:
        """Serve in a background thread (tests, notebooks)."""
        self._thread = threading.Thread(target=self.serve_forever, name="dashboard", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.server.shutdown()
            self._thread.join()
            self._thread = None
        self.server.server_close()
        self.storage.remove_session()
        self.storage.engine.dispose()

    def __enter__(self) -> Dashboard:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(storage_url: str, workdir: Path, host: str, port: int) -> None:
    """Serve until Ctrl-C, printing the URL first."""
    dash = Dashboard(storage_url, workdir, host, port)
    if host not in LOOPBACK:
        logger.warning(
            "listening on %s: optuna-dashboard has no login and can edit notes and delete "
            "studies; anyone who reaches this address can do so. Bind to 127.0.0.1 (or publish "
            "the port on loopback only, as docker-compose.yml does) unless the network is "
            "trusted",
            host,
        )

    def stop(signum, frame):  # a service manager's SIGTERM stops it like Ctrl-C
        raise KeyboardInterrupt

    # set before the URL is printed: a SIGTERM sent as soon as the URL appears stops the
    # dashboard, not the CLI's default handler
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
    try:
        print(
            f"optuna-dashboard: {dash.url}\n  storage {redact(storage_url)}\n"
            f"  artifacts {Path(workdir) / 'artifacts'}\n  Ctrl-C to stop",
            flush=True,
        )
        dash.serve_forever()
    except KeyboardInterrupt:
        print("dashboard stopped", flush=True)
    finally:
        dash.stop()
