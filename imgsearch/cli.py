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

from pydantic import ValidationError

from imgsearch.errors import ImgSearchError, InvalidInput, NotFound, TransientError
from imgsearch.settings import Settings, describe_invalid

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
    from alembic.util import CommandError

    from imgsearch.db import engine, migrate

    eng = engine.make_engine(engine.resolve_url(settings))
    try:
        migrate.upgrade(eng, args.revision)
        print(f"database at revision {migrate.current(eng)}")
    except CommandError as exc:  # an unknown revision
        raise InvalidInput(f"cannot migrate to {args.revision!r}: {exc}") from exc
    finally:
        eng.dispose()
    return 0


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from imgsearch.demo import run

    return run(settings, html=Path(args.html))


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


def _embedders(settings: Settings) -> Callable[[Any], Any]:
    """One embedder per model name, created on first use (a model switch loads the new one)."""
    from imgsearch.embed.allocator import retain_freed_memory
    from imgsearch.embed.model import Embedder

    retain_freed_memory(settings)

    made: dict[str, Embedder] = {}

    def embedder_for(model: Any) -> Embedder:
        if model.name not in made:
            made[model.name] = Embedder.from_settings(settings, name=model.name)
        return made[model.name]

    return embedder_for


def _drain(settings: Settings) -> int:
    from imgsearch import pipeline

    eng = _open_engine(settings)
    try:
        totals = pipeline.drain(
            eng,
            _embedders(settings),
            batch_size=settings.batch_size,
            lease_seconds=settings.lease_seconds,
            downloads=settings.downloads(),
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
            totals = pipeline.drain(
                catalog.engine,
                _embedders(settings),
                batch_size=settings.batch_size,
                lease_seconds=settings.lease_seconds,
                downloads=settings.downloads(),
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


def _update(args: argparse.Namespace, settings: Settings) -> int:
    from imgsearch import sources
    from imgsearch.catalog import Catalog

    named = list(sources.feed(args.feeds, tenant=args.tenant))
    if not named:
        print("updated 0 products: the feed has no rows")
        return 0
    names = [name for name, _ in named]
    with Catalog.open(settings=settings) as catalog:
        changed = catalog.update_products([row for _, row in named], names=names)
    print(f"updated {changed} of {len(named)} products ({len(named) - changed} already had these values)")
    return 0


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


def _delete(args: argparse.Namespace, settings: Settings) -> int:
    from imgsearch import removal

    if bool(args.image_ids) == bool(args.product):
        raise InvalidInput("give image ids or --product, not both and not neither")
    if args.product and args.tenant is None:
        raise InvalidInput("--product needs --tenant: product ids are per tenant")
    eng = _open_engine(settings)
    try:
        if args.product:
            count = removal.delete_product(eng, args.product, tenant=args.tenant)
            print(f"deleted product {args.product!r} of tenant {args.tenant!r} and its {count} images")
        else:
            count = removal.delete_images(eng, args.image_ids, tenant=args.tenant)
            print(f"deleted {count} images")
    finally:
        eng.dispose()
    return 0


def _read_vector(path: str) -> list[float]:
    """A query vector from a .npy file, a JSON array, or numbers separated by commas or spaces."""
    import json

    import numpy as np

    try:
        if path.endswith(".npy"):
            array = np.load(path, allow_pickle=False)
        else:
            with open(path, encoding="utf-8") as handle:
                content = handle.read().strip()
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read vector file {path}: {exc}") from exc
    if path.endswith(".npy"):
        if array.ndim != 1:
            raise InvalidInput(
                f"vector file {path} holds an array of shape {array.shape}; expected one vector"
            )
        return [float(v) for v in array]
    try:
        values = json.loads(content) if content.startswith("[") else content.replace(",", " ").split()
        return [float(v) for v in values]
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"vector file {path} must hold numbers (JSON array, CSV or .npy): {exc}") from exc


def _attributes(value: str | None) -> dict[str, Any] | None:
    import json

    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f'--attributes must be a JSON object, e.g. \'{{"color": "red"}}\': {exc}') from exc
    if not isinstance(parsed, dict):
        raise InvalidInput('--attributes must be a JSON object, e.g. \'{"color": "red"}\'')
    return parsed


