"""``imgsearch tune``: train a tenant's query adapter (:mod:`imgsearch.learning.tuning`), list
them, activate one, roll back."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imgsearch.cli._common import Subparsers
from imgsearch.settings import Settings


def _tune(args: argparse.Namespace, settings: Settings) -> int:
    from imgsearch import Catalog
    from imgsearch.errors import InvalidInput
    from imgsearch.ingest import checks
    from imgsearch.learning import adapter, tuning

    tenant = checks.identifier(args.tenant, "tenant")
    if args.id is not None and args.action != "activate":
        raise InvalidInput("an adapter id goes with `imgsearch tune activate ID` only")
    with Catalog.open(settings=settings) as catalog:
        model = catalog.registered_model()
        if args.action == "list":
            shown = tuning.listed(catalog.engine, tenant, model)
            if not shown:
                print(f"{tenant} has no adapters for model {model.name}", file=sys.stderr)
            for info in shown:
                state = "active" if info.active else ("wins" if info.wins else "loses")
                print(f"{info.id}\tv{info.version}\t{state}\t{info.created_at:%Y-%m-%d %H:%M}\t{info.figures()}")
            return 0
        if args.action == "activate":
            if args.id is None:
                raise InvalidInput("give the adapter's id: `imgsearch tune activate ID --tenant T`")
            info = tuning.activate(catalog.engine, tenant, model, args.id)
            print(f"adapter {info.id} (v{info.version}) is active for {tenant}: {info.figures()}")
            return 0
        if args.action == "rollback":
            back = tuning.rollback(catalog.engine, tenant, model)
            print(f"{tenant}: adapter {back.id} (v{back.version}) is active again" if back else
                  f"{tenant}: no adapter is active; searches use the query vectors as they are")  # fmt: skip
            return 0
        embed = None if model.external else (lambda texts: catalog.embedder.embed_texts(texts))
        print(f"gathering {tenant}'s training pairs ...", file=sys.stderr, flush=True)
        pairs = tuning.gather(catalog.engine, model, tenant, embed, Path(args.pairs) if args.pairs else None)
        print(
            f"{len(pairs.targets)} pairs ({pairs.sources['events']} from events, {pairs.sources['titles']} "
            f"from titles, {pairs.sources['file']} from the file) over {len(pairs.product_ids)} products",
            file=sys.stderr,
            flush=True,
        )

        def epoch_done(epoch: int, top1: float) -> None:
            print(f"  round {epoch}: validation MRR {top1:.3f}", file=sys.stderr, flush=True)

        trained = adapter.train(
            pairs.queries, pairs.targets, pairs.products, pairs.groups,
            weight_decay=args.weight_decay, progress=epoch_done, judged=pairs.judged,
        )  # fmt: skip
        info = tuning.store(catalog.engine, tenant, model, trained)
        verdict = "beats the identity" if trained.wins else "does not beat the identity"
        print(f"adapter {info.id} (v{info.version}) {verdict}: {info.figures()}")
        if args.activate:
            tuning.activate(catalog.engine, tenant, model, info.id)
            print(f"adapter {info.id} is active for {tenant}")
    return 0


def register(commands: Subparsers) -> None:
    tune = commands.add_parser(
        "tune",
        help="train a tenant's query adapter from its feedback; list, activate, roll back",
        description="Train a linear map of query vectors (d x d, from the identity, held near it) on the "
        "tenant's pairs: queries and the products shoppers clicked or bought from their hits, product "
        "titles and their images, and --pairs FILE (JSON Lines of {\"text\" or \"vector\", "
        "\"product_id\"}). It is scored on held-out pairs against the identity and stored as the next "
        "version; --activate makes searches use it, and refuses, naming the figures, when it loses. "
        "Stored embeddings are never changed. `tune list`, `tune activate ID`, `tune rollback`.",
    )
    tune.add_argument("action", nargs="?", choices=["list", "activate", "rollback"], help="instead of training")
    tune.add_argument("id", nargs="?", type=int, help="the adapter to activate")
    tune.add_argument("--tenant", required=True, help="whose adapter")
    tune.add_argument("--pairs", metavar="FILE", default=None, help="more pairs, JSON Lines")
    tune.add_argument("--activate", action="store_true", help="activate it if it beats the identity")
    tune.add_argument("--weight-decay", type=float, default=1.0, help="pull toward the identity (default 1)")
    tune.set_defaults(func=_tune)
