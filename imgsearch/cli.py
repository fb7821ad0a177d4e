"""The ``imgsearch`` command. User mistakes print one line on stderr and exit 2; transient
faults (database unreachable) exit 75 (EX_TEMPFAIL); everything else is a bug and shows its traceback."""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from imgsearch.errors import ConfigurationError, ImgSearchError, InvalidInput, NotFound, TransientError
from imgsearch.settings import Settings

EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_TEMPFAIL = 75


def _db(args: argparse.Namespace, settings: Settings) -> int:
    from imgsearch.db import embedded

    if args.action == "start":
        print(embedded.ensure_started(settings.home))
    elif args.action == "stop":
        print("stopped" if embedded.stop(settings.home) else "not running")
    elif args.action == "url":
        if settings.database_url:
            print(settings.database_url)
        else:
            print(embedded.ensure_started(settings.home))
    else:
        status = embedded.status(settings.home)
        where = status.pgdata
        print(f"running (pid {status.pid}) in {where}" if status.running else f"not running ({where})")
        return 0 if status.running else 1
    return 0


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    from imgsearch.db import engine, migrate

    eng = engine.make_engine(engine.resolve_url(settings))
    try:
        migrate.upgrade(eng, args.revision)
        print(f"database at revision {migrate.current(eng)}")
    finally:
        eng.dispose()
    return 0


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from imgsearch.demo import run

    return run(settings, rows=args.rows)


def _tenant(args: argparse.Namespace, settings: Settings) -> int:
    from imgsearch import tenancy
    from imgsearch.db import engine, migrate

    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else None
    eng = engine.make_engine(engine.resolve_url(settings))
    try:
        migrate.upgrade(eng)
        tenancy.create_login(eng, args.login, args.tenant, password)
    finally:
        eng.dispose()
    print(f"created login {args.login!r}, restricted to tenant {args.tenant!r}")
    return 0


