"""``imgsearch demo``: the bundled samples, ingested, searched and shown on a page."""

from __future__ import annotations

import argparse

from imgsearch.cli._common import Subparsers
from imgsearch.settings import Settings


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from imgsearch.demo import run

    return run(settings, html=Path(args.html))


def register(commands: Subparsers) -> None:
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
