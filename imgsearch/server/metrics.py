"""Prometheus metrics of the HTTP service, through prometheus-client.

Counted in the process: requests and their latency per route, the plans searches took, query
forward passes. Read from the catalog at each scrape: images per state (all tenants), the Celery
queue's depth, and whether each model's HNSW index is valid. With ``imgsearch serve --workers N``
the processes write their counts to ``PROMETHEUS_MULTIPROC_DIR`` (set by the command) and a scrape
of any of them adds them up.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from imgsearch.hooks.outbox import Stats
from imgsearch.search.plans import Plan

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """The service's counters, on a registry of its own (several apps in one process don't clash)."""

    def __init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream; no `_created` series
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "imgsearch_http_requests",
            "HTTP requests by method, route and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "imgsearch_http_request_duration_seconds",
            "Time from a request's arrival to its response, by method and route.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.search_plans = Counter(
            "imgsearch_search_plans",
            "Search statements by strategy: exact, hnsw (one pass), hnsw_iterative or codes.",
            ["strategy"],
            registry=self.registry,
        )
        self.query_embeddings = Counter(
            "imgsearch_query_embeddings",
            "Text and image queries embedded by a forward pass (not from the text cache), by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.query_passes = Counter(
            "imgsearch_query_forward_passes",
            "Forward passes run for queries, by kind; queries / passes is the micro-batches' mean size.",
            ["kind"],
            registry=self.registry,
        )

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def observe_plan(self, plan: Plan) -> None:
        self.search_plans.labels(plan.strategy).inc()

    def observe_query_batch(self, kind: str, size: int) -> None:
        self.query_passes.labels(kind).inc()
        self.query_embeddings.labels(kind).inc(size)

    def exposition(self, catalog_collector: Collector | None) -> bytes:
        """The text a scrape gets: this process's metrics, or every process's in multiprocess
        mode, with the catalog's gauges."""
        if multiprocess_dir():
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # untyped upstream
        else:
            registry = self.registry
        output = generate_latest(registry)
        if catalog_collector is not None:
            extra = CollectorRegistry()
            extra.register(catalog_collector)
            output += generate_latest(extra)
        return output


class CatalogCollector(Collector):
    """Images per state, queue depth and the workers answering ``search_text``, read when scraped
    (``read`` returns the three; a depth of None: the broker can't be reached; a worker count of
    None: the database can't)."""

    def __init__(
        self,
        read: Callable[[], tuple[dict[str, int], int | None, int | None]],
        lags: Callable[[], dict[str, float | None]] | None = None,
        webhooks: Callable[[], Stats | None] | None = None,
        indexes: Callable[[], dict[str, str] | None] | None = None,
    ) -> None:
        self._read = read
        self._lags = lags
        self._webhooks = webhooks
        self._indexes = indexes

    def collect(self) -> Iterator[Any]:
        if self._lags is not None:
            lags = self._lags()
            lag = GaugeMetricFamily(
                "imgsearch_replica_lag_seconds",
                "How far each replica is behind the primary.",
                labels=["replica"],
            )
            up = GaugeMetricFamily(
                "imgsearch_replica_up", "Whether each replica answers.", labels=["replica"]
            )
            for name, seconds in lags.items():
                up.add_metric([name], 0 if seconds is None else 1)
                if seconds is not None:
                    lag.add_metric([name], seconds)
            yield lag
            yield up
        counts, depth, answering = self._read()
        images = GaugeMetricFamily("imgsearch_images", "Images in the catalog by state.", labels=["state"])
        for state, count in counts.items():
            images.add_metric([state], count)
        yield images
        if depth is not None:
            yield GaugeMetricFamily(
                "imgsearch_queue_depth", "Wake-up messages waiting in the Celery queue.", value=depth
            )
        yield GaugeMetricFamily(
            "imgsearch_broker_up", "Whether the Celery broker answered.", value=0 if depth is None else 1
        )
        hooks = self._webhooks() if self._webhooks is not None else None
        if hooks is not None:
            deliveries = GaugeMetricFamily(
                "imgsearch_webhook_deliveries", "Webhook deliveries by state.", labels=["state"]
            )
            for state in ("pending", "delivered", "dead"):
                deliveries.add_metric([state], getattr(hooks, state))
            yield deliveries
            yield GaugeMetricFamily(
                "imgsearch_webhook_lag_seconds", "How long the oldest pending delivery has waited.",
                value=hooks.lag_seconds,
            )  # fmt: skip
            yield GaugeMetricFamily(
                "imgsearch_webhook_failing_deliveries", "Pending deliveries whose last attempt failed.",
                value=hooks.failing,
            )  # fmt: skip
            yield GaugeMetricFamily(
                "imgsearch_webhook_disabled_endpoints", "Endpoints disabled after failing too long.",
                value=hooks.disabled_endpoints,
            )  # fmt: skip
        states = self._indexes() if self._indexes is not None else None
        if states is not None:
            valid = GaugeMetricFamily(
                "imgsearch_hnsw_index_valid",
                "Whether each registered model's HNSW index is there and valid (0: a build was "
                "interrupted or the index is missing; its searches scan every row).",
                labels=["model"],
            )
            for name, state in states.items():
                valid.add_metric([name], 1 if state == "valid" else 0)
            yield valid
        if answering is not None:
            yield GaugeMetricFamily(
                "imgsearch_text_workers",
                "Workers answering the SQL function imgsearch.search_text (their model loaded).",
                value=answering,
            )
