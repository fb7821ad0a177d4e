"""``imgsearch reembed`` and ``imgsearch model``: a second model's backfill, switches, drops, reindexes."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from imgsearch.cli._common import Subparsers, open_engine, positive
from imgsearch.errors import InvalidInput, NotFound
from imgsearch.settings import Settings


def _reembed(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from imgsearch.embed.allocator import retain_freed_memory
    from imgsearch.embed.model import Embedder
    from imgsearch.embed.registry import canonical_name, model_dim
    from imgsearch.work import reembed

    name = canonical_name(args.model)
    dim = model_dim(name)  # an unknown model fails here, before anything is registered
    if args.device:
        settings = settings.model_copy(update={"device": args.device})
    retain_freed_memory(settings)
    embedder = Embedder.from_settings(settings, name=name)
    embedder.load()
    eng = open_engine(settings)
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
        sourceless = [i for i, e in result.errors.items() if "upload its image again" in e]
        if sourceless:
            shown = ", ".join(str(i) for i in sorted(sourceless)[:10])
            print(
                f"{len(sourceless)} images need their source again (bytes dropped after embedding, or "
                f"imported as embeddings only): {shown}{' ...' if len(sourceless) > 10 else ''}"
            )
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


def _check(args: argparse.Namespace, settings: Settings) -> int:
    """Load a checkpoint with each ONNX runtime: its export, and its embeddings' cosine to torch's."""
    from imgsearch.embed.model import Embedder
    from imgsearch.embed.registry import canonical_name, split_name
    from imgsearch.errors import ModelUnavailable

    if args.name is None:
        from imgsearch.db import vector_index

        eng = open_engine(settings)
        try:
            with eng.connect() as conn:
                active = vector_index.active_model(conn)
        finally:
            eng.dispose()
        name = active.name if active is not None else settings.model
    else:
        name = canonical_name(args.name)
    checkpoint, _ = split_name(name)
    runtimes = ("onnx", "onnx-int8") if args.runtime == "all" else (args.runtime,)
    refused = 0
    print(f"checkpoint {checkpoint}; threshold {settings.runtime_min_cosine} (IMGSEARCH_RUNTIME_MIN_COSINE)")
    for runtime in runtimes:
        embedder = Embedder.from_settings(
            settings.model_copy(update={"runtime": runtime}),
            name=checkpoint + ("@onnx-int8" if runtime == "onnx-int8" else ""),
        )
        try:
            embedder.load()
        except ModelUnavailable as exc:
            refused += 1
            print(f"{runtime:<10} refused: {exc}")
            continue
        finally:
            embedder.close()
        assert embedder.quality is not None
        print(f"{runtime:<10} ok: {embedder.quality.describe()}")
    return 1 if refused else 0


def _model(args: argparse.Namespace, settings: Settings) -> int:
    from imgsearch.embed.registry import canonical_name
    from imgsearch.work import reembed

    if args.model_command == "check":
        return _check(args, settings)
    eng = open_engine(settings)
    try:
        if args.model_command == "list":
            rows = reembed.listing(eng)
            width = max([len(r.name) for r in rows] + [5])
            separate = any(r.serves_images for r in rows)
            print(f"{'model':<{width}}  {'dim':>5}  {'embeddings':>10}  {'index':<7}  active")
            for row in rows:
                active = "yes" if row.active and not separate else "text" if row.active else ""
                print(
                    f"{row.name:<{width}}  {row.dim:>5}  {row.embeddings:>10}  {row.index:<7}  "
                    f"{'images' if row.serves_images else active}"
                    + ("  (vectors from elsewhere)" if row.external else "")
                )
            for row in rows:
                if row.index != "valid" and row.embeddings:
                    print(
                        f"the HNSW index of {row.name} is {row.index}: its searches scan every row; "
                        f"build it with `imgsearch model reindex {row.name}`",
                        file=sys.stderr,
                    )
            if not rows:
                print(
                    f"(no model registered yet: {canonical_name(settings.model)} will be, at the first "
                    "embedding; set IMGSEARCH_MODEL first to choose another)"
                )
        elif args.model_command == "add":
            model = reembed.add_external(eng, args.name, args.dim, make_active=args.activate)
            state = (
                "active"
                if model.active
                else f"not active: switch with `imgsearch model activate {model.name}`"
            )
            print(f"registered {model.name} ({model.dim}-d, vectors from elsewhere); {state}")
        elif args.model_command == "activate":
            model, requeued = reembed.activate(
                eng, canonical_name(args.name), requeue_missing=args.requeue_missing, serves=args.serves
            )
            extra = f"; {requeued} images re-queued for it" if requeued else ""
            role = {"both": "active model", "text": "active model (text queries)", "image": "image queries"}
            print(f"{role[args.serves]}: {model.name} ({model.dim}-d){extra}")
            listed = reembed.listing(eng)
            if any(r.serves_images for r in listed):  # two models serve: say which serves what
                for row in listed:
                    if row.serves_images or row.active:
                        print(f"  {'image' if row.serves_images else 'text'} queries: {row.name}")
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

    from imgsearch.db import load_indexes, vector_index

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
    restored = load_indexes.restore(eng, maintenance_work_mem=maintenance_work_mem)
    if restored.names:  # an interrupted bulk import's
        print(f"built the search indexes a load left missing ({len(restored.names)}) in {restored.seconds:.1f} s")


def register(commands: Subparsers) -> None:
    re_embed = commands.add_parser(
        "reembed",
        help="backfill embeddings of a second model beside the active one",
        description="Embed every ready image with MODEL (its own HNSW index; the dimension may "
        "differ) while searches keep using the active model. Run again to catch images that became "
        "ready meanwhile, then switch with `imgsearch model activate MODEL`.",
    )
    re_embed.add_argument("--model", required=True, help="hub id or local checkpoint directory")
    re_embed.add_argument("--batch-size", type=positive, default=None, help="images per forward pass")
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
    add = model_commands.add_parser(
        "add",
        help="register a model whose vectors come from elsewhere",
        description="Register a model that imgsearch doesn't load (FashionCLIP, OpenAI or Cohere "
        "embeddings, your own model): uploads and imports bring its vectors, searches take query "
        'vectors (--vector-file, "vector" over HTTP). A text or image query on it is an error.',
    )
    add.add_argument("name", help="the model's name, e.g. patrickjohncyh/fashion-clip")
    add.add_argument("--dim", type=positive, required=True, help="the dimension of its vectors")
    add.add_argument("--activate", action="store_true", help="make it the active model now")
    activate = model_commands.add_parser(
        "activate",
        help="make a backfilled model the one searches use (or the one image queries use)",
        description="Switch the active model in one transaction, or with --for image the model image "
        "queries and more-like-this use beside it (e.g. text -> SigLIP, image -> DINOv2). Refused while "
        "ready images lack its embedding, unless --requeue-missing puts them back to pending for the workers.",
    )
    activate.add_argument("name", help="model name as registered by reembed")
    activate.add_argument("--requeue-missing", action="store_true", help="re-queue images it lacks")
    activate.add_argument(
        "--for", dest="serves", choices=("both", "text", "image"), default="both",
        help="which queries it serves: both (default: the active model), text (the active model; image "
        "queries stay with the model that served them), image (image queries and more-like-this only, "
        "beside the active model: workers embed each image with both)",
    )  # fmt: skip
    drop = model_commands.add_parser(
        "drop",
        help="delete an inactive model's embeddings",
        description="Delete an inactive model's embeddings, index and registration.",
    )
    drop.add_argument("name")
    drop.add_argument("--yes", action="store_true", help="confirm the deletion")
    check = model_commands.add_parser(
        "check",
        help="check the ONNX runtimes of a checkpoint against torch",
        description="Export the checkpoint for ONNX Runtime if it isn't yet, embed a fixed calibration "
        "set (the sample pictures, generated ones, a list of texts) through torch float32 and each "
        "runtime, and print the minimum and mean cosine between them. A runtime below "
        "IMGSEARCH_RUNTIME_MIN_COSINE is refused (exit 1), as a worker would refuse it.",
    )
    check.add_argument("name", nargs="?", help="model or checkpoint (default: the catalog's active model)")
    check.add_argument(
        "--runtime", choices=("onnx", "onnx-int8", "all"), default="all", help="which runtime (default: both)"
    )
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
