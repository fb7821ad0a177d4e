"""Operations: ``/healthz`` (liveness), ``/readyz`` (database, migrations, model), ``/metrics``
(Prometheus), and ``/problems/{type}`` (what each error type means)."""

from __future__ import annotations

import contextlib
import html
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from imgsearch.catalog import Catalog
from imgsearch.db import migrate, vector_index
from imgsearch.hooks.outbox import Stats
from imgsearch.server.metrics import CatalogCollector, Metrics
from imgsearch.server.problems import PROBLEM_TYPES, problem
from imgsearch.work import progress, text_requests, wake

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return str(orig).strip().splitlines()[0] if str(orig).strip() else type(exc).__name__


@router.get("/readyz", summary="Readiness: database, migrations and model")
def readyz(request: Request) -> Response:
    """200 when the database answers, its schema is at the migrations' head and the model is
    loaded (when the server was started with `--preload`); else 503 naming what isn't ready."""
    state = request.app.state
    catalog: Catalog | None = getattr(state, "catalog", None)
    checks: dict[str, str] = {}
    if catalog is None:
        checks["database"] = "not connected yet"
    else:
        try:
            with catalog.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
            current = migrate.current(catalog.engine)
            checks["migrations"] = (
                "ok" if current == state.migrations_head else f"at {current}, head is {state.migrations_head}"
            )
        except Exception as exc:
            checks.setdefault("database", f"unreachable: {_first_line(exc)}")
    checks["model"] = state.model_state.describe()
    failing = {name: value for name, value in checks.items() if value not in ("ok", "not required")}
    if failing:
        detail = "; ".join(f"{name}: {value}" for name, value in failing.items())
        return problem(503, "unavailable", "Not ready", detail, request, checks=checks)
    return JSONResponse({"status": "ready", "checks": checks})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(request: Request) -> Response:
    state = request.app.state
    catalog: Catalog | None = getattr(state, "catalog", None)
    registry: Metrics = state.metrics
    collector = None
    if catalog is not None:

        def read() -> tuple[dict[str, int], int | None, int | None]:
            # a scrape still answers, with what it can read
            counts: dict[str, int] = {}
            answering: int | None = None
            with contextlib.suppress(Exception):
                counts = progress.status(catalog.engine, errors=0).counts
            with contextlib.suppress(Exception), catalog.engine.connect() as conn:
                answering = text_requests.listening(conn)
            return counts, wake.queue_depth(catalog.settings.redis_url, catalog.settings.queue), answering

        def hooks() -> Stats | None:
            with contextlib.suppress(Exception):
                return catalog.webhooks.stats()
            return None

        def indexes() -> dict[str, str] | None:
            with contextlib.suppress(Exception), catalog.engine.connect() as conn:
                return vector_index.index_states(conn)
            return None

        replicas = catalog.replicas
        collector = CatalogCollector(read, replicas.lags if replicas else None, hooks, indexes)
    return Response(registry.exposition(collector), media_type=CONTENT_TYPE_LATEST)


@router.get("/problems/{kind}", include_in_schema=False)
def problem_type(kind: str, request: Request) -> Response:
    if kind not in PROBLEM_TYPES:
        return problem(404, "not-found", "Not found", f"no problem type {kind!r}", request)
    body: Any = (
        f"<!DOCTYPE html><html lang='en'><meta charset='utf-8'><title>{html.escape(kind)}</title>"
        f"<h1>{html.escape(kind)}</h1><p>{html.escape(PROBLEM_TYPES[kind])}</p></html>"
    )
    return HTMLResponse(body)
