"""Where ``imgsearch ingest`` finds uploads: image files, folders (recursively) and manifests
(CSV or JSON Lines with an ``image`` path or URL plus tenant, product_id, category, price,
currency and attributes)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from imgsearch.errors import InvalidInput
from imgsearch.images import is_url

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
MANIFEST_SUFFIXES = {".csv", ".jsonl", ".ndjson"}


def _manifest_rows(path: Path) -> Iterator[dict[str, Any]]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            if path.suffix.lower() == ".csv":
                records: Iterator[dict[str, Any]] = iter(csv.DictReader(handle))
            else:
                records = (json.loads(line) for line in handle if line.strip())
            for number, record in enumerate(records, start=2 if path.suffix.lower() == ".csv" else 1):
                yield _from_manifest(path, number, dict(record))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as exc:
        raise InvalidInput(f"cannot read manifest {path}: {exc}") from exc


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
