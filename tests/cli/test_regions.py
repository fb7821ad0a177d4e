"""``imgsearch regions``: set, show and backfill, and its mistakes in one line."""

from __future__ import annotations

from pathlib import Path

from imgsearch import Catalog
from imgsearch.work import pipeline
from tests.helpers import image_bytes, run_cli


def test_regions_set_show_backfill_and_off(database_url: str, tiny_siglip: Path) -> None:
    env = {"IMGSEARCH_DATABASE_URL": database_url, "IMGSEARCH_MODEL": str(tiny_siglip)}
    with Catalog.open(database_url, model=str(tiny_siglip)) as catalog:
        for i in range(3):
            catalog.add(image_bytes(i, (40, 40)), tenant="acme", product_id=f"p{i}", category="tees" if i else "bags")
        pipeline.drain(
            catalog.engine, lambda model: catalog.embedder, batch_size=8, lease_seconds=60,
            downloads=catalog.settings.downloads(), progress=False,
        )  # fmt: skip
    off = run_cli("regions", "show", **env)
    assert off.returncode == 0, off.stderr
    assert "regions: off" in off.stdout and "0 images have 0 region rows" in off.stdout
    grid = run_cli("regions", "set", "--grid", "3", "--category", "tees", **env)
    assert grid.returncode == 0, grid.stderr
    assert "regions of category 'tees': grid 3 (18 regions)" in grid.stdout and "regions backfill" in grid.stdout
    filled = run_cli("regions", "backfill", **env)
    assert filled.returncode == 0, filled.stderr
    assert "2 images given 36 region rows" in filled.stdout
    shown = run_cli("regions", "show", **env).stdout
    assert "category 'tees': grid 3" in shown and "2 images have 36 region rows" in shown
    gone = run_cli("regions", "set", "--off", "--category", "tees", **env)
    assert gone.returncode == 0 and "regions of category 'tees': off" in gone.stdout
    assert "0 images have 0 region rows" in run_cli("regions", "show", **env).stdout


def test_regions_mistakes_are_one_line(database_url: str, tiny_siglip: Path) -> None:
    env = {"IMGSEARCH_DATABASE_URL": database_url, "IMGSEARCH_MODEL": str(tiny_siglip)}
    big = run_cli("regions", "set", "--grid", "9", **env)
    assert big.returncode != 0 and "grid must be a whole number from 2 to 4" in big.stderr
    assert "Traceback" not in big.stderr and len(big.stderr.strip().splitlines()) == 1
    both = run_cli("regions", "set", "--grid", "2", "--off", **env)
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    none = run_cli("regions", "set", **env)
    assert none.returncode == 2 and "one of the arguments --grid --detector --off is required" in none.stderr
    score = run_cli("regions", "set", "--detector", "x", "--min-score", "1.5", **env)
    assert score.returncode == 2 and "must be from 0 to 1" in score.stderr
    missing = run_cli("regions", "set", "--detector", "/nowhere/detector", **env)
    assert missing.returncode == 2 and "cannot load the detector '/nowhere/detector'" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    assert "regions: off" in run_cli("regions", "show", **env).stdout  # nothing was set
