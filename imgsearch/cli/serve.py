"""``imgsearch serve``: the HTTP API and the search page (FastAPI on uvicorn)."""

from __future__ import annotations

import argparse
import atexit
import errno
import os
import shutil
import socket
import tempfile

from imgsearch.cli._common import Subparsers, open_engine, positive
from imgsearch.errors import ConfigurationError
from imgsearch.settings import Settings

SERVER_POOL_SIZE = 20
SERVER_LOCK_TIMEOUT_MS = 5000


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise ConfigurationError(
            f"imgsearch serve needs the server extra: pip install 'pg-imgsearch[server]' ({exc.name} is missing)"
        ) from exc
    if args.preload:
        os.environ["IMGSEARCH_PRELOAD"] = "true"  # worker processes read their settings at start
    # torch's OpenMP threads sleep between operations instead of spinning: the server's request
    # threads need those cores (on 2 cores, spinning made micro-batched text queries 0.7x as fast
    # as one at a time with a small model; bench/server/serve.py). Read when torch loads, in each process.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # concurrent requests each hold a connection: a pool of SQLAlchemy's default 5 closes the extra
    # ones as they come back and opens new ones for the next requests (a connect, and statements
    # prepared again, on every one; bench/server/serve.py)
    os.environ.setdefault("IMGSEARCH_POOL_SIZE", str(SERVER_POOL_SIZE))
    # a request waiting on a lock (a migration's ALTER TABLE, someone's LOCK) answers 503 with
    # Retry-After after this long, instead of hanging with a connection and a thread (bench/server/soak.py)
    os.environ.setdefault("IMGSEARCH_LOCK_TIMEOUT_MS", str(SERVER_LOCK_TIMEOUT_MS))
    # a service's uploads wake the workers at once (a failed wake-up costs nothing: the workers'
    # sweep finds the rows); without it a first upload waited for the sweep, up to a minute
    os.environ.setdefault("IMGSEARCH_WAKE_WORKERS", "true")
    _check_port_free(args.host, args.port)
    settings = Settings()
    # migrate here, once: N worker processes starting at the same moment would race to
    open_engine(settings).dispose()
    if args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # each process counts into files here; a scrape of any of them adds them all up
        folder = tempfile.mkdtemp(prefix="imgsearch-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
        atexit.register(shutil.rmtree, folder, True)
    from imgsearch.server.middleware import configure_logging

    configure_logging()
    uvicorn.run(
        "imgsearch.server.app:from_environment",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=False,  # imgsearch's access log has the request id, and never a query string
        log_config=None,
        timeout_graceful_shutdown=10,
    )
    return 0


def _check_port_free(host: str, port: int) -> None:
    """One line naming the port when it can't be served, before anything starts: uvicorn would log
    "startup complete" first, then fail to bind and exit 3."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigurationError(f"cannot serve on {host}:{port}: {exc.strerror}") from exc
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            reason = (
                "is in use (another server?)"
                if exc.errno == errno.EADDRINUSE
                else f"can't be used: {exc.strerror}"
            )
            raise ConfigurationError(f"port {port} on {host} {reason}; choose another with --port") from exc


def register(commands: Subparsers) -> None:
    serve = commands.add_parser(
        "serve",
        help="run the HTTP API and the search page",
        description="Serve the HTTP API (/v1, OpenAPI schema at /openapi.json, docs at /docs), the "
        "search page at /, /healthz, /readyz and /metrics. Requests need a key from "
        "`imgsearch tenant create-key`. Needs the server extra: pip install 'pg-imgsearch[server]'.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--workers", type=positive, default=1, help="server processes (default 1)")
    serve.add_argument("--preload", action="store_true", help="load the model at start; /readyz waits for it")
    serve.set_defaults(func=_serve)
