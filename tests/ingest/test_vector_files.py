"""Reading files of embeddings (imgsearch/ingest/vector_files.py): a Parquet file read a batch ahead."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imgsearch.errors import InvalidInput
from imgsearch.ingest import vector_files


def write(path: Path, rows: int, *, group: int) -> None:
    vectors = np.random.default_rng(1).standard_normal((rows, 16)).astype(np.float32)
    table = pa.table(
        {
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), 16),
            "product_id": [f"p{i}" for i in range(rows)],
        }
    )
    pq.write_table(table, path, row_group_size=group, compression="snappy")


def readers() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name.startswith("imgsearch-read"))


def test_rows_come_in_order_and_the_reader_thread_ends_with_them(tmp_path: Path) -> None:
    path = tmp_path / "rows.parquet"
    write(path, 10_000, group=3_000)
    rows = list(vector_files.read(path))
    assert [row["product_id"] for _, row in rows] == [f"p{i}" for i in range(10_000)]
    assert [where for where, _ in rows[:2]] == [f"{path}:1", f"{path}:2"]
    assert readers() == 0
    some = vector_files.read(path)
    next(some)  # a reader left after its first row (a bad row stops an import there)
    some.close()
    assert readers() == 0


def test_a_file_broken_after_its_first_rows_is_named_with_the_rows_read(tmp_path: Path) -> None:
    """A batch that can't be decoded in the reading thread fails the read as a bad file, naming
    how far it got."""
    path = tmp_path / "broken.parquet"
    write(path, 20_000, group=5_000)
    chunk = pq.ParquetFile(path).metadata.row_group(2).column(0)
    data = bytearray(path.read_bytes())
    start = chunk.data_page_offset + 64
    data[start : start + 4096] = bytes(range(256)) * 16  # the third group's vectors, garbled
    path.write_bytes(bytes(data))
    read = 0
    with pytest.raises(InvalidInput, match=r"broken.parquet: cannot read rows after row (\d+)") as caught:
        for _ in vector_files.read(path):
            read += 1
    # the rows of the batches before the one holding the third group's first row
    assert read == 10_000 // vector_files.PARQUET_BATCH_ROWS * vector_files.PARQUET_BATCH_ROWS
    assert f"after row {read} " in str(caught.value)
    assert readers() == 0
