"""The checker of a soak run (bench/server/soak.py): reads its ``history.jsonl`` and the database at the
end and says whether anything acknowledged was lost, doubled, stuck or answered wrongly.

    .venv/bin/python bench/server/soak_check.py OUT_FOLDER DATABASE_URL    # again, on a kept run

Invariants (``ok`` is false when one breaks):
- acknowledged uploads lost: an id a 201 answered that the database lacks, unless a delete of it
  (or of its product) was acknowledged or may have run (its request failed or overlapped);
- deletes undone: an image or product whose delete was acknowledged, still there;
- images embedded twice or under a stale model; ready images without their embedding, or whose
  embedding's filter columns differ from their product's;
- images stuck in ``pending`` or ``embedding`` after the drain, or holding a lease;
- updates lost: a product whose price is none of the values its last acknowledged change (and any
  change overlapping it) could have left;
- search answers with wrong rows: another tenant's row in any answer; for the ``stable`` tenant
  (whose rows nothing changes), a row that doesn't match the filters, a distance that isn't the
  row's, hits out of order, or fewer rows than ``min(k, matching rows)`` (recall@k against the
  exact search is reported beside: an HNSW answer may miss a near row);
- searches that failed outside the fault windows (a window is the fault and ``GRACE`` seconds after
  it), and any 500 (a bug, whenever it comes);
- connections the service and workers hold at the end, idle, over their pools' bound.
Reported beside them: errors in the windows by kind (503 with ``Retry-After``, connection errors,
timeouts), each fault's recovery time (from its end to the last failed request it caused), p50
and p99 outside the windows, the search p50 after the last fault against before the first (1x when
the service recovered its speed), RSS growth after the warm-up (target < 10%), and the CPU each
program kept busy.

The figure it produces: docs/reliability.md, with bench/server/soak.py.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from sqlalchemy import make_url

sys.path.insert(0, str(Path(__file__).parents[2]))

from imgsearch.db.engine import libpq_conninfo

GRACE = 15.0  # seconds after a fault still inside its window: pools reconnect, supervisors restart
KEYRING_CONNECTIONS = 4
WORKER_POOL = 5
FAILED = {0, 500, 502, 503, 504}
SEARCHES = (
    "search_vector_stable",
    "search_vector",
    "search_text",
    "search_similar",
    "search_similar_product",
    "search_image",
)


def load(path: Path) -> dict[str, Any]:
    parts: dict[str, Any] = {"ops": [], "faults": [], "samples": [], "events": [], "meta": {}}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if "op" in record:
            parts["ops"].append(record)
        elif "fault" in record:
            parts["faults"].append(record)
        elif "sample" in record:
            parts["samples"].append(record)
        elif "event" in record:
            parts["events"].append(record)
        else:
            parts["meta"].update(record)
    return parts


def windows(faults: list[dict[str, Any]]) -> list[tuple[float, float, str]]:
    return [(f["start"], f["end"] + GRACE, f["fault"]) for f in faults]


def in_window(op: dict[str, Any], spans: list[tuple[float, float, str]]) -> bool:
    return any(op["t1"] >= start and op["t0"] <= end for start, end, _ in spans)


def failed(op: dict[str, Any]) -> bool:
    return int(op["status"]) in FAILED


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 1) if values else None


def check(history: Path, database_url: str) -> dict[str, Any]:
    h = load(history)
    ops, spans = h["ops"], windows(h["faults"])
    conninfo = libpq_conninfo(make_url(database_url))
    with psycopg.connect(conninfo, autocommit=True, application_name="soak-check") as conn:
        db = read_database(conn)
        stable = read_stable(conn)
    report: dict[str, Any] = {"run": h["meta"].get("run", {}), "drained_s": h["meta"].get("drained")}
    report["operations"] = dict(Counter(op["op"] for op in ops))
    report["acknowledged"] = dict(Counter(op["op"] for op in ops if op["status"] in (200, 201, 204)))
    report.update(uploads(ops, db))
    report.update(consistency(db))
    report["updates_lost"] = updates_lost(ops, db)
    report.update(searches(ops, spans, stable))
    report["faults"] = fault_report(h["faults"], ops)
    report["restarts"] = h["meta"].get("restarts", {})
    report.update(resources(h))
    invariants = {
        "uploads_lost": report["uploads_lost"],
        "deletes_undone": report["deletes_undone"],
        "embedded_twice": report["embedded_twice"],
        "stale_model": report["stale_model"],
        "ready_without_embedding": report["ready_without_embedding"],
        "filter_columns_stale": report["filter_columns_stale"],
        "stuck": report["stuck"],
        "failed_not_downloads": report["failed_not_downloads"],
        "updates_lost": len(report["updates_lost"]),
        "wrong_rows": report["wrong_rows"],
        "searches_failed_outside_windows": report["searches_failed_outside_windows"],
        "server_errors_500": report["server_errors_500"],
        "connections_over_bound": report["connections_over_bound"],
    }
    report["invariants"] = invariants
    report["ok"] = all(v == 0 for v in invariants.values()) and not any(f["error"] for f in report["faults"])
    return report


def read_database(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    images = {
        row[0]: {"state": row[1], "error": row[2], "lease": row[3], "product": row[4], "attempts": row[5]}
        for row in conn.execute(
            "SELECT i.id, i.state, i.error, i.lease_expires_at IS NOT NULL, p.product_id, i.attempts "
            "FROM imgsearch.images i JOIN imgsearch.products p ON p.id = i.product_pk WHERE i.tenant = 'acme'"
        )
    }
    products = {
        row[0]: float(row[1]) if row[1] is not None else None
        for row in conn.execute("SELECT product_id, price FROM imgsearch.products WHERE tenant = 'acme'")
    }
    active = conn.execute("SELECT id FROM imgsearch.models WHERE active").fetchone()
    embeddings = conn.execute(
        "SELECT e.image_id, e.model_id, e.price IS NOT DISTINCT FROM p.price "
        "AND e.category IS NOT DISTINCT FROM p.category "
        "FROM imgsearch.embeddings e JOIN imgsearch.products p ON p.id = e.product_pk"
    ).fetchall()
    return {
        "images": images,
        "products": products,
        "active": active[0] if active else None,
        "embeddings": embeddings,
    }


def read_stable(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    rows = conn.execute(
        "SELECT e.image_id, e.embedding::vector::text, p.category, p.price, p.attributes->>'color' "
        "FROM imgsearch.embeddings e JOIN imgsearch.products p ON p.id = e.product_pk "
        "JOIN imgsearch.models m ON m.id = e.model_id AND m.active WHERE e.tenant = 'stable' ORDER BY 1"
    ).fetchall()
    vectors = np.array([json.loads(r[1]) for r in rows], dtype=np.float64)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return {
        "ids": np.array([r[0] for r in rows]),
        "vectors": vectors,
        "category": np.array([r[2] for r in rows]),
        "price": np.array([float(r[3]) for r in rows]),
        "color": np.array([r[4] for r in rows]),
    }


def uploads(ops: list[dict[str, Any]], db: dict[str, Any]) -> dict[str, Any]:
    acknowledged: dict[int, dict[str, Any]] = {}
    for op in ops:
        if op["op"].startswith("upload_") and op["status"] == 201:
            for image in op["ids"]:
                acknowledged[image] = op
    maybe_deleted: set[int] = set()
    deleted: set[int] = set()
    products_deleted_for_sure: set[str] = set()
    products_maybe_deleted: set[str] = set()
    for op in ops:
        if op["op"] == "delete_image" and (op["status"] == 204 or failed(op)):
            maybe_deleted.add(op["image_id"])
            if op["status"] == 204:
                deleted.add(op["image_id"])
        if op["op"] == "delete_product" and (op["status"] == 200 or failed(op)):
            products_maybe_deleted.add(op["product_id"])
            if op["status"] == 200:
                products_deleted_for_sure.add(op["product_id"])
    present = db["images"]
    lost = [
        image
        for image, op in acknowledged.items()
        if image not in present
        and image not in maybe_deleted
        and op["product_id"] not in products_maybe_deleted
    ]
    undone: list[int | str] = [image for image in deleted if image in present]
    undone += [p for p in products_deleted_for_sure if p in db["products"]]
    failed_images = {i: v for i, v in present.items() if v["state"] == "failed"}
    url_images = {i for i, op in acknowledged.items() if op["op"] == "upload_url"}
    not_downloads = {
        i: v["error"]
        for i, v in failed_images.items()
        if i not in url_images or "download" not in (v["error"] or "")
    }
    unacknowledged = [i for i in present if i not in acknowledged]
    return {
        "uploads_acknowledged": len(acknowledged),
        "uploads_lost": len(lost),
        "uploads_lost_ids": lost[:20],
        "deletes_undone": len(undone),
        "stored_without_acknowledgement": len(unacknowledged),
        "failed_downloads": len(failed_images) - len(not_downloads),
        "failed_download_errors": dict(Counter(_error_kind(v["error"]) for v in failed_images.values())),
        "failed_not_downloads": len(not_downloads),
        "failed_not_downloads_errors": list(not_downloads.values())[:10],
    }


def _error_kind(error: str | None) -> str:
    text = (error or "").split(": ", 2)
    return ": ".join(text[:1]) if len(text) < 3 else f"{text[0]}: ... {text[-1][:60]}"


def consistency(db: dict[str, Any]) -> dict[str, Any]:
    per_image = Counter(image for image, _, _ in db["embeddings"])
    stale = sum(1 for _, model, _ in db["embeddings"] if model != db["active"])
    with_embedding = {image for image, model, _ in db["embeddings"] if model == db["active"]}
    images = db["images"]
    ready_without = [i for i, v in images.items() if v["state"] == "ready" and i not in with_embedding]
    return {
        "embedded_twice": sum(1 for n in per_image.values() if n > 1),
        "stale_model": stale,
        "ready_without_embedding": len(ready_without),
        "filter_columns_stale": sum(1 for _, _, same in db["embeddings"] if not same),
        "stuck": sum(1 for v in images.values() if v["state"] in ("pending", "embedding") or v["lease"]),
        "states": dict(Counter(v["state"] for v in images.values())),
        "attempts": dict(Counter(v["attempts"] for v in images.values() if v["state"] == "ready")),
    }


def updates_lost(ops: list[dict[str, Any]], db: dict[str, Any]) -> list[str]:
    """Products whose price is none of the values their acknowledged history allows."""
    changes: dict[str, list[tuple[float, float, float, bool]]] = defaultdict(list)
    for op in ops:
        sure = op["status"] in (200, 201)
        if not sure and not failed(op):
            continue
        if op["op"].startswith("upload_") and sure:
            changes[op["product_id"]].append((op["t0"], op["t1"], op["price"], True))
        elif op["op"] == "update_product":
            changes[op["product_id"]].append((op["t0"], op["t1"], op["price"], sure))
        elif op["op"] == "feed":
            for product, price in op["prices"].items():
                changes[product].append((op["t0"], op["t1"], price, sure))
    lost = []
    for product, history in changes.items():
        if product not in db["products"]:
            continue  # deleted
        acknowledged = [c for c in history if c[3]]
        if not acknowledged:
            continue
        last_start = max(c[0] for c in acknowledged)
        # the last acknowledged change, or any change that may have run after its start
        allowed = {round(c[2], 2) for c in history if c[1] >= last_start}
        price = db["products"][product]
        if price is None or round(price, 2) not in allowed:
            lost.append(product)
    return lost


def exact(stable: dict[str, Any], query: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Ids and distances of every stable row matching the query's filters, nearest first."""
    mask = np.ones(len(stable["ids"]), dtype=bool)
    category = query.get("category")
    if isinstance(category, str):
        mask &= stable["category"] == category
    elif isinstance(category, list):
        mask &= np.isin(stable["category"], category)
    if "price_max" in query:
        mask &= stable["price"] <= query["price_max"]
    if "attributes" in query:
        mask &= stable["color"] == query["attributes"]["color"]
    v = np.array(query["vector"], dtype=np.float64)
    distances = 1 - stable["vectors"][mask] @ (v / np.linalg.norm(v))
    order = np.argsort(distances, kind="stable")
    return stable["ids"][mask][order], distances[order]


