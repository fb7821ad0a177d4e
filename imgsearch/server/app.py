"""The ASGI application: routes over one :class:`~imgsearch.Catalog` per process.

>>> app = create_app(Settings())          # doctest: +SKIP
>>> uvicorn.run(app, port=8000)           # doctest: +SKIP

Text and image queries are embedded off the event loop: routes that call the catalog run in
Starlette's thread pool, and the catalog's embedder batches the queries of concurrent requests
into one forward pass (:class:`imgsearch.embed.batching.MicroBatcher`), sharing its text cache.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool

from imgsearch.catalog import Catalog
from imgsearch.db import migrate
from imgsearch.server import openapi, problems
from imgsearch.server.deps import known_query
from imgsearch.server.keyring import Keyring
from imgsearch.server.limits import Limits
from imgsearch.server.metrics import Metrics
from imgsearch.server.middleware import RequestContext
from imgsearch.server.routes import events, images, ops, products, search, status, webhooks
from imgsearch.settings import Settings

log = logging.getLogger("imgsearch.server")

DESCRIPTION = """Postgres-native image search over HTTP.

Every `/v1` route needs `Authorization: Bearer KEY`, a key from `imgsearch tenant create-key TENANT`:
it acts for that tenant only (row-level security), or for every tenant with an `--admin` key.
Errors are RFC 9457 problem details (`application/problem+json`)."""

# the page's own files only; images come from the API (blob: URLs), or by URL for URL uploads
PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data: https: http:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


class ModelState:
    """Whether the model is loaded, for ``/readyz``: required only with ``--preload``."""

    def __init__(self, required: bool) -> None:
        self.required = required
        self.loaded = False
        self.error: str | None = None

    def describe(self) -> str:
        if not self.required:
            return "not required"
        if self.error is not None:
            return f"failed to load: {self.error}"
        return "ok" if self.loaded else "loading"

    def load_in_background(self, catalog: Catalog) -> None:
        def load() -> None:
            if catalog.active_model.external:  # its vectors come from elsewhere: nothing to load
                self.loaded = True
                return
            try:
                catalog.embedder.load()
            except Exception as exc:
                self.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                log.error("the model failed to load: %s", self.error)
            else:
                self.loaded = True
                log.info("model %s loaded", catalog.model)

        threading.Thread(target=load, name="imgsearch-preload", daemon=True).start()


def create_app(settings: Settings | None = None, *, catalog: Catalog | None = None) -> FastAPI:
    """The application for ``settings`` (default: the environment's). It opens a catalog when it
    starts, unless given one (which it then leaves open)."""
    settings = settings or Settings()
    metrics = Metrics()
    limits = Limits.from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        opened = (
            catalog if catalog is not None else await run_in_threadpool(Catalog.open, None, settings=settings)
        )
        opened.on_search_plan = metrics.observe_plan
        opened.on_query_batch = metrics.observe_query_batch
        app.state.catalog = opened
        app.state.keyring = keyring = Keyring(opened.engine.url)
        if settings.preload:
            app.state.model_state.load_in_background(opened)
        log.info("serving %s (%d-d)", opened.model, opened.dim)
        try:
            yield
        finally:
            await keyring.close()
            if catalog is None:
                opened.close()

    # /docs and /redoc load Swagger UI and ReDoc from the app (fastapi-offline's copies), not a
    # CDN: the docs work offline and behind a firewall
    app = FastAPIOffline(
        title="imgsearch",
        version=_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=[
            {"name": "images", "description": "Uploads, states, thumbnails, deletes."},
            {"name": "products", "description": "Product fields and feeds, product deletes."},
            {"name": "search", "description": "Hybrid searches and the catalog's categories."},
            {"name": "status", "description": "Embedding progress."},
            {"name": "webhooks", "description": "Endpoints told when images become searchable or fail."},
            {"name": "operations", "description": "Health, readiness, metrics (no key needed)."},
        ],
    )
    app.state.settings = settings
    app.state.limits = limits
    app.state.metrics = metrics
    app.state.model_state = ModelState(required=settings.preload)
    app.state.migrations_head = migrate.head()
    problems.install(app)
    openapi.install(app)
    routers = (images, products, search, events, status, webhooks, ops)
    for router in (module.router for module in routers):
        app.include_router(router, dependencies=[Depends(known_query)])
    _page(app)
    app.add_middleware(RequestContext, max_body_bytes=limits.max_body_bytes, metrics=metrics)
    return app


def _page(app: FastAPI) -> None:
    """The search page at ``/`` and its files at ``/static``: plain HTML, CSS and JS."""
    folder = resources.files("imgsearch.server") / "static"
    app.mount("/static", StaticFiles(directory=str(folder)), name="static")

    @app.get("/", include_in_schema=False)
    def page(request: Request) -> Response:
        return FileResponse(
            str(folder / "index.html"),
            media_type="text/html",
            headers={
                "Content-Security-Policy": PAGE_CSP,
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
                "Cache-Control": "no-cache",
            },
        )


def _version() -> str:
    from imgsearch import __version__

    return __version__


def from_environment() -> FastAPI:
    """The app for ``imgsearch serve`` (a uvicorn factory: each worker process makes its own)."""
    from imgsearch.server.middleware import configure_logging

    configure_logging()
    return create_app(Settings())
