"""Reading files of existing embeddings for a bulk import: Parquet, ``.npy`` with a CSV/JSONL of
metadata beside it, or JSON Lines with the vector in ``embedding``.

Every reader streams: Parquet a batch of rows at a time, ``.npy`` memory-mapped, text files a line
at a time, so memory stays flat in the row count. Each row comes with where it came from
(``file.parquet:5000``, the first data row being 1), which an import's errors name.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import zip_longest
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from imgsearch.errors import ConfigurationError, InvalidInput, InvalidQuery

SUFFIXES = (".parquet", ".npy", ".jsonl", ".ndjson")
METADATA_SUFFIXES = (".csv", ".jsonl", ".ndjson")
COLUMNS = (
    "embedding", "product_id", "tenant", "category", "price", "currency", "attributes", "image", "title",
    "description", "brand",
)  # fmt: skip
PARQUET_BATCH_ROWS = 4096

Row = tuple[str, dict[str, Any]]  # (where, row)
T = TypeVar("T")


def rows_of(source: Any, *, metadata: str | os.PathLike[str] | None = None) -> Iterator[Row]:
    """The rows of an import's ``source``: a path, read by its format (:func:`read`), or an
    iterable of row dicts, each named ``row i`` in errors."""
    if isinstance(source, str | os.PathLike):
        return read(source, metadata=metadata)
    if metadata is not None:
        raise InvalidQuery("metadata goes with a .npy file: give its path as the source")
    given: Iterable[dict[str, Any]] = source
    return ((f"row {i}", row) for i, row in enumerate(given))


def read(path: str | os.PathLike[str], *, metadata: str | os.PathLike[str] | None = None) -> Iterator[Row]:
    """The rows of a file of embeddings, each with the place it came from."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise InvalidInput(f"{path}: unknown kind of file; imgsearch imports {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise InvalidInput(f"{path}: no such file")
    if suffix == ".npy":
        if metadata is None:
            raise InvalidInput(
                f"{path}: a .npy file needs its metadata beside it (--metadata FILE.csv|.jsonl)"
            )
        return _urls_only(_npy(path, Path(metadata)))
    if metadata is not None:
        raise InvalidInput(f"{path}: --metadata goes with a .npy file only")
    if suffix == ".parquet":
        return _urls_only(_parquet(path))
    return _urls_only(_jsonl(path))


def _urls_only(rows: Iterator[Row]) -> Iterator[Row]:
    """An ``image`` in a file is the picture's URL (kept as the image's URI): never a path on the
    machine that runs the import."""
    from imgsearch.ingest.images import is_url

    for where, row in rows:
        image = row.get("image")
        if image is not None and not is_url(image):
            raise InvalidInput(f"{where}: image must be an http(s) URL, got {str(image)[:80]!r}")
        yield where, row


def _parquet(path: Path) -> Iterator[Row]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ConfigurationError("reading Parquet needs pyarrow: pip install 'pg-imgsearch[import]'") from exc
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise InvalidInput(f"{path}: not a readable Parquet file ({exc})") from exc
    names = set(parquet.schema_arrow.names)
    if "embedding" not in names or "product_id" not in names:
        raise InvalidInput(
            f"{path}: a Parquet file needs the columns embedding and product_id, has {sorted(names)}"
        )
    unknown = sorted(names - set(COLUMNS))
    if unknown:
        raise InvalidInput(f"{path}: unknown columns {unknown}; allowed: {list(COLUMNS)}")
    line, prefix = 0, f"{path}:"
    try:
        for batch in _read_ahead(parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS)):
            columns = {name: batch.column(name) for name in batch.schema.names}
            vectors = _parquet_vectors(columns.pop("embedding"))
            fields = list(columns)
            values_of = zip(*(column.to_pylist() for column in columns.values()), strict=True)
            for vector, values in zip(vectors, values_of, strict=True):
                line += 1
                where = prefix + str(line)
                row: dict[str, Any] = dict(zip(fields, values, strict=True))
                row["embedding"] = vector
                if isinstance(row.get("attributes"), str):
                    row["attributes"] = _json_object(row["attributes"], where)
                yield where, row
    except (pa.ArrowException, OSError) as exc:
        raise InvalidInput(f"{path}: cannot read rows after row {line} ({exc})") from exc