def searches(
    ops: list[dict[str, Any]], spans: list[tuple[float, float, str]], stable: dict[str, Any]
) -> dict[str, Any]:
    found = [op for op in ops if op["op"] in SEARCHES]
    other_tenant = sum(1 for op in found if op["hits"] and any(hit[2] != op["tenant"] for hit in op["hits"]))
    wrong, short, checked, recalls = 0, 0, 0, []
    for op in found:
        if op["op"] != "search_vector_stable" or op["status"] != 200:
            continue
        checked += 1
        ids, distances = exact(stable, op["query"])
        k = op["query"]["k"]
        if len(op["hits"]) != min(k, len(ids)):
            short += 1
            continue
        if not len(ids):
            continue
        by_id = dict(zip(ids.tolist(), distances.tolist(), strict=True))
        # wrong: a row that doesn't match the filters, a distance that isn't the row's, or hits out
        # of order (halfvec storage rounds distances: 2e-3 of slack)
        got = [by_id.get(hit[0]) for hit in op["hits"]]
        if (
            any(d is None or abs(d - hit[1]) > 2e-3 for d, hit in zip(got, op["hits"], strict=True))
            or any(b < a - 2e-3 for a, b in itertools.pairwise(got))  # type: ignore[operator]
        ):
            wrong += 1
            continue
        # an approximate (HNSW) answer may miss a near row: recall, not a wrong row
        kth = distances[min(k, len(ids)) - 1]
        recalls.append(sum(1 for d in got if d is not None and d <= kth + 2e-3) / min(k, len(ids)))
    outside = [op for op in found if not in_window(op, spans)]
    writes = [op for op in ops if op["op"] not in SEARCHES]
    inside = [op for op in ops if in_window(op, spans) and failed(op)]
    ok_latency = [op["t1"] - op["t0"] for op in outside if op["status"] == 200]
    # recovered: searches after the last window as fast as before the first one (after a warm-up)
    first = min((start for start, _, _ in spans), default=float("inf"))
    last = max((end for _, end, _ in spans), default=float("inf"))
    before = [
        op["t1"] - op["t0"]
        for op in outside
        if op["status"] == 200 and first / 3 <= op["t0"] and op["t1"] < first
    ]
    after = [op["t1"] - op["t0"] for op in outside if op["status"] == 200 and op["t0"] > last]
    p50_before, p50_after = percentile(before, 50), percentile(after, 50)
    return {
        "searches": len(found),
        "searches_checked_exact": checked,
        "wrong_rows": wrong + short + other_tenant,
        "wrong_rows_detail": {
            "filters_or_distances": wrong,
            "fewer_rows": short,
            "other_tenant": other_tenant,
        },
        "recall_at_k": round(float(np.mean(recalls)), 4) if recalls else None,
        "exact_answers": round(sum(1 for r in recalls if r == 1.0) / len(recalls), 4) if recalls else None,
        "searches_failed_outside_windows": sum(1 for op in outside if failed(op)),
        "searches_failed_outside_detail": [
            {k: op.get(k) for k in ("op", "t0", "status", "error", "detail")} for op in outside if failed(op)
        ][:10],
        "writes_failed_outside_windows": sum(1 for op in writes if not in_window(op, spans) and failed(op)),
        "server_errors_500": sum(1 for op in ops if op["status"] == 500),
        "refused_4xx": dict(Counter(f"{op['op']} {op['status']}" for op in ops if 400 <= op["status"] < 500)),
        "in_windows": dict(
            Counter(
                "503 with Retry-After"
                if op["status"] == 503 and op.get("retry_after")
                else f"{op['status']} {op.get('error')}"
                for op in inside
            )
        ),
        "p50_ms": percentile(ok_latency, 50),
        "p99_ms": percentile(ok_latency, 99),
        "p50_before_faults_ms": p50_before,
        "p50_after_faults_ms": p50_after,
        "p50_after_over_before": round(p50_after / p50_before, 2) if p50_before and p50_after else None,
    }