def _search(args: argparse.Namespace, settings: Settings) -> int:
    import json
    from pathlib import Path

    from imgsearch import report
    from imgsearch.catalog import Catalog
    from imgsearch.images import Limits, read_source

    if args.html:
        report.check_writable(Path(args.html))  # before the search, not after it
    query: dict[str, Any] = {}
    if args.text is not None:
        query["text"] = args.text
    elif args.image is not None:
        if not os.path.isfile(args.image):
            raise InvalidInput(f"no such image file: {args.image}")
        # read once (within the byte limit): searched, and shown on the --html page
        query["image"] = read_source(args.image, Limits(settings.max_image_bytes, settings.max_image_pixels))
    elif args.similar_to is not None:
        query["similar_to"] = args.similar_to
    elif args.similar_to_product is not None:
        query["similar_to_product"] = args.similar_to_product
    else:
        query["vector"] = _read_vector(args.vector_file)
    filters = {
        "tenant": args.tenant,
        "category": args.category[0] if args.category and len(args.category) == 1 else args.category,
        "price_min": args.price_min,
        "price_max": args.price_max,
        "attributes": _attributes(args.attributes),
    }
    options = {
        "k": args.k,
        "offset": args.offset,
        "group_by_product": args.group_by_product,
        "diversity": args.diversity,
        "expand": args.expand,
        "min_score": args.min_score,
        "min_probability": args.min_probability,
    }
    with Catalog.open(settings=settings) as catalog:
        hits = catalog.search(**query, **filters, **options)
        if args.json:
            for hit in hits:
                row = {**hit.__dict__, "price": None if hit.price is None else str(hit.price)}
                print(json.dumps(row))
        else:
            print(report.table(hits) if hits else "no results")
        if args.html:
            kind, value = next(iter(query.items()))
            shown = {"vector": args.vector_file, "image": args.image}.get(kind, value)
            details = {name: str(v) for name, v in {**filters, **options}.items() if v not in (None, False)}
            details["model"] = catalog.model
            thumb = report.thumbnail(query["image"]) if "image" in query else None
            section = report.Section(f"{kind.replace('_', ' ')}: {shown}", hits, thumb, details)
            pictures = report.thumbnails(catalog.engine, [h.image_id for h in hits], args.tenant)
            report.write_page(Path(args.html), "imgsearch results", [section], pictures)
            print(f"wrote {args.html}", file=sys.stderr)
    return 0


