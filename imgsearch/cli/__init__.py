"""The ``imgsearch`` command, one module per command group. User mistakes print one line on stderr
and exit 2; something not found exits 3; transient faults (database unreachable) exit 75
(EX_TEMPFAIL); everything else is a bug and shows its traceback."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

import psycopg
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError, OperationalError

from imgsearch.cli import (
    boosts,
    database,
    demo,
    duplicates,
    evaluate,
    finetune,
    imports,
    indexes,
    ingest,
    interleave,
    models,
    products,
    regions,
    search,
    serve,
    tenants,
    tune,
    webhooks,
    workers,
)
from imgsearch.cli._common import EXIT_NOT_FOUND, EXIT_TEMPFAIL, EXIT_USAGE
from imgsearch.errors import ImgSearchError, NotFound, TransientError
from imgsearch.settings import Settings, describe_invalid

__all__ = ["EXIT_NOT_FOUND", "EXIT_TEMPFAIL", "EXIT_USAGE", "build_parser", "main"]

EXIT_ERROR = 1  # anything else that stopped the command
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a filter whose reader left

# in the order `imgsearch --help` lists them
GROUPS = (
    database,
    tenants,
    ingest,
    imports,
    products,
    workers,
    search,
    boosts,
    tune,
    finetune,
    interleave,
    evaluate,
    duplicates,
    models,
    indexes,
    regions,
    webhooks,
    serve,
    demo,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgsearch", description="Postgres-native image search.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(commands)
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
    except TransientError as exc:
        print(f"imgsearch: {exc}", file=sys.stderr)
        return EXIT_TEMPFAIL
    except ImgSearchError as exc:
        print(f"imgsearch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OperationalError as exc:  # the server unreachable, or gone mid-way
        print(f"imgsearch: database unavailable: {_first_line(exc.orig or exc)}", file=sys.stderr)
        return EXIT_TEMPFAIL
    except (DBAPIError, psycopg.Error) as exc:  # a statement the database refused, unforeseen here
        refused = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
        print(f"imgsearch: the database refused it: {_first_line(refused)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("imgsearch: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`imgsearch status | head -1`): as a Unix filter, end quietly. Point
        # stdout at /dev/null so the interpreter's last flush at exit can't raise it again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


if __name__ == "__main__":
    sys.exit(main())