def _read_ahead(batches: Iterator[T]) -> Iterator[T]:
    """Each of ``batches`` while the next is read in a thread of its own: pyarrow reads and
    decodes a batch without holding the GIL, so a file's next rows come while this one's are
    checked (a bulk import: 0.4 of its 3 s of checking 100,000 rows of 768-d vectors)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="imgsearch-read") as pool:
        coming = pool.submit(next, batches, None)
        while (batch := coming.result()) is not None:
            coming = pool.submit(next, batches, None)
            yield batch


def _parquet_vectors(column: Any) -> list[Any]:
    """A list column of numbers as one numpy row per row (None for a null), without a Python float
    per number when the rows have one length."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if (
        not pa.types.is_list(column.type)
        and not pa.types.is_large_list(column.type)
        and not pa.types.is_fixed_size_list(column.type)
    ):
        values: list[Any] = column.to_pylist()  # not a list: each value fails the check, with its row
        return values
    if column.null_count == 0 and len(column):
        lengths = column.value_lengths().to_numpy()
        if (lengths == lengths[0]).all():
            flat = column.flatten().to_numpy(zero_copy_only=False)
            return list(np.asarray(flat, dtype=np.float32).reshape(len(column), int(lengths[0])))
    rows: list[Any] = column.to_pylist()
    return rows


def _npy(path: Path, metadata: Path) -> Iterator[Row]:
    try:
        vectors = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{path}: not a readable .npy file ({exc})") from exc
    if vectors.ndim != 2:
        raise InvalidInput(f"{path}: holds an array of shape {vectors.shape}; expected rows of vectors (2-d)")
    suffix = metadata.suffix.lower()
    if suffix not in METADATA_SUFFIXES:
        raise InvalidInput(f"{metadata}: metadata must be .csv, .jsonl or .ndjson")
    if not metadata.is_file():
        raise InvalidInput(f"{metadata}: no such file")
    rows = _csv(metadata) if suffix == ".csv" else _jsonl(metadata, vectors_inside=False)
    for number, (vector, entry) in enumerate(zip_longest(vectors, rows), start=1):
        if entry is None:
            raise InvalidInput(f"{metadata}: has {number - 1} rows, {path} has {len(vectors)} vectors")
        if vector is None:
            raise InvalidInput(f"{metadata}: has more rows than the {len(vectors)} vectors of {path}")
        where, row = entry
        if "embedding" in row:
            raise InvalidInput(f"{where}: the metadata of a .npy file has no embedding column")
        yield f"{path}:{number}", {**row, "embedding": np.asarray(vector, dtype=np.float32)}


def _csv(path: Path) -> Iterator[Row]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames:
                raise InvalidInput(f"{path}: empty; a CSV needs a header")
            unknown = sorted(set(reader.fieldnames) - set(COLUMNS))
            if unknown:
                raise InvalidInput(f"{path}: unknown columns {unknown}; allowed: {list(COLUMNS)}")
            for line, record in enumerate(reader, start=2):
                where = f"{path}:{line}"
                row: dict[str, Any] = {key: value for key, value in record.items() if value not in ("", None)}
                if None in record:
                    raise InvalidInput(f"{where}: more cells than the header has columns")
                if "attributes" in row:
                    row["attributes"] = _json_object(row["attributes"], where)
                yield where, row
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except csv.Error as exc:
        raise InvalidInput(f"{path}: not a readable CSV ({exc})") from exc


def _jsonl(path: Path, *, vectors_inside: bool = True) -> Iterator[Row]:
    try:
        with open(path, encoding="utf-8") as handle:
            for line, text in enumerate(handle, start=1):
                where = f"{path}:{line}"
                if not text.strip():
                    continue
                try:
                    row = json.loads(text)
                except ValueError as exc:
                    raise InvalidInput(f"{where}: not a JSON object ({exc})") from exc
                if not isinstance(row, dict):
                    raise InvalidInput(f"{where}: each line must be a JSON object, got {type(row).__name__}")
                if vectors_inside and "embedding" not in row:
                    raise InvalidInput(f"{where}: no embedding")
                yield where, row
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def _json_object(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"{where}: attributes must be a JSON object ({exc})") from exc