def _open_engine(settings: Settings) -> Any:
    from imgsearch.db import engine, migrate

    eng = engine.make_engine(engine.resolve_url(settings))
    if migrate.current(eng) != migrate.head():
        migrate.upgrade(eng)
    return eng


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    # the options become settings, which worker processes read from the environment at start
    overrides = {
        "IMGSEARCH_DEVICE": args.device,
        "IMGSEARCH_BATCH_SIZE": args.batch_size,
        "IMGSEARCH_QUEUE": args.queue,
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
        # at 0.72x of the embedder alone (bench/workers.py); solo ran at the figure in docs/benchmarks.md
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
    from imgsearch import pipeline
    from imgsearch.db import vector_index
    from imgsearch.embed.model import Embedder

    eng = _open_engine(settings)
    try:
        with eng.connect() as conn:
            model = vector_index.active_model(conn)
        if model is None:
            raise ConfigurationError("the catalog has no active model")
        embedder = Embedder.from_settings(settings, name=model.name)
        totals = pipeline.drain(
            eng,
            model,
            embedder,
            batch_size=settings.batch_size,
            lease_seconds=settings.lease_seconds,
            max_bytes=settings.max_image_bytes,
            progress=sys.stderr.isatty(),
        )
    finally:
        eng.dispose()
    print(f"embedded {totals.ready}, failed {totals.failed}")
    for image_id, error in list(totals.errors.items())[:20]:
        print(f"  image {image_id}: {error}")
    return 0


def _ingest(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from imgsearch import pipeline, sources
    from imgsearch.catalog import Catalog
    from imgsearch.embed.model import Embedder

    rows = list(sources.collect(args.paths, tenant=args.tenant, category=args.category))
    added = duplicates = 0
    failures: list[str] = []
    with Catalog.open(settings=settings) as catalog:
        for row in tqdm(rows, desc="storing", unit="img", disable=not sys.stderr.isatty()):
            where = row.pop("_where")
            try:
                _, created = catalog.add_row(row)
            except InvalidInput as exc:
                failures.append(f"{where}: {exc}")
                continue
            added += created
            duplicates += not created
        embedded_line = (
            "embedding: skipped (--no-embed); run `imgsearch worker` or `imgsearch worker --drain`"
        )
        if not args.no_embed:
            embedder = Embedder.from_settings(settings, name=catalog.model)
            totals = pipeline.drain(
                catalog.engine,
                catalog.active_model,
                embedder,
                batch_size=settings.batch_size,
                lease_seconds=settings.lease_seconds,
                max_bytes=settings.max_image_bytes,
                progress=sys.stderr.isatty(),
            )
            embedded_line = f"embedded {totals.ready}, failed {totals.failed}"
            failures += [f"image {image_id}: {error}" for image_id, error in totals.errors.items()]
    print(f"added {added}, duplicates skipped {duplicates}")
    print(embedded_line)
    if failures:
        print(f"failed {len(failures)}:")
        for line in failures[:50]:
            print(f"  {line}")
    return 1 if failures else 0


def _queue_depth(settings: Settings) -> int | None:
    try:
        import redis

        client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1, socket_timeout=1)
        return int(client.llen(settings.queue))
    except Exception:  # status must work without a broker
        return None


def _status(args: argparse.Namespace, settings: Settings) -> int:
    from imgsearch import queue

    eng = _open_engine(settings)
    try:
        current = queue.status(eng)
    finally:
        eng.dispose()
    print("images: " + ", ".join(f"{state} {count}" for state, count in current.counts.items()))
    depth = _queue_depth(settings)
    print(f"queue {settings.queue!r}: " + ("broker unreachable" if depth is None else f"{depth} messages"))
    age = current.oldest_pending_seconds
    print("oldest pending: " + ("none" if age is None else f"{age:.0f} s"))
    if current.latest_errors:
        print("latest errors:")
        for image_id, tenant, error in current.latest_errors:
            print(f"  image {image_id} ({tenant}): {error}")
    return 0


def _retry_failed(args: argparse.Namespace, settings: Settings) -> int:
    from imgsearch import queue
    from imgsearch.wake import celery_waker

    eng = _open_engine(settings)
    try:
        count = queue.retry_failed(eng, tenant=args.tenant)
    finally:
        eng.dispose()
    if count:
        celery_waker(settings.redis_url, settings.queue, settings.batch_size)(count)
    print(f"re-queued {count} failed images")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgsearch", description="Postgres-native image search.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    db = commands.add_parser(
        "db",
        help="manage the embedded PostgreSQL server",
        description="Start, stop or inspect the embedded PostgreSQL + pgvector server.",
    )
    db.add_argument("action", choices=["start", "stop", "status", "url"])
    db.set_defaults(func=_db)

    mig = commands.add_parser("migrate", help="upgrade the schema", description="Run imgsearch's migrations.")
    mig.add_argument("revision", nargs="?", default="head", help="target revision (default: head)")
    mig.set_defaults(func=_migrate)

    tenant = commands.add_parser("tenant", help="tenant isolation", description="Manage tenant-bound logins.")
    tenant_commands = tenant.add_subparsers(dest="tenant_command", required=True, metavar="COMMAND")
    login = tenant_commands.add_parser(
        "create-login",
        help="create a PostgreSQL login that sees one tenant only",
        description="Create a PostgreSQL login for a SQL console (psql) that row-level security "
        "restricts to one tenant.",
    )
    login.add_argument("login", help="login name: lowercase letters, digits, underscores")
    login.add_argument("--tenant", required=True, help="the only tenant the login may see")
    login.add_argument("--password-stdin", action="store_true", help="read the login's password from stdin")
    login.set_defaults(func=_tenant)

    ingest = commands.add_parser(
        "ingest",
        help="store images from files, folders or manifests, and embed them",
        description="Store images from files, folders (recursively) or CSV/JSONL manifests (columns: "
        "image path or URL, tenant, product_id, category, price, currency, attributes as JSON), then "
        "embed everything pending in this process. Exit 1 when some images failed.",
    )
    ingest.add_argument("paths", nargs="+", metavar="PATH")
    ingest.add_argument(
        "--tenant", default="default", help="tenant of rows that don't name one (default 'default')"
    )
    ingest.add_argument("--category", default=None, help="category of rows that don't name one")
    ingest.add_argument("--no-embed", action="store_true", help="only store; leave embedding to the workers")
    ingest.set_defaults(func=_ingest)

    worker = commands.add_parser(
        "worker",
        help="run an embedding worker",
        description="Run a Celery worker that embeds pending images (broker: IMGSEARCH_REDIS_URL), "
        "or with --drain embed everything pending in this process and exit.",
    )
    worker.add_argument("--concurrency", type=int, default=1, help="worker processes (default 1)")
    worker.add_argument("--queue", default=None, help="Celery queue (default IMGSEARCH_QUEUE or 'imgsearch')")
    worker.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: auto)")
    worker.add_argument("--batch-size", type=int, default=None, help="images per forward pass")
    worker.add_argument(
        "--no-beat", dest="beat", action="store_false", help="don't run the periodic sweep in this worker"
    )
    worker.add_argument("--drain", action="store_true", help="embed everything pending in-process, then exit")
    worker.set_defaults(func=_worker)

    status = commands.add_parser(
        "status",
        help="embedding progress and errors",
        description="Counts per state, queue depth, oldest pending image, latest errors.",
    )
    status.set_defaults(func=_status)

    retry = commands.add_parser(
        "retry-failed",
        help="re-queue failed images",
        description="Put failed images back to pending and wake the workers.",
    )
    retry.add_argument("--tenant", default=None, help="only this tenant's images")
    retry.set_defaults(func=_retry_failed)

    demo = commands.add_parser(
        "demo",
        help="store and search a synthetic catalog",
        description="Store synthetic bring-your-own vectors and run filtered searches.",
    )
    demo.add_argument("--rows", type=int, default=2000, help="catalog size (default 2000)")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace, Settings], int] = args.func
    try:
        settings = Settings()
        return func(args, settings)
    except NotFound as exc:
        print(f"imgsearch: {exc}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except (InvalidInput, ImgSearchError) as exc:
        if isinstance(exc, TransientError):
            print(f"imgsearch: {exc}", file=sys.stderr)
            return EXIT_TEMPFAIL
        print(f"imgsearch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("imgsearch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
