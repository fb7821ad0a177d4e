"""What the command groups share: exit codes, opening the database, embedders, argument types."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from imgsearch.settings import Settings

EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_TEMPFAIL = 75  # EX_TEMPFAIL: try again later

Subparsers = Any  # argparse's _SubParsersAction, which it doesn't export


def open_engine(settings: Settings) -> Any:
    """An engine on the configured database, migrated to the latest schema."""
    from imgsearch.db import engine, migrate

    eng = engine.make_engine(engine.resolve_url(settings))
    if migrate.current(eng) != migrate.head():
        migrate.upgrade(eng)
    return eng


def embedders(settings: Settings) -> Callable[[Any], Any]:
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


def positive(text: str) -> int:
    """An argparse type: a whole number above zero."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number above 0, got {text!r}")
    return value


def seconds(text: str) -> float:
    """An argparse type: a finite number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (0 <= value < math.inf):
        raise argparse.ArgumentTypeError(f"must be a number of seconds, 0 or more, got {text!r}")
    return value