def _reembed(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from imgsearch import reembed
    from imgsearch.embed.allocator import retain_freed_memory
    from imgsearch.embed.model import Embedder
    from imgsearch.embed.registry import canonical_name, model_dim

    name = canonical_name(args.model)
    dim = model_dim(name)  # an unknown model fails here, before anything is registered
    if args.device:
        settings = settings.model_copy(update={"device": args.device})
    retain_freed_memory(settings)
    embedder = Embedder.from_settings(settings, name=name)
    embedder.load()
    eng = _open_engine(settings)
    try:
        model = reembed.register(eng, name, dim)
        if model.active:
            print(f"{name} is already the active model; nothing to backfill")
            return 0
        with eng.connect() as conn:
            todo = reembed.missing_count(conn, model)
        print(f"backfilling {todo} images with {name} ({dim}-d); searches keep using the active model")
        with tqdm(total=todo, desc="re-embedding", unit="img", disable=not sys.stderr.isatty()) as bar:
            result = reembed.backfill(
                eng,
                model,
                embedder.embed_images,
                batch_size=args.batch_size or settings.batch_size,
                downloads=settings.downloads(),
                on_batch=bar.update,
            )
        print(f"embedded {result.embedded}, skipped {len(result.errors)}")
        for image_id, error in list(result.errors.items())[:20]:
            print(f"  image {image_id}: {error}")
        if args.activate:
            active, requeued = reembed.activate(eng, name, requeue_missing=True)
            print(
                f"active model: {active.name} ({active.dim}-d)"
                + (f"; {requeued} images re-queued" if requeued else "")
            )
        else:
            print(f"switch with: imgsearch model activate {args.model}")
    finally:
        eng.dispose()
    return 1 if result.errors else 0


def _model(args: argparse.Namespace, settings: Settings) -> int:
    from imgsearch import reembed
    from imgsearch.embed.registry import canonical_name

    eng = _open_engine(settings)
    try:
        if args.model_command == "list":
            rows = reembed.listing(eng)
            width = max([len(r.name) for r in rows] + [5])
            print(f"{'model':<{width}}  {'dim':>5}  {'embeddings':>10}  active")
            for row in rows:
                print(
                    f"{row.name:<{width}}  {row.dim:>5}  {row.embeddings:>10}  {'yes' if row.active else ''}"
                )
        elif args.model_command == "activate":
            model, requeued = reembed.activate(
                eng, canonical_name(args.name), requeue_missing=args.requeue_missing
            )
            extra = f"; {requeued} images re-queued for it" if requeued else ""
            print(f"active model: {model.name} ({model.dim}-d){extra}")
        elif args.model_command == "reindex":
            _reindex(eng, None if args.name is None else canonical_name(args.name), args.maintenance_work_mem)
        else:
            if not args.yes:
                raise InvalidInput(
                    f"dropping deletes every embedding of {args.name!r}; pass --yes to confirm"
                )
            deleted = reembed.drop(eng, canonical_name(args.name))
            print(f"dropped model {args.name}: {deleted} embeddings deleted")
    finally:
        eng.dispose()
    return 0


def _reindex(eng: Any, name: str | None, maintenance_work_mem: str) -> None:
    from tqdm import tqdm

    from imgsearch.db import vector_index

    with eng.connect() as conn:
        model = vector_index.active_model(conn) if name is None else vector_index.get_model(conn, name)
    if model is None:
        raise NotFound("no active model" if name is None else f"model {name!r} is not registered")
    with tqdm(total=0, unit="block", desc="rebuilding", disable=not sys.stderr.isatty()) as bar:

        def show(done: int, total: int, phase: str) -> None:
            bar.total = total
            bar.set_description(phase, refresh=False)
            bar.update(done - bar.n)

        seconds = vector_index.rebuild_index(
            eng, model, maintenance_work_mem=maintenance_work_mem, progress=show
        )
    print(
        f"rebuilt the HNSW index of {model.name} (m {vector_index.HNSW_M}, "
        f"ef_construction {vector_index.HNSW_EF_CONSTRUCTION}) in {seconds:.1f} s"
    )


def _positive(text: str) -> int:
    """An argparse type: a whole number above zero."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number above 0, got {text!r}")
    return value


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

    update = commands.add_parser(
        "update",
        help="change products' price, category, currency or attributes from a feed",
        description="Apply CSV/JSONL product feeds (columns: product_id, tenant, category, price, "
        "currency, attributes as JSON) without uploading images again. An empty CSV cell keeps its "
        "field; in JSON Lines a missing key keeps it and null clears it. All or nothing: every row "
        "is checked and every product looked up first; a bad row or an unknown product exits "
        "non-zero naming its file and line, with nothing written.",
    )
    update.add_argument("feeds", nargs="+", metavar="FEED", help=".csv, .jsonl or .ndjson files")
    update.add_argument(
        "--tenant", default="default", help="tenant of rows that don't name one (default 'default')"
    )
    update.set_defaults(func=_update)

    worker = commands.add_parser(
        "worker",
        help="run an embedding worker",
        description="Run a Celery worker that embeds pending images (broker: IMGSEARCH_REDIS_URL), "
        "or with --drain embed everything pending in this process and exit.",
    )
    worker.add_argument("--concurrency", type=_positive, default=1, help="worker processes (default 1)")
    worker.add_argument("--queue", default=None, help="Celery queue (default IMGSEARCH_QUEUE or 'imgsearch')")
    worker.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: auto)")
    worker.add_argument("--batch-size", type=_positive, default=None, help="images per forward pass")
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

    remove = commands.add_parser(
        "delete",
        help="delete images, or a product with its images",
        description="Delete images by id, or a product with all its images; their embeddings go "
        "with them. All or nothing: an id that names no image (of --tenant, if given) deletes "
        "nothing and exits 3.",
    )
    remove.add_argument("image_ids", nargs="*", type=int, metavar="IMAGE_ID", help="images to delete")
    remove.add_argument("--product", metavar="PRODUCT_ID", help="delete this product and all its images")
    remove.add_argument("--tenant", default=None, help="only this tenant's images (required with --product)")
    remove.set_defaults(func=_delete)

    search = commands.add_parser(
        "search",
        help="search the catalog and print (or write as HTML) the results",
        description="Hybrid search: one query (text, image file, image id or vector file) with any "
        "filters; prints a table, or JSON lines with --json; --html writes a results page. "
        "Exit 3 when --similar-to names no embedded image, or --similar-to-product no product "
        "of --tenant with one.",
    )
    kinds = search.add_mutually_exclusive_group(required=True)
    kinds.add_argument("--text", help="text to image: describe what you look for")
    kinds.add_argument("--image", metavar="FILE", help="image to image: a picture file")
    kinds.add_argument("--similar-to", type=int, metavar="IMAGE_ID", help="more like this stored image")
    kinds.add_argument(
        "--similar-to-product",
        metavar="PRODUCT_ID",
        help="more like this product of --tenant (its images averaged; none of them in the results)",
    )
    kinds.add_argument("--vector-file", metavar="FILE", help="a query vector (.npy, JSON array or CSV)")
    search.add_argument("--tenant", help="only this tenant's images")
    search.add_argument("--category", action="append", help="category (repeat for any of several)")
    search.add_argument("--price-min", help="lowest price")
    search.add_argument("--price-max", help="highest price")
    search.add_argument(
        "--attributes", metavar="JSON", help='attributes to contain, e.g. \'{"color": "red"}\''
    )
    search.add_argument("-k", "--k", type=int, default=10, help="number of results (default 10)")
    search.add_argument("--offset", type=int, default=0, help="skip this many results first")
    search.add_argument("--group-by-product", action="store_true", help="best image per product only")
    search.add_argument("--diversity", type=float, help="MMR trade-off, 0..1 (1 = relevance only)")
    search.add_argument("--expand", type=int, metavar="M", help="query expansion with the top M results")
    search.add_argument("--min-score", type=float, help="drop hits below this cosine similarity")
    search.add_argument(
        "--min-probability", type=float, help="text queries: drop hits below this probability"
    )
    search.add_argument("--json", action="store_true", help="print one JSON object per hit")
    search.add_argument("--html", metavar="FILE", help="also write a results page with thumbnails")
    search.set_defaults(func=_search)

    re_embed = commands.add_parser(
        "reembed",
        help="backfill embeddings of a second model beside the active one",
        description="Embed every ready image with MODEL (its own HNSW index; the dimension may "
        "differ) while searches keep using the active model. Run again to catch images that became "
        "ready meanwhile, then switch with `imgsearch model activate MODEL`.",
    )
    re_embed.add_argument("--model", required=True, help="hub id or local checkpoint directory")
    re_embed.add_argument("--batch-size", type=_positive, default=None, help="images per forward pass")
    re_embed.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: auto)")
    re_embed.add_argument("--activate", action="store_true", help="switch to MODEL when the backfill is done")
    re_embed.set_defaults(func=_reembed)

    model = commands.add_parser(
        "model", help="list, activate or drop embedding models", description="Manage the catalog's models."
    )
    model_commands = model.add_subparsers(dest="model_command", required=True, metavar="COMMAND")
    model_commands.add_parser(
        "list", help="models with their dimension and embeddings", description="List models."
    )
    activate = model_commands.add_parser(
        "activate",
        help="make a backfilled model the one searches use",
        description="Switch the active model in one transaction. Refused while ready images lack "
        "its embedding, unless --requeue-missing puts them back to pending for the workers.",
    )
    activate.add_argument("name", help="model name as registered by reembed")
    activate.add_argument("--requeue-missing", action="store_true", help="re-queue images it lacks")
    drop = model_commands.add_parser(
        "drop",
        help="delete an inactive model's embeddings",
        description="Delete an inactive model's embeddings, index and registration.",
    )
    drop.add_argument("name")
    drop.add_argument("--yes", action="store_true", help="confirm the deletion")
    reindex = model_commands.add_parser(
        "reindex",
        help="rebuild a model's HNSW index with the current parameters",
        description="Rebuild a model's HNSW index with imgsearch's current parameters (printed "
        "when done) by REINDEX CONCURRENTLY: searches and writes go on, the old index serving until "
        "the new one replaces it. Indexes built by imgsearch before migration 0009 used "
        "ef_construction 64, which can leave clusters of a catalog out of a search's reach.",
    )
    reindex.add_argument("name", nargs="?", help="model name (default: the active model)")
    reindex.add_argument(
        "--maintenance-work-mem",
        default="1GB",
        metavar="SIZE",
        help="memory for the build, e.g. 512MB or 2GB (default 1GB); a graph that doesn't fit builds far slower",
    )
    model.set_defaults(func=_model)

    demo = commands.add_parser(
        "demo",
        help="ingest the bundled sample images and search them",
        description="Ingest 36 bundled sample product pictures into the database imgsearch_demo, "
        "embed them with IMGSEARCH_MODEL, run a text, an image and a filtered query, and write an "
        "HTML results page.",
    )
    demo.add_argument(
        "--html", default="imgsearch-demo.html", help="results page (default imgsearch-demo.html)"
    )
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace, Settings], int] = args.func
    try:
        settings = Settings()
        return func(args, settings)
    except ValidationError as exc:  # IMGSEARCH_* variables, or options that become them
        print(f"imgsearch: {describe_invalid(exc)}", file=sys.stderr)
        return EXIT_USAGE
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
