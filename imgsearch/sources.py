"""Where ``imgsearch ingest`` finds uploads: image files, folders (recursively) and manifests
(CSV or JSON Lines with an ``image`` path or URL plus tenant, product_id, category, price,
currency and attributes)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from imgsearch.errors import InvalidInput
from imgsearch.images import is_url

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
MANIFEST_SUFFIXES = {".csv", ".jsonl", ".ndjson"}


def _manifest_rows(path: Path) -> Iterator[dict[str, Any]]:
    # utf-8-sig: spreadsheets save "CSV UTF-8" with a byte-order mark before the header
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            if path.suffix.lower() == ".csv":
                yield from _csv_rows(path, handle)
            else:
                yield from _json_lines(path, handle)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InvalidInput(f"cannot read manifest {path}: {exc}") from exc


def _csv_rows(path: Path, handle: IO[str]) -> Iterator[dict[str, Any]]:
    reader = csv.DictReader(handle)
    if reader.fieldnames is not None and "image" not in reader.fieldnames:
        raise InvalidInput(f"{path}:1: the header {reader.fieldnames} has no 'image' column")
    start = reader.line_num + 1  # a quoted value may span lines: a row is named by its first
    for record in reader:
        line, start = start, reader.line_num + 1
        if None in record:
            raise InvalidInput(f"{path}:{line}: more values than the header has columns")
        yield _from_manifest(path, line, dict(record))


def _json_lines(path: Path, handle: IO[str]) -> Iterator[dict[str, Any]]:
    for line, text in enumerate(handle, start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{path}:{line}: not JSON: {exc}") from exc
        if not isinstance(record, dict):
            raise InvalidInput(f"{path}:{line}: each line must be a JSON object, got {type(record).__name__}")
        yield _from_manifest(path, line, record)


def _from_manifest(path: Path, line: int, record: dict[str, Any]) -> dict[str, Any]:
    image = record.pop("image", None)
    if not image:
        raise InvalidInput(f"{path}:{line}: no 'image' column value")
    row: dict[str, Any] = {k: v for k, v in record.items() if v not in (None, "")}
    if isinstance(row.get("attributes"), str):
        try:
            row["attributes"] = json.loads(row["attributes"])
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{path}:{line}: attributes are not JSON: {exc}") from exc
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
            for row in _manifest_rows(path):
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
