"""`imgsearch search` driven as a subprocess over the bundled sample catalog: filters, table, JSON,
the HTML results page, and user mistakes as one line."""

from __future__ import annotations

import base64
import csv
import io
import json
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import text

from imgsearch import Catalog
from imgsearch.demo import SAMPLES
from tests.conftest import new_database
from tests.helpers import run_cli

MANIFEST = SAMPLES / "manifest.csv"


@pytest.fixture(scope="module")
def shop_url(server_url: str, template_db: str) -> str:
    """One catalog for the module: the tests only read it."""
    return new_database(server_url, template_db)


@pytest.fixture(scope="module")
def shop(shop_url: str, tiny_siglip: Path) -> dict[str, str]:
    """Settings of a catalog holding the 36 sample images of tenant 'shop', embedded by the CLI."""
    env = {"IMGSEARCH_DATABASE_URL": shop_url, "IMGSEARCH_MODEL": str(tiny_siglip)}
    run = run_cli("ingest", str(MANIFEST), "--tenant", "shop", **env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[:2] == ["added 36, duplicates skipped 0", "embedded 36, failed 0"]
    return env


def manifest() -> list[dict[str, str]]:
    with MANIFEST.open(newline="") as handle:
        return list(csv.DictReader(handle))


class Page(HTMLParser):
    """The hits of a results page: each <li class="hit"> with its image and its fields."""

    def __init__(self) -> None:
        super().__init__()
        self.hits: list[dict[str, str]] = []
        self.sections: list[str] = []
        self._field: str | None = None
        self._in_h2 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "li" and attributes.get("class") == "hit":
            self.hits.append(
                {"image_id": attributes["data-image-id"] or "", "rank": attributes["data-rank"] or ""}
            )
        elif tag == "img" and self.hits and attributes.get("alt", "").startswith("image "):
            self.hits[-1]["src"] = attributes["src"] or ""
        elif tag == "dd" and self.hits:
            self._field = attributes.get("class")
        elif tag == "h2":
            self._in_h2 = True

    def handle_data(self, data: str) -> None:
        if self._field is not None:
            self.hits[-1][self._field] = data
            self._field = None
        elif self._in_h2:
            self.sections.append(data)
            self._in_h2 = False


def test_search_filters_match_the_library_as_table_json_and_html(
    shop: dict[str, str], shop_url: str, tmp_path: Path
) -> None:
    filters = ["--tenant", "shop", "--category", "mugs", "--category", "caps", "--price-max", "20"]
    page = tmp_path / "results.html"
    run = run_cli(
        "search", "--text", "a red mug", "--no-parse", *filters, "-k", "4", "--json", "--html", str(page), **shop
    )
    assert run.returncode == 0, run.stderr
    hits = [json.loads(line) for line in run.stdout.splitlines()]

    matching = [r for r in manifest() if r["category"] in ("mugs", "caps") and Decimal(r["price"]) <= 20]
    assert len(hits) == min(4, len(matching))
    assert {h["product_id"] for h in hits} <= {r["product_id"] for r in matching}
    assert all(h["tenant"] == "shop" and Decimal(h["price"]) <= 20 for h in hits)
    assert all(0 < h["probability"] < 1 for h in hits)  # text queries on SigLIP carry probabilities
    with Catalog.open(shop_url) as catalog:
        library = catalog.search(
            text="a red mug", tenant="shop", category=["mugs", "caps"], price_max=20, k=4, parse=False
        )
    assert [h["image_id"] for h in hits] == [h.image_id for h in library]

    parsed = Page()
    parsed.feed(page.read_text())
    assert parsed.sections == ["text: a red mug"]
    assert [int(h["image_id"]) for h in parsed.hits] == [h["image_id"] for h in hits]
    for shown, hit in zip(parsed.hits, hits, strict=True):
        assert shown["product"] == hit["product_id"] and shown["price"] == f"{Decimal(hit['price']):.2f}"
        assert shown["category"] in ("mugs", "caps") and shown["score"] == f"{hit['score']:.4f}"
        prefix = "data:image/jpeg;base64,"
        assert shown["src"].startswith(prefix)
        thumb = Image.open(io.BytesIO(base64.b64decode(shown["src"][len(prefix) :])))
        assert thumb.format == "JPEG" and max(thumb.size) <= 192

    table = run_cli("search", "--text", "a red mug", "--no-parse", *filters, "-k", "4", **shop)
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "#",
        "image",
        "product",
        "tenant",
        "category",
        "price",
        "distance",
        "score",
        "prob",
    ]
    assert [line.split()[2] for line in lines[1:]] == [h["product_id"] for h in hits]
    # the words read as filters by default: "red" is a colour of the shop's products
    understood = run_cli("search", "--text", "a red mug", *filters, "-k", "4", "--json", **shop)
    # (the category given wins over "mug": the word stays in the text)
    assert 'understood: {"attributes": {"color": "red"}}' in understood.stderr
    assert {json.loads(line)["product_id"] for line in understood.stdout.splitlines()} == {"mug-red", "cap-red"}


