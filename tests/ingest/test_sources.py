"""Where ``imgsearch ingest`` finds uploads: manifests as spreadsheets and scripts write them, and
the manifests it must refuse with the line at fault (nothing is stored from a manifest that
can't be read: the CLI reads every row before it stores one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgsearch.errors import InvalidInput
from imgsearch.ingest import sources


def rows(path: Path) -> list[dict[str, object]]:
    return list(sources.collect([str(path)], tenant="fallback"))


def test_csv_with_a_byte_order_mark(tmp_path: Path) -> None:
    """Spreadsheets save "CSV UTF-8" with a byte-order mark before the header."""
    manifest = tmp_path / "products.csv"
    manifest.write_bytes("\ufeffimage,product_id,category\na.png,sku-1,bags\n".encode())
    [row] = rows(manifest)
    assert row["image"] == str(tmp_path / "a.png")
    assert (row["product_id"], row["category"], row["tenant"]) == ("sku-1", "bags", "fallback")
    assert row["_where"] == f"{manifest}:2"


def test_csv_line_numbers_count_quoted_newlines(tmp_path: Path) -> None:
    manifest = tmp_path / "products.csv"
    manifest.write_text('image,product_id,category\na.png,sku-1,"two\nlines"\nb.png,sku-2,hats\n')
    first, second = rows(manifest)
    assert first["category"] == "two\nlines" and first["_where"] == f"{manifest}:2"
    assert second["_where"] == f"{manifest}:4"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.csv", "foo,bar\n1,2\n", r"a.csv:1: the header \['foo', 'bar'\] has no 'image' column"),
        (
            "a.csv",
            "image,product_id\na.png,sku-1,extra\n",
            "a.csv:2: more values than the header has columns",
        ),
        ("a.csv", "image,product_id\n,sku-1\n", "a.csv:2: no 'image' column value"),
        ("a.csv", 'image,attributes\na.png,"{""a"": "\n', "a.csv:2: attributes are not JSON"),
        ("a.jsonl", '{"image": "a.png"}\nnot json\n', "a.jsonl:2: not JSON"),
        ("a.jsonl", '{"image": "a.png"}\n\n[1, 2]\n', "a.jsonl:3: each line must be a JSON object, got list"),
        ("a.jsonl", '"a.png"\n', "a.jsonl:1: each line must be a JSON object, got str"),
    ],
)
def test_bad_manifests_name_the_line(tmp_path: Path, name: str, content: str, message: str) -> None:
    manifest = tmp_path / name
    manifest.write_text(content)
    with pytest.raises(InvalidInput, match=message):
        rows(manifest)


def test_manifest_that_is_not_utf8(tmp_path: Path) -> None:
    manifest = tmp_path / "a.csv"
    manifest.write_bytes(b"image,tenant\na.png,ac\xffme\n")
    with pytest.raises(InvalidInput, match=r"cannot read .*a.csv: 'utf-8' codec can't decode"):
        rows(manifest)


def feed(*paths: Path) -> list[tuple[str, dict[str, object]]]:
    return list(sources.feed([str(p) for p in paths], tenant="fallback"))


def test_feed_rows_keep_what_they_leave_out(tmp_path: Path) -> None:
    """An empty CSV cell keeps its field; in JSON Lines a missing key keeps it and null clears it."""
    sheet = tmp_path / "prices.csv"
    sheet.write_bytes(
        '\ufeffproduct_id,tenant,price,attributes\nsku-1,,9.5,"{""a"": 1}"\nsku-2,acme,,\n'.encode()
    )
    lines = tmp_path / "prices.jsonl"
    lines.write_text(
        '{"product_id": "sku-3", "tenant": null, "currency": null}\n\n{"product_id": 4, "price": 2}\n'
    )
    assert feed(sheet, lines) == [
        (f"{sheet}:2", {"product_id": "sku-1", "tenant": "fallback", "price": "9.5", "attributes": {"a": 1}}),
        (f"{sheet}:3", {"product_id": "sku-2", "tenant": "acme"}),
        (f"{lines}:1", {"product_id": "sku-3", "tenant": "fallback", "currency": None}),
        (f"{lines}:3", {"product_id": 4, "price": 2, "tenant": "fallback"}),
    ]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.csv", "sku,price\n1,2\n", r"a.csv:1: the header \['sku', 'price'\] has no 'product_id' column"),
        ("a.csv", "product_id,price\nsku-1,2,3\n", "a.csv:2: more values than the header has columns"),
        ("a.csv", 'product_id,attributes\nsku-1,"{"\n', "a.csv:2: attributes are not JSON"),
        (
            "a.ndjson",
            '{"product_id": "sku-1"}\n[1]\n',
            "a.ndjson:2: each line must be a JSON object, got list",
        ),
        ("a.txt", "product_id\nsku-1\n", "a.txt: a feed is a .csv, .jsonl or .ndjson file"),
    ],
)
def test_bad_feeds_name_the_line(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InvalidInput, match=message):
        feed(path)
