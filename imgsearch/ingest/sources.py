"""Files the command line reads rows from.

``imgsearch ingest`` takes uploads: image files, folders (recursively) and manifests (CSV or JSON
Lines with an ``image`` path or URL plus tenant, product_id, category, price, currency and
attributes). ``imgsearch update`` takes product feeds in the same two formats: a ``product_id``
and the fields to set."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from imgsearch.errors import InvalidInput
from imgsearch.ingest.images import is_url

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
MANIFEST_SUFFIXES = {".csv", ".jsonl", ".ndjson"}


def _records(path: Path, required: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Each record of a CSV or JSON Lines file with the line it starts on."""
    # utf-8-sig: spreadsheets save "CSV UTF-8" with a byte-order mark before the header
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            if path.suffix.lower() == ".csv":
                yield from _csv_records(path, handle, required)
            else:
                yield from _json_lines(path, handle)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InvalidInput(f"cannot read {path}: {exc}") from exc


def _csv_records(path: Path, handle: IO[str], required: str) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(handle)
    if reader.fieldnames is not None and required not in reader.fieldnames:
        raise InvalidInput(f"{path}:1: the header {reader.fieldnames} has no {required!r} column")
    start = reader.line_num + 1  # a quoted value may span lines: a row is named by its first
    for record in reader:
        line, start = start, reader.line_num + 1
        if None in record:
            raise InvalidInput(f"{path}:{line}: more values than the header has columns")
        yield line, dict(record)


def _json_lines(path: Path, handle: IO[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    for line, text in enumerate(handle, start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{path}:{line}: not JSON: {exc}") from exc
        if not isinstance(record, dict):
            raise InvalidInput(f"{path}:{line}: each line must be a JSON object, got {type(record).__name__}")
        yield line, record


def _given(path: Path, line: int, record: dict[str, Any], *, nulls: bool = False) -> dict[str, Any]:
    """The values a record gives: an empty CSV cell gives none, nor does JSON null unless
    ``nulls`` (a feed's way to clear a field); attributes in a CSV cell are JSON text."""
    row: dict[str, Any] = {k: v for k, v in record.items() if v != "" and (v is not None or nulls)}
    if isinstance(row.get("attributes"), str):
        try:
            row["attributes"] = json.loads(row["attributes"])
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{path}:{line}: attributes are not JSON: {exc}") from exc
    return row


def _from_manifest(path: Path, line: int, record: dict[str, Any]) -> dict[str, Any]:
    image = record.pop("image", None)
    if not image:
        raise InvalidInput(f"{path}:{line}: no 'image' column value")
    row = _given(path, line, record)
    row["image"] = str(image) if is_url(image) else str((path.parent / str(image)).resolve())
    row["_where"] = f"{path}:{line}"
    return row


def collect(paths: list[str], *, tenant: str, category: str | None = None) -> Iterator[dict[str, Any]]:
    """Upload rows for the given files, folders and manifests (``_where`` names each row's origin)."""
    for name in paths:
        path = Path(name).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
            for line, record in _records(path, "image"):
                row = _from_manifest(path, line, record)
                row.setdefault("tenant", tenant)
                if category is not None:
                    row.setdefault("category", category)
                yield row
            continue
        elif path.is_file():
            files = [path]
        else:
            raise InvalidInput(f"no such file or folder: {name}")
        for file in files:
            row = {"image": str(file), "tenant": tenant, "product_id": file.stem, "_where": str(file)}
            if category is not None:
                row["category"] = category
            yield row


def feed(paths: list[str], *, tenant: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Product changes from CSV or JSON Lines feeds, each with where it comes from ("file:line").

    A row names a ``product_id`` (and a ``tenant``, else ``tenant``) and the fields to set. A
    column a CSV row leaves empty keeps its value; in JSON Lines a missing key keeps it and
    ``null`` clears it."""
    for name in paths:
        path = Path(name).expanduser()
        if not path.is_file():
            raise InvalidInput(f"no such file: {name}")
        if path.suffix.lower() not in MANIFEST_SUFFIXES:
            raise InvalidInput(f"{name}: a feed is a .csv, .jsonl or .ndjson file")
        is_csv = path.suffix.lower() == ".csv"
        for line, record in _records(path, "product_id"):
            row = _given(path, line, record, nulls=not is_csv)
            if row.get("tenant") is None:
                row["tenant"] = tenant
            yield f"{path}:{line}", row
