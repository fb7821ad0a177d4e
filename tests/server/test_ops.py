"""Operations: liveness, readiness (database, migrations, a preloaded model), Prometheus metrics,
structured request logs with request ids, the OpenAPI schema, N server processes, and query
micro-batching across concurrent requests."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import httpx
import psycopg
import pytest
from sqlalchemy import make_url, text

from imgsearch.db.engine import libpq_conninfo
from imgsearch.work import text_requests
from tests.conftest import new_database
from tests.helpers import run_cli, unit
from tests.server.conftest import Api, problem, start_api

DIM = 32

ROUTES = {
    ("post", "/v1/images"),
    ("get", "/v1/images/{image_id}"),
    ("delete", "/v1/images/{image_id}"),
    ("post", "/v1/images:delete"),
    ("get", "/v1/images/{image_id}/thumbnail"),
    ("patch", "/v1/products/{product_id}"),
    ("post", "/v1/products:update"),
    ("delete", "/v1/products/{product_id}"),
    ("post", "/v1/search"),
    ("post", "/v1/search/image"),
    ("get", "/v1/categories"),
    ("get", "/v1/status"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
}


def metric(text_: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus exposition (0 when absent)."""
    total = 0.0
    for line in text_.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, value = line.rsplit(" ", 1)
        if series.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(value)
    return total


def test_schema_docs_health_and_readiness(api: Api) -> None:
    schema = httpx.get(f"{api.url}/openapi.json").json()
    found = {(method, path) for path, item in schema["paths"].items() for method in item}
    assert found >= ROUTES, ROUTES - found
    assert "ApiKey" in schema["components"]["securitySchemes"]
    assert "multipart/form-data" in schema["paths"]["/v1/images"]["post"]["requestBody"]["content"]
    assert "application/json" in schema["paths"]["/v1/images"]["post"]["requestBody"]["content"]
    assert "swagger" in httpx.get(f"{api.url}/docs").text.lower()
    assert httpx.get(f"{api.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{api.url}/readyz").json()
    assert ready == {
        "status": "ready",
        "checks": {"database": "ok", "migrations": "ok", "model": "not required"},
    }
    page = httpx.get(f"{api.url}/problems/not-found")
    assert page.status_code == 200 and "another tenant" in page.text
    problem(httpx.get(f"{api.url}/problems/nonsense"), 404)


def test_readiness_waits_for_a_preloaded_model(
    server_url: str, template_db: str, tiny_siglip: Path, tmp_path: Path
) -> None:
    api = start_api(new_database(server_url, template_db), tiny_siglip, tmp_path, "--preload", ready=False)
    try:
        with httpx.Client(base_url=api.url, timeout=30) as client:
            for _ in range(300):
                response = client.get("/readyz")
                if response.status_code == 200:
                    break
                assert "model: loading" in problem(response, 503)["detail"]
                threading.Event().wait(0.1)
            assert response.json()["checks"]["model"] == "ok"
    finally:
        api.stop()


