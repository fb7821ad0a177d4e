"""``imgsearch eval``: every metric against values computed by hand, on a catalog whose geometry
makes the rankings known; the file formats; the folder protocol end to end on the bundled samples."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from imgsearch import Catalog, InvalidInput
from imgsearch.quality import evaluation
from imgsearch.settings import Settings
from tests.helpers import clean_environment

SAMPLES = Path(__file__).parents[2] / "imgsearch" / "samples" / "images"
MODEL = "google/siglip-base-patch16-224"  # 768-d; vectors only, the weights are never loaded


def test_metrics_match_hand_computed_values() -> None:
    m = evaluation.metrics(["a", "x", "b", "y", "c"], {"a": 1, "b": 1, "c": 1, "d": 1}, k=3)
    assert m["recall"] == pytest.approx(2 / 4)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["ap"] == pytest.approx((1 / 1 + 2 / 3 + 3 / 5) / 4)
    assert m["ndcg"] == pytest.approx((1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3) + 1 / math.log2(4)))
    assert m["rr"] == 1.0
    graded = evaluation.metrics(["b", "a"], {"a": 2, "b": 1}, k=2)
    assert graded["ndcg"] == pytest.approx((1 + 3 / math.log2(3)) / (3 + 1 / math.log2(3)))
    late = evaluation.metrics(["x", "y", "a"], {"a": 1}, k=2)
    assert (late["recall"], late["precision"], late["rr"], late["ap"]) == (
        0.0,
        0.0,
        pytest.approx(1 / 3),
        pytest.approx(1 / 3),
    )
    with pytest.raises(InvalidInput, match="at least one relevant id"):
        evaluation.metrics(["a"], {}, k=1)


def unit(*parts: tuple[int, float]) -> np.ndarray:
    v = np.zeros(768)
    for axis, value in parts:
        v[axis] = value
    return v / np.linalg.norm(v)


@pytest.fixture
def catalog(database_url: str) -> Catalog:
    """Product A's three images around axis 0; B at 30 degrees from it, C at 60, D at 90."""
    with Catalog.open(database_url, model=MODEL, settings=Settings(model=MODEL)) as catalog:
        rows = [
            *(
                {"embedding": unit((0, 1), (100 + i, 0.01)), "product_id": "A", "category": "x"}
                for i in range(3)
            ),
            {
                "embedding": unit((0, math.cos(math.pi / 6)), (1, math.sin(math.pi / 6))),
                "product_id": "B",
                "category": "y",
            },
            {
                "embedding": unit((0, math.cos(math.pi / 3)), (1, math.sin(math.pi / 3))),
                "product_id": "C",
                "category": "x",
            },
            {"embedding": unit((1, 1)), "product_id": "D", "category": "x"},
        ]
        catalog.ids = catalog.add_many({**row, "tenant": "acme"} for row in rows)  # type: ignore[attr-defined]
        yield catalog


def test_a_known_ranking_gives_the_hand_computed_metrics_every_way(catalog: Catalog, tmp_path: Path) -> None:
    query_image = catalog.ids[0]  # type: ignore[attr-defined]
    # by product: A (its other images), B, C, D; relevant A and C
    path = tmp_path / "set.jsonl"
    path.write_text(
        json.dumps(
            {
                "id": "q1",
                "image_id": query_image,
                "relevant_products": ["A", "C"],
                "tenant": "acme",
                "filters": {"category": "x"},
            }
        )
        + "\n"
    )
    labelled = evaluation.load_set(path)
    report = evaluation.evaluate(catalog, labelled, k=2, depth=10)
    (detail,) = report.queries
    assert detail["top"]["ann"] == detail["top"]["exact"] == ["A", "B"]
    assert detail["top"]["filtered"] == ["A", "C"]  # category x: B is left out
    ann = detail["ann"]
    assert ann["recall"] == pytest.approx(1 / 2) and ann["precision"] == pytest.approx(1 / 2)
    assert ann["ap"] == pytest.approx((1 / 1 + 2 / 3) / 2)  # C found at rank 3 of the depth
    assert ann["ndcg"] == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert ann["rr"] == 1.0
    filtered = detail["filtered"]
    assert (filtered["recall"], filtered["precision"], filtered["ap"], filtered["ndcg"]) == (
        1.0,
        1.0,
        1.0,
        1.0,
    )
    assert report.ann_recall == 1.0
    assert (
        report.summary["ann"]["ap"] == pytest.approx(ann["ap"]) and report.summary["filtered"]["queries"] == 1
    )
    # the same set as CSV, relevance by image: the query's own image never counts as a result
    a2, a3, b = catalog.ids[1], catalog.ids[2], catalog.ids[3]  # type: ignore[attr-defined]
    csv_path = tmp_path / "set.csv"
    csv_path.write_text(
        "id,text,image,image_id,relevant_products,relevant_images,tenant,category,price_min,price_max\n"
        f"q1,,,{query_image},,{a2}:2|{b}:1,acme,,,\n"
    )
    by_image = evaluation.evaluate(catalog, evaluation.load_set(csv_path), k=3, depth=10)
    (detail,) = by_image.queries
    assert str(query_image) not in detail["top"]["exact"]
    assert detail["top"]["exact"][2] == str(b)  # A's two other images (either order), then B
    assert set(detail["top"]["exact"][:2]) == {str(a2), str(a3)}
    first_a2 = detail["top"]["exact"].index(str(a2)) + 1
    dcg = 3 / math.log2(first_a2 + 1) + 1 / math.log2(4)
    assert detail["exact"]["ndcg"] == pytest.approx(dcg / (3 + 1 / math.log2(3)))


