"""The outbox: an event is written in the transaction of its change, for shops with an endpoint,
never for a change that rolled back, and each tenant sees its own alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
from sqlalchemy import text

from imgsearch import Catalog
from imgsearch.access import tenancy
from imgsearch.errors import InvalidInput, NotFound
from imgsearch.settings import Settings
from imgsearch.work import reembed
from tests.helpers import unit


@pytest.fixture
def catalog(database_url: str, tiny_siglip: Path) -> Iterator[Catalog]:
    settings = Settings(model=str(tiny_siglip), webhook_allow=["127.0.0.1/32"])
    with Catalog.open(database_url, settings=settings) as opened:
        yield opened


def events(catalog: Catalog, tenant: str | None = None) -> list[tuple[str, dict[str, object]]]:
    with catalog.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT type, data FROM imgsearch.webhook_events "
                "WHERE CAST(:t AS text) IS NULL OR tenant = :t ORDER BY id"
            ),
            {"t": tenant},
        ).all()
    return [(r.type, r.data) for r in rows]


def test_no_endpoint_no_event_and_each_change_writes_its_event_with_it(catalog: Catalog) -> None:
    catalog.add(embedding=unit(catalog.dim, 1), tenant="acme", product_id="p0")
    assert events(catalog) == []  # a shop without webhooks keeps no outbox
    created = catalog.webhooks.add("http://127.0.0.1:9/hooks", tenant="acme")
    assert created.secret.startswith("whsec_") and len(created.secret) > 40
    image = catalog.add(embedding=unit(catalog.dim, 2), tenant="acme", product_id="p1", title="a mug")
    catalog.add(embedding=unit(catalog.dim, 3), tenant="acme", product_id="p1")  # a second photo: no change
    catalog.update_product("p1", tenant="acme", price=12)
    catalog.update_product("p1", tenant="acme", price=12)  # the same price again: nothing changed
    catalog.delete(image, tenant="acme")
    second = image + 1
    assert events(catalog) == [
        ("image.ready", {"image_id": image, "product_id": "p1", "tenant": "acme"}),
        ("image.ready", {"image_id": second, "product_id": "p1", "tenant": "acme"}),
        ("product.updated", {"product_id": "p1", "tenant": "acme", "changed": ["price"]}),
        ("image.deleted", {"image_id": image, "product_id": "p1", "tenant": "acme"}),
    ]
    with catalog.engine.connect() as conn:
        deliveries = conn.execute(
            text("SELECT endpoint_id, state, ordering_key FROM imgsearch.webhook_deliveries ORDER BY id")
        ).all()
    assert [(d.endpoint_id, d.state) for d in deliveries] == [(created.id, "pending")] * 4
    assert deliveries[0].ordering_key == deliveries[3].ordering_key == f"image:{image}"


def test_a_failed_image_says_why_and_a_rolled_back_change_sends_nothing(catalog: Catalog) -> None:
    catalog.webhooks.add("http://127.0.0.1:9/hooks", tenant="acme", events=["image.failed"])
    ids = catalog.add_many([{"embedding": unit(catalog.dim, 3), "tenant": "acme", "product_id": "p3"}])
    with pytest.raises(RuntimeError), catalog.engine.begin() as conn:
        conn.execute(text("UPDATE imgsearch.images SET state = 'pending' WHERE id = :i"), {"i": ids[0]})
        conn.execute(
            text("UPDATE imgsearch.images SET state = 'failed', error = 'not an image' WHERE id = :i"),
            {"i": ids[0]},
        )
        assert [e[0] for e in events(catalog)] == []  # another transaction sees nothing yet
        raise RuntimeError("the change rolls back")
    assert events(catalog) == []
    with catalog.engine.begin() as conn:
        conn.execute(text("UPDATE imgsearch.images SET state = 'pending' WHERE id = :i"), {"i": ids[0]})
        conn.execute(
            text("UPDATE imgsearch.images SET state = 'failed', error = 'not an image' WHERE id = :i"),
            {"i": ids[0]},
        )
    # only the types the endpoint takes: image.ready went to no one and was not kept
    assert [t for t, _ in events(catalog)] == ["image.failed"]
    assert events(catalog)[0][1]["reason"] == "not an image"


def test_catalog_wide_changes_reach_every_shop_with_an_endpoint(catalog: Catalog, tiny_siglip: Path) -> None:
    catalog.add(embedding=unit(catalog.dim, 4), tenant="acme", product_id="p4")
    catalog.webhooks.add("http://127.0.0.1:9/a", tenant="acme", events=["model.activated", "boosts.refreshed"])
    catalog.webhooks.add("http://127.0.0.1:9/g", tenant="globex", events=["model.activated"])
    other = catalog.add_model("other-vectors", catalog.dim)
    reembed.activate(catalog.engine, other.name, requeue_missing=True)
    catalog.refresh_boosts()
    assert [t for t, _ in events(catalog, "acme")] == ["model.activated", "boosts.refreshed"]
    assert [t for t, _ in events(catalog, "globex")] == ["model.activated"]
    assert events(catalog, "globex")[0][1]["model"] == "other-vectors"


def test_tenants_see_their_own_endpoints_and_events_alone(catalog: Catalog) -> None:
    a = catalog.webhooks.add("http://127.0.0.1:9/a", tenant="acme")
    catalog.webhooks.add("http://127.0.0.1:9/g", tenant="globex")
    catalog.add(embedding=unit(catalog.dim, 5), tenant="globex", product_id="g1")
    with tenancy.begin(catalog.engine, "acme") as conn:
        assert conn.execute(text("SELECT id FROM imgsearch.webhook_endpoints")).scalars().all() == [a.id]
        assert conn.execute(text("SELECT count(*) FROM imgsearch.webhook_events")).scalar() == 0
    assert [e.url for e in catalog.webhooks.list("acme")] == ["http://127.0.0.1:9/a"]
    with pytest.raises(NotFound, match="no webhook endpoint"):
        catalog.webhooks.remove(a.id, tenant="globex")
    assert len(catalog.webhooks.list()) == 2


def test_a_console_login_writes_no_event_and_reads_no_product_of_another_shop(catalog: Catalog) -> None:
    password = "s3cret-enough"
    catalog.webhooks.add("http://127.0.0.1:9/a", tenant="acme")
    theirs = catalog.add(embedding=unit(catalog.dim, 6), tenant="globex", product_id="g-secret")
    ours = catalog.add(embedding=unit(catalog.dim, 7), tenant="acme", product_id="a1")
    with catalog.engine.begin() as conn:
        pks = dict(conn.execute(text("SELECT id, product_pk FROM imgsearch.images")).all())
    tenancy.create_login(catalog.engine, "acme_console_hooks", "acme", password)
    url = catalog.engine.url
    with psycopg.connect(
        host=url.query["host"], dbname=url.database, user="acme_console_hooks", password=password
    ) as conn:
        # an image event's payload, asked for directly, reads products under the login's own rules
        data = "SELECT imgsearch._image_event_data(%s, %s, %s)"
        mine = conn.execute(data, (ours, "acme", pks[ours])).fetchone()
        other = conn.execute(data, (theirs, "globex", pks[theirs])).fetchone()
        assert mine is not None and mine[0] == {"image_id": ours, "tenant": "acme", "product_id": "a1"}
        assert other is not None and other[0]["product_id"] is None
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT imgsearch._webhook_event('globex', 'image.ready', '{}', NULL)")


@pytest.mark.parametrize(
    ("url", "events", "message"),
    [
        ("", None, "must be an http"),
        ("ftp://example.com/x", None, "must be an http"),
        ("http://10.0.0.5/hooks", None, "not at a public address"),
        ("http://127.0.0.2:8000/hooks", None, "not at a public address"),  # 127.0.0.1 alone allowed
        ("http://[::ffff:169.254.169.254]/", None, "not at a public address"),
        ("https://example.com/" + "a" * 3000, None, "over 2048"),
        ("https://example.com/hooks", ["image.ready", "image.exploded"], "unknown event type 'image.exploded'"),
        ("https://example.com/hooks", [], "at least one"),
        ("https://example.com/hooks'; DROP TABLE imgsearch.images; --", None, "spaces or control characters"),
        ("https://example.com/hooks", 7, "list of event types"),
        ("https://example.com/hooks", "image.ready,'; DROP TABLE x", "unknown event type"),
        (42, None, "must be an http"),
    ],
)
def test_bad_endpoints_are_refused_naming_why(catalog: Catalog, url: object, events: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        catalog.webhooks.add(url, tenant="acme", events=events)  # type: ignore[arg-type]
    assert catalog.webhooks.list() == []


def test_a_public_name_is_accepted_and_checked_again_at_each_delivery(catalog: Catalog) -> None:
    created = catalog.webhooks.add("https://hooks.example.com/imgsearch", tenant="acme", events="image.ready")
    [endpoint] = catalog.webhooks.list("acme")
    assert (endpoint.id, endpoint.events, endpoint.pending) == (created.id, ["image.ready"], 0)
    assert np.isfinite(catalog.webhooks.stats().lag_seconds)


def test_localhost_by_name_is_refused_unless_allowed() -> None:
    from imgsearch.hooks.endpoints import check_url
    from imgsearch.ingest.downloads import Downloads

    with pytest.raises(InvalidInput, match="IMGSEARCH_WEBHOOK_ALLOW"):
        check_url("http://localhost:8000/hooks", Downloads())
    with pytest.raises(InvalidInput, match="not at a public address"):
        check_url("http://api.localhost/hooks", Downloads())
    assert check_url(" https://hooks.example.com/x ", Downloads()) == "https://hooks.example.com/x"


def test_an_import_writes_each_ready_image_its_event_in_order_and_none_for_a_shop_without_webhooks(
    catalog: Catalog,
) -> None:
    """Migration 0047's statement trigger: the events the row trigger wrote, one per image added
    ready, in id order with its product, for shops with an endpoint taking image.ready only."""
    catalog.webhooks.add("http://127.0.0.1:9/hooks", tenant="acme", events=["image.ready"])
    catalog.webhooks.add("http://127.0.0.1:9/other", tenant="initech", events=["product.updated"])
    rows = [
        {"embedding": unit(catalog.dim, 10 + i), "tenant": tenant, "product_id": f"{tenant}-{i % 2}"}
        for i, tenant in enumerate(["acme", "globex", "acme", "initech", "acme", "globex"])
    ]
    catalog.import_vectors(rows)
    with catalog.engine.connect() as conn:
        ids = dict(
            conn.execute(
                text(
                    "SELECT i.id, p.product_id FROM imgsearch.images i JOIN imgsearch.products p ON p.id = i.product_pk"
                    " WHERE i.tenant = 'acme' ORDER BY i.id"
                )
            ).all()
        )
        keys = conn.execute(text("SELECT ordering_key FROM imgsearch.webhook_events ORDER BY id")).scalars().all()
    assert len(ids) == 3
    assert events(catalog) == [
        ("image.ready", {"image_id": image, "product_id": product, "tenant": "acme"}) for image, product in ids.items()
    ]
    assert keys == [f"image:{image}" for image in ids]