def fault_report(faults: list[dict[str, Any]], ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    starts = [f["start"] for f in faults] + [float("inf")]
    for i, fault in enumerate(faults):
        start, end = fault["start"], fault["end"]
        # the failures in its window, up to the next fault's start
        until = min(end + GRACE, starts[i + 1])
        hit = [op for op in ops if failed(op) and op["t1"] >= start and op["t0"] <= until]
        last = max((op["t1"] for op in hit), default=None)
        rows.append(
            {
                "fault": fault["fault"],
                "start": start,
                "held_s": round(end - start, 1),
                "failed_requests": len(hit),
                "recovery_s": round(max(0.0, last - end), 1) if last is not None else 0.0,
                "error": fault.get("error"),
            }
        )
    return rows


def resources(h: dict[str, Any]) -> dict[str, Any]:
    run = h["meta"].get("run", {})
    samples = h["samples"]
    traffic_end = h["meta"].get("traffic_end", samples[-1]["sample"] if samples else 0)
    first_fault = min((f["start"] for f in h["faults"]), default=traffic_end * 0.15)
    warm = [s for s in samples if s["sample"] <= traffic_end]
    growth = {}
    for role in ("server", "worker"):
        series = [(s["sample"], sum(v for k, v in s["rss"].items() if k.startswith(role))) for s in warm]
        series = [(t, v) for t, v in series if v > 0]
        early = [v for t, v in series if first_fault * 0.5 <= t <= first_fault]
        late = [v for t, v in series if t >= traffic_end - max(10.0, first_fault * 0.5)]
        if early and late:
            growth[role] = {
                "after_warmup_mib": float(np.median(early)),
                "last_mib": float(np.median(late)),
                "growth": round(float(np.median(late)) / float(np.median(early)) - 1, 3),
            }
    pool = run.get("pool_size", 5)
    bound = {
        # each server process: the catalog's pinged pool and its searches' pool (IMGSEARCH_POOL_SIZE
        # 20 under imgsearch serve), and the keyring's connections
        "imgsearch-serve": run.get("server_processes", 2) * (2 * 20 + KEYRING_CONNECTIONS),
        "imgsearch-worker": run.get("workers", 2) * (pool + 1),
    }
    final: dict[str, int] = (
        next((s["connections"] for s in reversed(samples) if s["connections"] is not None), {}) or {}
    )
    peak: dict[str, int] = {}
    for s in samples:
        for name, n in (s["connections"] or {}).items():
            peak[name] = max(peak.get(name, 0), n)
    over = sum(max(0, final.get(name, 0) - limit) for name, limit in bound.items())
    # CPU seconds are cumulative per process tree; a restart starts them again (negative steps skipped)
    busy: dict[str, float] = {}
    timed = [s for s in warm if s.get("cpu")]
    for a, b in itertools.pairwise(timed):
        for name, seconds in b["cpu"].items():
            role = name.split("-")[0]
            step = seconds - a["cpu"].get(name, seconds)
            if step > 0:
                busy[role] = busy.get(role, 0.0) + step
    span = timed[-1]["sample"] - timed[0]["sample"] if len(timed) > 1 else 0.0
    return {
        "rss": growth,
        "cpu_cores": {role: round(total / span, 3) for role, total in sorted(busy.items())} if span else {},
        "connections_final": final,
        "connections_peak": peak,
        "connections_bound": bound,
        "connections_over_bound": over,
    }


def write(report: dict[str, Any], out: Path) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))