def test_bad_sets_name_the_line_and_the_problem(tmp_path: Path) -> None:
    cases = {
        '{"text": "a", "image_id": 3, "relevant_products": ["A"]}': "exactly one of text, image, image_id and vector",
        '{"text": "a"}': "give relevant_products or relevant_images",
        '{"text": "a", "relevant_products": {"A": "high"}}': "the grade of 'A' is not a number",
        "not json": "not JSON",
        '{"image_id": "x1", "relevant_images": [1]}': "image_id must be an integer",
    }
    for line, message in cases.items():
        path = tmp_path / "bad.jsonl"
        path.write_text('{"text": "fine", "relevant_products": ["A"]}\n' + line + "\n")
        with pytest.raises(InvalidInput, match=message) as error:
            evaluation.load_set(path)
        assert f"{path}:2" in str(error.value)
    with pytest.raises(InvalidInput, match=r"a \.jsonl or \.csv file"):
        (tmp_path / "set.txt").write_text("x")
        evaluation.load_set(tmp_path / "set.txt")


def test_the_folder_protocol_end_to_end_on_the_bundled_samples(
    database_url: str, tiny_siglip: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "classes"
    for image in sorted(SAMPLES.glob("*.png")):
        kind = image.name.split("-")[0]
        (folder / kind).mkdir(parents=True, exist_ok=True)
        shutil.copy(image, folder / kind / image.name)
    with Catalog.open(database_url, model=str(tiny_siglip)) as catalog:
        catalog.add_many(
            {"image": path.read_bytes(), "tenant": "acme", "product_id": path.stem}
            for path in sorted(folder.rglob("*.png"))
        )
    env = clean_environment()
    env.update(
        IMGSEARCH_DATABASE_URL=database_url,
        IMGSEARCH_MODEL=str(tiny_siglip),
        IMGSEARCH_REDIS_URL="redis://127.0.0.1:1/0",
    )
    drained = subprocess.run(
        [sys.executable, "-m", "imgsearch", "worker", "--drain"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert drained.returncode == 0, drained.stderr
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "imgsearch",
            "eval",
            str(folder),
            "--tenant",
            "acme",
            "--k",
            "5",
            "--json",
            str(tmp_path / "detail.json"),
            "--html",
            str(tmp_path / "worst.html"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "36 queries, relevance by image, k=5" in run.stderr
    rows = [line.split("|") for line in run.stdout.splitlines() if line.startswith(f"| {tiny_siglip}")]
    assert [row[2].strip() for row in rows] == ["ann", "exact"]
    assert all(row[3].strip() == "36" for row in rows)
    assert rows[0][9].strip() == "1.000"  # 36 images: the ANN path is exact here
    (report,) = json.loads((tmp_path / "detail.json").read_text())
    assert len(report["queries"]) == 36
    for query in report["queries"]:
        assert len(query["relevant"]) == 5  # the other images of its class
        for way in ("ann", "exact"):
            assert 0 <= query[way]["recall"] <= 1 and 0 <= query[way]["ap"] <= 1
    page = (tmp_path / "worst.html").read_text()
    assert page.count("<tr>") == 21  # the header and the worst 20
    bad = subprocess.run(
        [sys.executable, "-m", "imgsearch", "eval", str(tmp_path / "none.jsonl")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "no labelled set at" in bad.stderr and "Traceback" not in bad.stderr


def test_compare_scores_a_backfilled_model_before_it_is_active(catalog: Catalog, tmp_path: Path) -> None:
    from sqlalchemy import text

    from imgsearch.work import reembed

    other = reembed.register(catalog.engine, "google/siglip2-base-patch16-224", 768)
    a1, _, _, b, c, _ = catalog.ids  # type: ignore[attr-defined]
    with catalog.engine.begin() as conn:
        # the same vectors, but B and C change places: C now comes right after A
        conn.execute(
            text(
                "INSERT INTO imgsearch.embeddings (model_id, image_id, product_pk, tenant, category, price, embedding) "
                "SELECT :new, e.image_id, e.product_pk, e.tenant, e.category, e.price, src.embedding "
                "FROM imgsearch.embeddings e JOIN imgsearch.embeddings src ON src.model_id = :old "
                "AND src.image_id = CASE e.image_id WHEN :b THEN :c WHEN :c THEN :b ELSE e.image_id END "
                "WHERE e.model_id = :old"
            ),
            {"new": other.id, "old": catalog.active_model.id, "b": b, "c": c},
        )
    path = tmp_path / "set.jsonl"
    path.write_text(json.dumps({"image_id": a1, "relevant_products": ["A", "C"], "tenant": "acme"}) + "\n")
    env = clean_environment()
    env.update(
        IMGSEARCH_DATABASE_URL=catalog.engine.url.render_as_string(hide_password=False), IMGSEARCH_MODEL=MODEL
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "imgsearch",
            "eval",
            str(path),
            "--k",
            "2",
            "--compare",
            other.name,
            "--json",
            str(tmp_path / "both.json"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    active, compared = json.loads((tmp_path / "both.json").read_text())
    assert (active["model"], compared["model"]) == (MODEL, other.name)
    assert active["queries"][0]["top"]["exact"] == ["A", "B"]
    assert compared["queries"][0]["top"]["exact"] == compared["queries"][0]["top"]["ann"] == ["A", "C"]
    assert active["summary"]["ann"]["recall"] == 0.5 and compared["summary"]["ann"]["recall"] == 1.0
    assert f"| {other.name} | ann | 1 | 1.000 | 1.000 |" in run.stdout
    # nothing switched: the active model is still the first
    with catalog.engine.connect() as conn:
        assert conn.execute(text("SELECT name FROM imgsearch.models WHERE active")).scalar() == MODEL


def test_modes_compare_semantic_lexical_and_hybrid_on_text_queries(
    database_url: str, tiny_siglip: Path, tmp_path: Path
) -> None:
    with Catalog.open(database_url, model=str(tiny_siglip)) as shop:
        rng = np.random.default_rng(3)
        titles = {"A": "Red canvas sneakers", "B": "Blue wool scarf", "C": "Red wool scarf", "D": "Lamp"}
        shop.add_many(
            {"embedding": rng.standard_normal(shop.dim), "tenant": "acme", "product_id": p, "title": t}
            for p, t in titles.items()
        )
        path = tmp_path / "set.jsonl"
        lines = [
            {"id": "scarf", "text": "wool scarf", "relevant_products": ["B", "C"], "tenant": "acme"},
            {"id": "sneaker", "text": "sneakers", "relevant_products": ["A"], "tenant": "acme"},
        ]
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        report = evaluation.evaluate(shop, evaluation.load_set(path), k=2, depth=4, modes=evaluation.MODES)
        assert set(report.summary) == {"ann", "exact", "semantic", "lexical", "hybrid"}
        lexical = report.summary["lexical"]
        assert lexical["recall"] == 1.0 and lexical["rr"] == 1.0 and lexical["queries"] == 2
        for detail in report.queries:
            assert set(detail["top"]["lexical"]) == set(dict.fromkeys(next(
                line["relevant_products"] for line in lines if line["id"] == detail["id"]
            )))  # fmt: skip
        # the semantic mode is the ANN path's text search, grouped by product
        assert [q["top"]["semantic"] for q in report.queries] == [q["top"]["ann"] for q in report.queries]
        assert "| hybrid |" in evaluation.table([report])
        with pytest.raises(InvalidInput, match="unknown modes"):
            evaluation.evaluate(shop, evaluation.load_set(path), modes=("fuzzy",))
