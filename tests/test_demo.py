"""`imgsearch demo` (what `make demo` runs): the bundled samples ingested, embedded and searched on
the embedded server, an HTML page written; a clear one-line stop when the model can't be had."""

from __future__ import annotations

import csv
from decimal import Decimal
from pathlib import Path

from imgsearch.demo import SAMPLES
from tests.cli.test_search import Page
from tests.helpers import run_cli


def test_demo_ingests_searches_and_writes_a_page(
    pg_home: Path, tiny_siglip: Path, tiny_clip: Path, tmp_path: Path
) -> None:
    page = tmp_path / "demo.html"
    env = {"IMGSEARCH_HOME": str(pg_home), "IMGSEARCH_MODEL": str(tiny_siglip)}
    run = run_cli("demo", "--html", str(page), **env)
    assert run.returncode == 0, run.stderr
    assert "sample images: 36 (36 new, 0 already stored)" in run.stdout
    assert "embedded 36, failed 0" in run.stdout
    assert "imgsearch_demo" in run.stdout  # its own database, beside any real catalog

    parsed = Page()
    parsed.feed(page.read_text())
    assert len(parsed.sections) == 4 and len(parsed.hits) == 15 + 3
    assert parsed.sections[0].startswith("text:") and parsed.sections[1].startswith("image:")
    # the last query's words read as filters: the three mugs up to 12 EUR
    assert parsed.sections[3] == "text: 'mugs under 12 EUR', read as category mugs, price_max 12"
    assert sorted(hit["product"] for hit in parsed.hits[15:]) == ["mug-blue", "mug-red", "mug-white"]
    with (SAMPLES / "manifest.csv").open(newline="") as handle:
        products = {row["product_id"]: row for row in csv.DictReader(handle)}
    filtered = parsed.hits[10:15]
    for hit in filtered:
        assert hit["category"] in ("t-shirts", "caps", "sneakers") and Decimal(hit["price"]) <= 25
        assert products[hit["product"]]["category"] == hit["category"]
    assert all(hit["src"].startswith("data:image/jpeg;base64,") for hit in parsed.hits)

    again = run_cli("demo", "--html", str(page), **env)
    assert "sample images: 36 (0 new, 36 already stored)" in again.stdout  # re-runnable

    switched = run_cli("demo", "--html", str(page), **{**env, "IMGSEARCH_MODEL": str(tiny_clip)})
    assert switched.returncode == 0, switched.stderr
    assert "starting it afresh" in switched.stdout and "36 new" in switched.stdout


def test_demo_without_the_model_stops_with_one_clear_line(tmp_path: Path) -> None:
    run = run_cli(
        "demo",
        "--html",
        str(tmp_path / "x.html"),
        IMGSEARCH_HOME=str(tmp_path / "home"),
        HF_HOME=str(tmp_path / "hf"),
    )
    assert run.returncode == 2
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert "google/siglip-base-patch16-224" in run.stderr
    assert "set IMGSEARCH_MODEL=/path/to/checkpoint" in run.stderr
    assert (
        not (tmp_path / "home").exists() and not (tmp_path / "x.html").exists()
    )  # nothing started or written


def test_demo_refuses_a_results_page_it_could_not_write_before_starting(tmp_path: Path) -> None:
    page = tmp_path / "missing" / "demo.html"
    run = run_cli(
        "demo", "--html", str(page), IMGSEARCH_HOME=str(tmp_path / "home"), HF_HOME=str(tmp_path / "hf")
    )
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.strip() == f"imgsearch: cannot write the results page {page}: no folder {page.parent}"
    assert not (tmp_path / "home").exists()  # no server started, nothing stored
