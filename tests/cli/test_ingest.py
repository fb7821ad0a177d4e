"""`imgsearch ingest`: folders and manifests in, a summary out, embedding in-process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from imgsearch import Catalog
from tests.helpers import cli_environment, image_bytes, run_cli


def run_ingest(database_url: str, model: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("ingest", *args, IMGSEARCH_DATABASE_URL=database_url, IMGSEARCH_MODEL=str(model))


def test_ingest_folder_embeds_in_process_and_summarises(
    database_url: str, tiny_siglip: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i in range(5):
        (folder / f"shoe{i}.png").write_bytes(image_bytes(i))
    (folder / "sub" / "copy.png").write_bytes(image_bytes(0))  # shoe0's bytes: a photo two products share
    (folder / "sub" / "fake.jpg").write_bytes(b"this is not an image")
    truncated = image_bytes(9, size=(200, 200), fmt="JPEG")
    (folder / "truncated.jpg").write_bytes(truncated[: len(truncated) // 2])
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    Catalog.open(database_url, model=str(tiny_siglip)).close()

    run = run_ingest(database_url, tiny_siglip, str(folder), "--tenant", "acme", "--category", "shoes")
    assert run.returncode == 1, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "added 6, duplicates skipped 0, shared with another product 1"  # copy: a product of its own
    assert lines[1] == "embedded 5, failed 1"
    assert lines[2] == "failed 2:"
    assert any("fake.jpg: not a recognised image format" in line for line in lines[3:])
    assert any("cannot decode JPEG" in line for line in lines[3:])
    with Catalog.open(database_url) as catalog:
        hits = catalog.search(similar_to=catalog.search(vector=[1.0] * catalog.dim, k=1)[0].image_id, k=10)
        assert {h.category for h in hits} == {"shoes"} and {h.tenant for h in hits} == {"acme"}


def test_ingest_manifests(database_url: str, tiny_siglip: Path, tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    for i in range(3):
        (tmp_path / "img" / f"{i}.png").write_bytes(image_bytes(20 + i))
    csv_file = tmp_path / "products.csv"
    csv_file.write_text(
        "image,tenant,product_id,category,price,attributes\n"
        'img/0.png,acme,sku-0,bags,19.5,"{""color"": ""red""}"\n'
        "img/1.png,globex,sku-1,hats,5,\n"
    )
    jsonl = tmp_path / "more.jsonl"
    jsonl.write_text(json.dumps({"image": "img/2.png", "product_id": "sku-2", "price": 7}) + "\n")

    run = run_ingest(database_url, tiny_siglip, str(csv_file), str(jsonl), "--tenant", "fallback")
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.splitlines()[:2] == ["added 3, duplicates skipped 0", "embedded 3, failed 0"]
    with Catalog.open(database_url) as catalog:
        by_sku = {}
        for tenant in ("acme", "globex", "fallback"):
            for hit in catalog.search(vector=[1.0] * catalog.dim, tenant=tenant, k=5):
                by_sku[hit.product_id] = catalog.get(hit.image_id)
    assert by_sku["sku-0"].tenant == "acme" and by_sku["sku-0"].attributes == {"color": "red"}
    assert str(by_sku["sku-0"].price) == "19.5000" and by_sku["sku-1"].category == "hats"
    assert by_sku["sku-2"].tenant == "fallback" and by_sku["sku-2"].state == "ready"


def test_a_manifest_whose_rows_disagree_on_a_product_stores_nothing(
    database_url: str, tiny_siglip: Path, tmp_path: Path
) -> None:
    """Two photos of one product are two rows; rows that give it different prices are one error
    naming both lines, before anything is stored. Rows that agree (or leave a field out) merge."""
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(image_bytes(30 + i))
    manifest = tmp_path / "feed.csv"
    manifest.write_text(
        "image,product_id,category,price\n0.png,shirt,tops,19.9\n1.png,shirt,,19.90\n2.png,shirt,tops,24\n"
    )
    run = run_ingest(database_url, tiny_siglip, str(manifest), "--tenant", "acme")
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.strip() == (
        f"imgsearch: {manifest}:4: price of product 'shirt' of tenant 'acme' is 24 here, but 19.9 in {manifest}:2"
    )
    with Catalog.open(database_url) as catalog:
        assert catalog.categories(tenant="acme") == []
    manifest.write_text("image,product_id,category,price\n0.png,shirt,tops,19.9\n1.png,shirt,,19.90\n")
    run = run_ingest(database_url, tiny_siglip, str(manifest), "--tenant", "acme")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0] == "added 2, duplicates skipped 0"


def test_ingest_missing_path_is_one_line(database_url: str, tiny_siglip: Path) -> None:
    run = run_ingest(database_url, tiny_siglip, "/no/such/folder")
    assert run.returncode == 2
    assert run.stderr.strip() == "imgsearch: no such file or folder: /no/such/folder"


def test_status_wait_returns_when_nothing_is_pending(
    database_url: str, tiny_siglip: Path, tmp_path: Path
) -> None:
    """``status --wait`` waits for the workers; with none running it gives up after its seconds
    with one line, exit 2; it returns as soon as a worker has embedded everything."""
    (tmp_path / "a.png").write_bytes(image_bytes(1))
    (tmp_path / "b.png").write_bytes(image_bytes(2))
    stored = run_ingest(database_url, tiny_siglip, str(tmp_path), "--tenant", "acme", "--no-embed")
    assert stored.returncode == 0, stored.stderr
    env = {"IMGSEARCH_DATABASE_URL": database_url, "IMGSEARCH_MODEL": str(tiny_siglip)}
    late = run_cli("status", "--wait", "0.5", **env)
    assert late.returncode == 2 and late.stdout == ""
    assert late.stderr.strip().splitlines() == [
        "imgsearch: 2 images still pending or embedding after 0.5 s: is a worker running (`imgsearch worker`)?"
    ]
    bad = run_cli("status", "--wait", "soon", **env)
    assert bad.returncode == 2 and "must be a number of seconds" in bad.stderr
    worker = subprocess.Popen(
        [sys.executable, "-m", "imgsearch", "worker", "--drain"],
        env=cli_environment(**env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        waited = run_cli("status", "--wait", "120", **env)
    finally:
        worker.wait(timeout=120)
    assert waited.returncode == 0, waited.stderr
    assert waited.stdout.splitlines()[0] == "images: pending 0, embedding 0, ready 2, failed 0"
