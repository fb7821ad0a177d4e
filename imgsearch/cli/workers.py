"""``imgsearch worker``, ``imgsearch status`` and ``imgsearch retry-failed``: the embedding queue."""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from imgsearch.cli._common import Subparsers, embedders, open_engine, positive, seconds
from imgsearch.errors import ImgSearchError
from imgsearch.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from imgsearch.work.progress import QueueStatus

T = TypeVar("T")


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    # the options become settings, which worker processes read from the environment at start
    overrides = {
        "IMGSEARCH_DEVICE": args.device,
        "IMGSEARCH_BATCH_SIZE": args.batch_size,
        "IMGSEARCH_QUEUE": args.queue,
        "IMGSEARCH_RUNTIME": args.runtime,
    }
    for name, value in overrides.items():
        if value is not None:
            os.environ[name] = str(value)
    if "IMGSEARCH_TORCH_THREADS" not in os.environ and args.concurrency > 1:
        # worker processes share the CPU cores instead of each starting one thread per core
        os.environ["IMGSEARCH_TORCH_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.concurrency))
    settings = Settings()
    if args.drain:
        return _drain(settings)
    import tempfile

    from workers.app import configure

    app = configure(settings)
    argv = [
        "worker",
        "--concurrency",
        str(args.concurrency),
        "--queues",
        settings.queue,
        "--loglevel",
        "INFO",
        "--hostname",
        f"imgsearch-{os.getpid()}@%h",
    ]
    if args.concurrency == 1:
        # one process: run tasks in it rather than in a forked child, where torch's CPU threads ran
        # at 0.72x of the embedder alone (bench/work/workers.py); solo ran at the figure in docs/benchmarks.md
        argv += ["--pool", "solo"]
    schedule = os.path.join(tempfile.gettempdir(), f"imgsearch-beat-{os.getpid()}")
    if args.beat:
        argv += ["--beat", "--schedule", schedule]
    try:
        app.worker_main(argv)
    finally:
        for leftover in glob.glob(glob.escape(schedule) + "*"):  # beat's schedule shelve files
            with contextlib.suppress(OSError):
                os.remove(leftover)
    return 0


def _drain(settings: Settings) -> int:
    from imgsearch.embed.active import configured_model, open_model
    from imgsearch.work import pipeline

    eng = open_engine(settings)
    try:
        model = open_model(eng, configured_model(settings), settings.model, strict=False)
        totals = pipeline.drain(
            eng,
            embedders(settings),
            model=model,
            batch_size=settings.batch_size,
            lease_seconds=settings.lease_seconds,
            downloads=settings.downloads(),
            progress=sys.stderr.isatty(),
            keep_content=settings.keep_content,
        )
    finally:
        eng.dispose()
    print(f"embedded {totals.ready}, failed {totals.failed}")
    for image_id, error in list(totals.errors.items())[:20]:
        print(f"  image {image_id}: {error}")
    return 0


def _status(args: argparse.Namespace, settings: Settings) -> int:
    from imgsearch.work import progress, wake

    eng = open_engine(settings)
    try:
        current = progress.status(eng) if args.wait is None else _wait(eng, args.wait)
        answering = _answering(eng, args.wait_worker)
    finally:
        eng.dispose()
    print("images: " + ", ".join(f"{state} {count}" for state, count in current.counts.items()))
    depth = wake.queue_depth(settings.redis_url, settings.queue)
    print(f"queue {settings.queue!r}: " + ("broker unreachable" if depth is None else f"{depth} messages"))
    age = current.oldest_pending_seconds
    print("oldest pending: " + ("none" if age is None else f"{age:.0f} s"))
    print(f"workers answering search_text: {answering}")
    if settings.replica_urls:
        from imgsearch.search.replicas import Replicas

        replicas = Replicas(
            settings.replica_urls, pool_size=1, max_lag_seconds=settings.replica_max_lag_seconds
        )
        try:
            for name, lag in replicas.lags().items():
                state = "unreachable" if lag is None else f"{lag:.1f} s behind"
                if lag is not None and lag > settings.replica_max_lag_seconds:
                    state += " (out of the search rotation)"
                print(f"replica {name}: {state}")
        finally:
            replicas.dispose()
    if current.latest_errors:
        print("latest errors:")
        for image_id, tenant, error in current.latest_errors:
            print(f"  image {image_id} ({tenant}): {error}")
    return 0


def _answering(eng: Engine, timeout: float | None) -> int:
    """Workers whose model is loaded and who listen for ``search_text``'s requests; with a timeout,
    first wait until there is one."""
    from imgsearch.work import text_requests

    def read() -> int:
        with eng.connect() as conn:
            return text_requests.listening(conn)

    if timeout is None:
        return read()
    return _poll(
        read,
        done=bool,
        timeout=timeout,
        every=0.2,
        progress=lambda _: "waiting for a worker to load its model",
        failure=lambda _: f"no worker answers search_text after {timeout:g} s: start one with "
        "`imgsearch worker` (a worker answers once its model is loaded)",
    )


def _wait(eng: Engine, timeout: float) -> QueueStatus:
    """Wait until no image is pending or embedding, reading the counts again when an image turns
    ready or failed (LISTEN/NOTIFY: :mod:`imgsearch.work.ready`); progress on a terminal's stderr."""
    from imgsearch.work import progress, ready

    def left(current: QueueStatus) -> int:
        return current.counts["pending"] + current.counts["embedding"]

    with ready.Listener(eng) as listener:
        return _poll(
            lambda: progress.status(eng),
            done=lambda current: left(current) == 0,
            timeout=timeout,
            every=ready.RECHECK_SECONDS,
            progress=lambda current: f"waiting: {left(current)} images pending or embedding",
            failure=lambda current: f"{left(current)} images still pending or embedding after {timeout:g} s: "
            "is a worker running (`imgsearch worker`)?",
            pause=listener.changed,
        )


def _poll(
    read: Callable[[], T],
    *,
    done: Callable[[T], bool],
    timeout: float,
    every: float,
    progress: Callable[[T], str],
    failure: Callable[[T], str],
    pause: Callable[[float], object] = time.sleep,
) -> T:
    """``read()`` every ``every`` s (or sooner, when ``pause`` returns early) until ``done`` says
    so: its last value; after ``timeout`` s the one-line error ``failure`` gives. Progress on a
    terminal's stderr, erased when it ends."""
    deadline = time.monotonic() + timeout
    shown = ""
    try:
        while not done(value := read()):
            if time.monotonic() >= deadline:
                raise ImgSearchError(failure(value))
            if sys.stderr.isatty():
                shown = progress(value)
                print(f"\r{shown} ", end="", file=sys.stderr, flush=True)
            pause(min(every, max(0.0, deadline - time.monotonic())))
        return value
    finally:
        if shown:
            print("\r" + " " * (len(shown) + 1) + "\r", end="", file=sys.stderr, flush=True)


def _retry_failed(args: argparse.Namespace, settings: Settings) -> int:
    from imgsearch.work import queue
    from imgsearch.work.wake import celery_waker

    eng = open_engine(settings)
    try:
        count = queue.retry_failed(eng, tenant=args.tenant)
    finally:
        eng.dispose()
    if count:
        celery_waker(settings.redis_url, settings.queue, settings.batch_size)(count)
    print(f"re-queued {count} failed images")
    return 0


def register(commands: Subparsers) -> None:
    worker = commands.add_parser(
        "worker",
        help="run an embedding worker",
        description="Run a Celery worker that embeds pending images (broker: IMGSEARCH_REDIS_URL), "
        "or with --drain embed everything pending in this process and exit.",
    )
    worker.add_argument("--concurrency", type=positive, default=1, help="worker processes (default 1)")
    worker.add_argument("--queue", default=None, help="Celery queue (default IMGSEARCH_QUEUE or 'imgsearch')")
    worker.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: auto)")
    worker.add_argument("--batch-size", type=positive, default=None, help="images per forward pass")
    worker.add_argument(
        "--runtime",
        choices=("torch", "onnx", "onnx-int8"),
        default=None,
        help="what runs the model (default IMGSEARCH_RUNTIME or torch): onnx is a float32 ONNX Runtime "
        "export on the CPU; onnx-int8 its int8 weights, for a model registered as NAME@onnx-int8",
    )
    worker.add_argument(
        "--no-beat", dest="beat", action="store_false", help="don't run the periodic sweep in this worker"
    )
    worker.add_argument("--drain", action="store_true", help="embed everything pending in-process, then exit")
    worker.set_defaults(func=_worker)

    status = commands.add_parser(
        "status",
        help="embedding progress and errors",
        description="Counts per state, queue depth, oldest pending image, workers answering "
        "search_text, latest errors.",
    )
    status.add_argument(
        "--wait",
        type=seconds,
        nargs="?",
        const=600.0,
        default=None,
        metavar="SECONDS",
        help="first wait until no image is pending or embedding (default at most 600 s; "
        "exit 2 with one line if they still are)",
    )
    status.add_argument(
        "--wait-worker",
        type=seconds,
        nargs="?",
        const=120.0,
        default=None,
        metavar="SECONDS",
        help="first wait until a worker answers search_text, its model loaded (default at most "
        "120 s; exit 2 with one line if none does)",
    )
    status.set_defaults(func=_status)

    retry = commands.add_parser(
        "retry-failed",
        help="re-queue failed images",
        description="Put failed images back to pending and wake the workers.",
    )
    retry.add_argument("--tenant", default=None, help="only this tenant's images")
    retry.set_defaults(func=_retry_failed)