def test_search_by_image_similar_and_vector_file(shop: dict[str, str], shop_url: str, tmp_path: Path) -> None:
    query = SAMPLES / "queries" / "red-mug.png"
    by_image = run_cli("search", "--image", str(query), "--attributes", '{"color": "red"}', "--json", **shop)
    assert by_image.returncode == 0, by_image.stderr
    red = [json.loads(line) for line in by_image.stdout.splitlines()]
    assert len(red) == 6 and all(h["product_id"].endswith("-red") for h in red)  # one red item per kind

    with Catalog.open(shop_url) as catalog:
        first = catalog.search(vector=np.ones(catalog.dim), k=1)[0]
        (vector,) = catalog.embedder.embed_texts(["a cap"])
    similar = run_cli("search", "--similar-to", str(first.image_id), "-k", "5", "--json", **shop)
    ids = [json.loads(line)["image_id"] for line in similar.stdout.splitlines()]
    assert len(ids) == 5 and first.image_id not in ids  # "more like this" leaves the item out

    by_product = run_cli(
        "search", "--similar-to-product", "mug-red", "--tenant", "shop", "-k", "5", "--json", **shop
    )
    products = [json.loads(line)["product_id"] for line in by_product.stdout.splitlines()]
    assert by_product.returncode == 0 and len(products) == 5 and "mug-red" not in products
    unknown = run_cli("search", "--similar-to-product", "mug-plaid", "--tenant", "shop", **shop)
    assert (unknown.returncode, unknown.stderr.strip()) == (
        3,
        "imgsearch: tenant 'shop' has no product 'mug-plaid'",
    )
    no_tenant = run_cli("search", "--similar-to-product", "mug-red", **shop)
    assert no_tenant.returncode == 2 and "similar_to_product needs tenant=" in no_tenant.stderr

    np.save(tmp_path / "q.npy", vector)
    (tmp_path / "q.json").write_text(json.dumps([float(v) for v in vector]))
    from_npy = run_cli("search", "--vector-file", str(tmp_path / "q.npy"), "--json", **shop)
    from_json = run_cli("search", "--vector-file", str(tmp_path / "q.json"), "--json", **shop)
    from_text = run_cli("search", "--text", "a cap", "--no-parse", "--json", **shop)
    ids_of = [
        [json.loads(line)["image_id"] for line in r.stdout.splitlines()]
        for r in (from_npy, from_json, from_text)
    ]
    assert ids_of[0] == ids_of[1] == ids_of[2] and len(ids_of[0]) == 10


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--attributes", "not json"], 2, "--attributes must be a JSON object"),
        (["--attributes", "[1, 2]"], 2, "--attributes must be a JSON object"),
        (["--price-min", "cheap"], 2, "price_min"),
        (["-k", "0"], 2, "k must be"),
        (
            ["--min-probability", "0.5", "--category", "mugs"],
            2,
            "min_probability applies to text queries only",
        ),
    ],
)
def test_search_mistakes_are_one_line(
    shop: dict[str, str], tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    (tmp_path / "v.json").write_text(json.dumps([0.1] * 32))
    run = run_cli("search", "--vector-file", str(tmp_path / "v.json"), *args, **shop)
    assert run.returncode == code
    assert len(run.stderr.strip().splitlines()) == 1 and message in run.stderr, run.stderr
    assert "Traceback" not in run.stderr


def test_unusable_vector_file_and_results_page_are_one_line(shop: dict[str, str], tmp_path: Path) -> None:
    np.save(tmp_path / "matrix.npy", np.ones((2, 16)))
    matrix = run_cli("search", "--vector-file", str(tmp_path / "matrix.npy"), **shop)
    assert matrix.returncode == 2
    assert matrix.stderr.strip().endswith("matrix.npy holds an array of shape (2, 16); expected one vector")
    (tmp_path / "v.json").write_text(json.dumps([0.1] * 32))
    page = run_cli("search", "--vector-file", str(tmp_path / "v.json"), "--html", str(tmp_path), **shop)
    assert page.returncode == 2 and page.stdout == ""  # refused before searching
    assert page.stderr.strip() == f"imgsearch: cannot write the results page {tmp_path}: Is a directory"
    nowhere = tmp_path / "missing" / "r.html"
    page = run_cli("search", "--similar-to", "987654", "--html", str(nowhere), **shop)  # not looked up
    assert page.returncode == 2 and page.stdout == ""
    assert (
        page.stderr.strip()
        == f"imgsearch: cannot write the results page {nowhere}: no folder {nowhere.parent}"
    )


def test_search_missing_things_and_injection(shop: dict[str, str], shop_url: str, tmp_path: Path) -> None:
    missing = run_cli("search", "--similar-to", "987654", **shop)
    assert missing.returncode == 3 and missing.stderr.strip() == "imgsearch: no embedded image with id 987654"
    no_file = run_cli("search", "--image", str(tmp_path / "none.png"), **shop)
    assert no_file.returncode == 2 and "no such image file" in no_file.stderr
    (tmp_path / "short.json").write_text("[1, 2, 3]")
    short = run_cli("search", "--vector-file", str(tmp_path / "short.json"), **shop)
    assert short.returncode == 2 and "query vector has 3 dimensions, expected 32" in short.stderr
    (tmp_path / "nan.txt").write_text(", ".join(["nan"] * 32))
    nan = run_cli("search", "--vector-file", str(tmp_path / "nan.txt"), **shop)
    assert nan.returncode == 2 and "query vector" in nan.stderr, nan.stderr
    no_query = run_cli("search", "--tenant", "shop", **shop)
    assert (
        no_query.returncode == 2
        and "one of the arguments --text --image --similar-to --similar-to-product --vector-file"
        in no_query.stderr
    )

    evil = "x'); DROP TABLE imgsearch.images; --"
    run = run_cli(
        "search",
        "--text",
        evil,
        "--tenant",
        evil,
        "--category",
        evil,
        "--attributes",
        json.dumps({evil: evil}),
        **shop,
    )
    assert run.returncode == 0 and run.stdout.strip() == "no results"
    with Catalog.open(shop_url) as catalog, catalog.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM imgsearch.images")).scalar() == 36


def test_status_after_ingest(shop: dict[str, str]) -> None:
    run = run_cli("status", **shop, IMGSEARCH_REDIS_URL="redis://127.0.0.1:1/0")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "images: pending 0, embedding 0, ready 36, failed 0"
    assert lines[1] == "queue 'imgsearch': broker unreachable"
    assert lines[2] == "oldest pending: none"
    assert lines[3] == "workers answering search_text: 0"


def test_empty_huge_and_unknown_inputs_are_one_line(shop: dict[str, str], tmp_path: Path) -> None:
    empty = run_cli("search", "--text", "", **shop)
    assert empty.returncode == 2 and "non-empty string" in empty.stderr
    big = tmp_path / "big.png"
    big.write_bytes((SAMPLES / "queries" / "red-mug.png").read_bytes() + b"\0" * 4096)
    huge = run_cli("search", "--image", str(big), **shop, IMGSEARCH_MAX_IMAGE_BYTES="4096")
    assert huge.returncode == 2 and "4096-byte limit" in huge.stderr
    empty_file = tmp_path / "empty.png"
    empty_file.write_bytes(b"")
    zero = run_cli("search", "--image", str(empty_file), **shop)
    assert zero.returncode == 2 and "empty" in zero.stderr
    unknown = run_cli("reembed", "--model", str(tmp_path / "no-such-model"), **shop)
    assert unknown.returncode == 2 and "unknown model" in unknown.stderr
    for run in (empty, huge, zero, unknown):
        assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr, run.stderr


def test_a_box_searches_with_that_region_of_the_image(shop: dict[str, str], tmp_path: Path) -> None:
    from PIL import Image

    sample = SAMPLES / "images" / "mug-red.png"
    with Image.open(sample) as image:
        width, height = image.size
        image.crop((0, 0, width // 2, height // 2)).save(tmp_path / "corner.png")
    boxed = run_cli(
        "search", "--image", str(sample), "--box", f"0,0,{width // 2},{height // 2}", "--json", **shop
    )
    cropped = run_cli("search", "--image", str(tmp_path / "corner.png"), "--json", **shop)
    assert boxed.returncode == 0, boxed.stderr
    assert cropped.returncode == 0, cropped.stderr
    assert boxed.stdout == cropped.stdout
    whole = run_cli("search", "--image", str(sample), "--json", **shop)
    assert whole.stdout != boxed.stdout
    for args, message in (
        (["--text", "mug", "--box", "0,0,4,4"], "--box applies to --image queries only"),
        (["--image", str(sample), "--box", "0,0,x,4"], "--box must be X0,Y0,X1,Y1"),
        (["--image", str(sample), "--box", f"0,0,{width + 1},4"], "is not a region of the"),
    ):
        bad = run_cli("search", *args, **shop)
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