def test_readiness_names_a_model_that_fails_to_load(
    server_url: str, template_db: str, tiny_siglip: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    shutil.copy(tiny_siglip / "config.json", broken / "config.json")  # a config, no weights
    api = start_api(new_database(server_url, template_db), broken, tmp_path, "--preload", ready=False)
    try:
        with httpx.Client(base_url=api.url, timeout=30) as client:
            for _ in range(300):
                response = client.get("/readyz")
                if "failed to load" in response.text:
                    break
                threading.Event().wait(0.1)
            body = problem(response, 503)
            assert "model: failed to load: cannot load model" in body["detail"]
            assert response.headers["retry-after"]
            key = api.key("t")
            searched = client.post(
                "/v1/search", json={"text": "red"}, headers={"Authorization": f"Bearer {key}"}
            )
            assert "cannot load model" in problem(searched, 503)["detail"]
            vector = client.post(
                "/v1/search",
                json={"vector": unit(DIM, 1).tolist()},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert vector.status_code == 200, "vector searches need no model"
    finally:
        api.stop()


def test_readiness_names_migrations_behind(
    api: Api, server_url: str, template_db: str, tiny_siglip: Path, tmp_path: Path
) -> None:
    database_url = new_database(server_url, template_db)
    other = start_api(database_url, tiny_siglip, tmp_path)
    try:
        with other.engine.begin() as conn:
            conn.execute(text("UPDATE imgsearch.alembic_version SET version_num = '0010'"))
        body = problem(httpx.get(f"{other.url}/readyz"), 503)
        assert "migrations: at 0010, head is" in body["detail"]
    finally:
        other.stop()


def test_metrics_and_model_list_name_a_model_left_without_its_index(
    server_url: str, template_db: str, tiny_siglip: Path, tmp_path: Path
) -> None:
    """An import or rebuild killed during its CREATE INDEX CONCURRENTLY leaves the model's index
    invalid (or, killed between its drop and its build, missing): searches stay exact but scan
    every row. /metrics and `imgsearch model list` say so; `imgsearch model reindex` mends it."""
    database_url = new_database(server_url, template_db)
    other = start_api(database_url, tiny_siglip, tmp_path)
    env = {"IMGSEARCH_DATABASE_URL": database_url, "IMGSEARCH_MODEL": str(tiny_siglip)}
    try:
        rows = tmp_path / "rows.jsonl"
        rows.write_text(
            "".join(json.dumps({"embedding": unit(DIM, i).tolist(), "product_id": f"p{i}"}) + "\n" for i in range(5))
        )
        assert run_cli("import", str(rows), "--tenant", "acme", **env).returncode == 0
        with other.engine.connect() as conn:
            model, model_id = conn.execute(text("SELECT name, id FROM imgsearch.models")).one()
        index = f"imgsearch.embeddings_hnsw_m{model_id}"

        def gauge() -> float:
            body = httpx.get(f"{other.url}/metrics").text
            assert f'imgsearch_hnsw_index_valid{{model="{model}"}}' in body
            return metric(body, "imgsearch_hnsw_index_valid", model=model)

        def listed() -> tuple[str, str]:
            shown = run_cli("model", "list", **env)
            assert shown.returncode == 0, shown.stderr
            return shown.stdout.splitlines()[1].split()[3], shown.stderr

        def reindex() -> None:
            done = run_cli("model", "reindex", **env)
            assert done.returncode == 0, done.stderr
            assert gauge() == 1 and listed() == ("valid", "")

        assert gauge() == 1 and listed() == ("valid", "")
        # a build that stops waiting (a writer's transaction open): its index is left invalid
        conninfo = libpq_conninfo(make_url(database_url))
        with psycopg.connect(conninfo, autocommit=True) as admin, psycopg.connect(conninfo) as writer:
            admin.execute(f"DROP INDEX {index}")
            writer.execute("LOCK TABLE imgsearch.embeddings IN ROW EXCLUSIVE MODE")
            admin.execute("SET statement_timeout = '1s'")
            with pytest.raises(psycopg.errors.QueryCanceled):
                admin.execute(
                    f"CREATE INDEX CONCURRENTLY embeddings_hnsw_m{model_id} ON imgsearch.embeddings "
                    f"USING hnsw ((embedding::halfvec({DIM})) halfvec_cosine_ops) WHERE model_id = {model_id}"
                )
        assert gauge() == 0
        state, hint = listed()
        assert state == "invalid"
        assert hint.strip() == (
            f"the HNSW index of {model} is invalid: its searches scan every row; "
            f"build it with `imgsearch model reindex {model}`"
        )
        reindex()
        with other.engine.begin() as conn:
            conn.execute(text(f"DROP INDEX {index}"))
        assert gauge() == 0 and listed()[0] == "missing"
        reindex()
    finally:
        other.stop()


def test_metrics_and_request_logs(api: Api, tenant: str) -> None:
    key = api.key(tenant)
    with api.client(key) as client:
        client.post(
            "/v1/images",
            json={"items": [{"embedding": unit(DIM, i).tolist(), "product_id": f"p{i}"} for i in range(3)]},
        )
        before = httpx.get(f"{api.url}/metrics").text
        for _ in range(4):
            assert (
                client.post("/v1/search", json={"vector": unit(DIM, 0).tolist(), "k": 2}).status_code == 200
            )
        assert (
            client.post("/v1/search", json={"vector": unit(DIM, 0).tolist(), "category": "none"}).status_code
            == 200
        )
        problem(client.post("/v1/search", json={}), 400)
        response = client.get("/v1/status", headers={"X-Request-ID": "trace-abc.123"})
        assert response.headers["x-request-id"] == "trace-abc.123"
        generated = client.get("/v1/status", headers={"X-Request-ID": "bad id with spaces"}).headers[
            "x-request-id"
        ]
        assert len(generated) == 32 and " " not in generated
    after = httpx.get(f"{api.url}/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    body = after.text
    route = {"method": "POST", "route": "/v1/search"}
    assert (
        metric(body, "imgsearch_http_requests_total", status="200", **route)
        - metric(before, "imgsearch_http_requests_total", status="200", **route)
        == 5
    )
    assert metric(body, "imgsearch_http_requests_total", status="400", **route) >= 1
    assert metric(body, "imgsearch_http_request_duration_seconds_count", **route) >= 6
    # a tenant's three rows are scanned exactly; an admin's unfiltered search is one HNSW pass
    exact = metric(body, "imgsearch_search_plans_total", strategy="exact")
    assert exact - metric(before, "imgsearch_search_plans_total", strategy="exact") == 5
    with api.client(api.key(admin=True)) as admin:
        assert admin.post("/v1/search", json={"vector": unit(DIM, 0).tolist(), "k": 1}).status_code == 200
    body = httpx.get(f"{api.url}/metrics").text
    hnsw = metric(body, "imgsearch_search_plans_total", strategy="hnsw")
    assert hnsw - metric(before, "imgsearch_search_plans_total", strategy="hnsw") == 1
    assert metric(body, "imgsearch_images", state="ready") >= 3
    assert "imgsearch_queue_depth" in body and metric(body, "imgsearch_broker_up") == 1
    assert metric(body, "imgsearch_webhook_deliveries", state="pending") >= 0  # deliveries, failures, lag
    assert metric(body, "imgsearch_webhook_lag_seconds") >= 0 and "imgsearch_webhook_disabled_endpoints" in body
    assert metric(body, "imgsearch_webhook_failing_deliveries") >= 0
    # no worker answers search_text here; a listener's connection (what a worker makes once its
    # model is loaded: tests/work/test_text_requests.py) counts
    assert "imgsearch_text_workers 0.0" in body.splitlines()
    with psycopg.connect(
        libpq_conninfo(make_url(api.database_url)), application_name=text_requests.LISTENER_NAME
    ):
        assert metric(httpx.get(f"{api.url}/metrics").text, "imgsearch_text_workers") == 1
    lines = [json.loads(line) for line in api.log_text().splitlines() if line.startswith("{")]
    mine = [line for line in lines if line.get("request_id") == "trace-abc.123"]
    assert len(mine) == 1
    (entry,) = mine
    assert entry["message"] == "request" and entry["logger"] == "imgsearch.server.access"
    assert (entry["method"], entry["path"], entry["route"], entry["status"]) == (
        "GET",
        "/v1/status",
        "/v1/status",
        200,
    )
    assert entry["tenant"] == tenant and entry["duration_ms"] > 0 and entry["time"].endswith("Z")


def test_concurrent_text_queries_share_forward_passes(api: Api, tenant: str) -> None:
    key = api.key(tenant)
    with api.client(key) as client:
        client.post("/v1/images", json={"items": [{"embedding": unit(DIM, 1).tolist(), "product_id": "p"}]})
        client.post("/v1/search", json={"text": "warm up the model"})
    before = httpx.get(f"{api.url}/metrics").text
    queries = [f"query number {i} {tenant}" for i in range(16)]
    results: dict[str, list[dict[str, object]]] = {}
    barrier = threading.Barrier(len(queries))

    def ask(query: str) -> None:
        with api.client(key) as client:
            barrier.wait()
            response = client.post("/v1/search", json={"text": query})
            assert response.status_code == 200, response.text
            results[query] = response.json()["hits"]

    threads = [threading.Thread(target=ask, args=(q,)) for q in queries]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = httpx.get(f"{api.url}/metrics").text
    embedded = metric(after, "imgsearch_query_embeddings_total", kind="text") - metric(
        before, "imgsearch_query_embeddings_total", kind="text"
    )
    passes = metric(after, "imgsearch_query_forward_passes_total", kind="text") - metric(
        before, "imgsearch_query_forward_passes_total", kind="text"
    )
    assert embedded == 16
    assert passes < 16, f"{passes} forward passes for 16 concurrent queries"
    # the same answers as one at a time (the text cache remembers them now: ask with its key)
    with api.client(key) as client:
        for query in queries[:4]:
            assert client.post("/v1/search", json={"text": query}).json()["hits"] == results[query]


def test_several_server_processes(
    server_url: str, template_db: str, tiny_siglip: Path, tmp_path: Path
) -> None:
    api = start_api(new_database(server_url, template_db), tiny_siglip, tmp_path, "--workers", "2")
    try:
        key = api.key("t")
        with api.client(key) as client:
            client.post(
                "/v1/images", json={"items": [{"embedding": unit(DIM, 1).tolist(), "product_id": "p"}]}
            )
        for _ in range(20):
            with api.client(key) as client:  # a new connection each time: the processes share the port
                assert client.post("/v1/search", json={"vector": unit(DIM, 1).tolist()}).status_code == 200
        text_ = httpx.get(f"{api.url}/metrics").text
        assert (
            metric(text_, "imgsearch_http_requests_total", method="POST", route="/v1/search", status="200")
            == 20
        )
        lines = [json.loads(line) for line in api.log_text().splitlines() if line.startswith("{")]
        serving = {line["pid"] for line in lines if line["message"].startswith("serving ")}
        assert len(serving) == 2, "two processes, each with its own catalog"
    finally:
        api.stop()


def test_the_page_is_served_with_a_content_security_policy(api: Api) -> None:
    page = httpx.get(f"{api.url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert 'input type="password"' in page.text and 'type="search"' in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        assert httpx.get(f"{api.url}{asset}").status_code == 200