def summary(report: dict[str, Any]) -> str:
    inv = report["invariants"]
    lines = ["", "| invariant | count |", "|---|---|"]
    lines += [f"| {name.replace('_', ' ')} | {value} |" for name, value in inv.items()]
    lines += ["", "| fault | at | held | failed requests | recovery |", "|---|---|---|---|---|"]
    for f in report["faults"]:
        note = f" (not injected: {f['error']})" if f["error"] else ""
        lines.append(
            f"| {f['fault']}{note} | {f['start']:.0f} s | {f['held_s']:.1f} s | {f['failed_requests']} | {f['recovery_s']:.1f} s |"
        )
    lines += [
        "",
        f"operations: {sum(report['operations'].values())} ({report['searches']} searches, "
        f"{report['searches_checked_exact']} checked against exact: recall@10 {report['recall_at_k']}, "
        f"exact answers {report['exact_answers']}); uploads acknowledged: "
        f"{report['uploads_acknowledged']}; drained in {report['drained_s']} s",
        f"p50 / p99 outside windows: {report['p50_ms']} / {report['p99_ms']} ms; writes failed outside "
        f"windows: {report['writes_failed_outside_windows']}",
        f"errors in windows: {report['in_windows']}",
        f"images: {report['states']}; failed downloads: {report['failed_download_errors']}",
        f"refused (4xx): {report['refused_4xx']}",
        f"search p50 before the first fault / after the last: {report['p50_before_faults_ms']} / "
        f"{report['p50_after_faults_ms']} ms ({report['p50_after_over_before']}x)",
        f"RSS: {report['rss']}; CPU (cores busy, mean over the run): {report['cpu_cores']}",
        f"connections at the end: {report['connections_final']} (bound {report['connections_bound']}, "
        f"peak {report['connections_peak']}); restarts: {report['restarts']}",
        f"ok: {report['ok']}",
    ]
    return "\n".join(lines)


def plot(history: Path, report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = load(history)
    ops = h["ops"]
    end = max((op["t1"] for op in ops), default=1.0)
    step = max(2.0, end / 150)
    bins = np.arange(0, end + step, step)
    p50, p99, errors = [], [], []
    for lo in bins[:-1]:
        window = [op for op in ops if lo <= op["t0"] < lo + step]
        ok = [(op["t1"] - op["t0"]) * 1000 for op in window if op["op"] in SEARCHES and op["status"] == 200]
        p50.append(np.percentile(ok, 50) if ok else np.nan)
        p99.append(np.percentile(ok, 99) if ok else np.nan)
        errors.append(100 * sum(1 for op in window if failed(op)) / len(window) if window else 0)
    fig, (top, bottom, memory) = plt.subplots(3, 1, figsize=(11, 8), sharex=True)
    top.plot(bins[:-1], p50, label="search p50", color="tab:blue")
    top.plot(bins[:-1], p99, label="search p99", color="tab:orange")
    top.set_yscale("log")
    top.set_ylabel("latency (ms)")
    top.legend(loc="upper right")
    bottom.plot(bins[:-1], errors, color="tab:red")
    bottom.set_ylabel("failed requests (%)")
    times = [sample["sample"] for sample in h["samples"]]
    for role, color in (("server", "tab:purple"), ("worker", "tab:green")):
        rss = [
            sum(v for k, v in sample["rss"].items() if k.startswith(role)) or np.nan
            for sample in h["samples"]
        ]
        memory.plot(times, rss, color=color, label=f"{role}s' RSS")
    memory.set_ylabel("RSS (MiB)")
    memory.set_ylim(bottom=0)
    memory.legend(loc="lower left")
    held = memory.twinx()
    held.plot(
        times,
        [
            sum((sample["connections"] or {}).values()) if sample["connections"] else np.nan
            for sample in h["samples"]
        ],
        color="tab:gray",
        linewidth=0.8,
    )
    held.set_ylabel("PostgreSQL connections", color="tab:gray")
    held.set_ylim(bottom=0)
    memory.set_xlabel("seconds")
    for f in h["faults"]:
        for ax in (top, bottom, memory):
            ax.axvspan(f["start"], f["end"] + GRACE, color="grey", alpha=0.15)
        top.annotate(
            f["fault"], (f["start"], 1), xycoords=("data", "axes fraction"), rotation=90, va="top", fontsize=7
        )
    verdict = "no invariant broken" if report["ok"] else "INVARIANTS BROKEN"
    top.set_title(
        f"soak: {sum(report['operations'].values())} operations, {len(h['faults'])} faults, {verdict}"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path, help="the soak run's folder (its history.jsonl)")
    parser.add_argument("database_url", help="the soaked database")
    args = parser.parse_args()
    out, url = args.out, args.database_url
    if not (out / "history.jsonl").is_file():
        parser.error(f"{out / 'history.jsonl'} is missing: give the folder of a soak run")
    report = check(out / "history.jsonl", url)
    write(report, out)
    print(summary(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
