"""Deliveries as a receiver sees them: signed as Standard Webhooks says (checked by the receiver's
own verifier), at least once with a stable id, an image's events in order, retried with backoff,
and hostile endpoints handled with clear errors."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from imgsearch import Catalog
from imgsearch.hooks import delivery, signing
from imgsearch.settings import Settings
from tests.helpers import unit
from tests.hooks.receiver import Receiver, Unverified, serving, verify

SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_signatures_match_the_specifications_test_vector() -> None:
    body = b'{"test": 2432232314}'
    made = signing.signature(SPEC_SECRET, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    assert made == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="  # the specification's own
    headers = signing.headers([SPEC_SECRET], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    verify(SPEC_SECRET, headers, body, now=1614265330)
    with pytest.raises(Unverified):
        verify(SPEC_SECRET, headers, body + b" ", now=1614265330)
    with pytest.raises(Unverified, match="tolerance"):
        verify(SPEC_SECRET, headers, body, now=1614265330 + 3600)


@pytest.fixture
def catalog(database_url: str, tiny_siglip: Path) -> Iterator[Catalog]:
    settings = Settings(
        model=str(tiny_siglip), webhook_allow=["127.0.0.1/32"], webhook_retry_seconds=0.2,
        webhook_timeout_seconds=2,
    )  # fmt: skip
    with Catalog.open(database_url, settings=settings) as opened:
        yield opened


def deliver_all(catalog: Catalog, seconds: float = 20) -> None:
    """Deliver until nothing is pending (retries included), as a worker would."""
    deadline = time.monotonic() + seconds
    while catalog.webhooks.stats().pending and time.monotonic() < deadline:
        if not catalog.webhooks.deliver(random.Random(0)):
            time.sleep(0.1)
    assert catalog.webhooks.stats().pending == 0


def test_each_event_arrives_signed_in_the_contracts_shape(catalog: Catalog) -> None:
    with serving(Receiver()) as receiver:
        created = catalog.webhooks.add(receiver.url, tenant="acme")
        receiver.secrets = [created.secret]
        image = catalog.add(embedding=unit(catalog.dim, 1), tenant="acme", product_id="sku-1")
        deliver_all(catalog)
    [message] = receiver.events()
    assert message["body"]["type"] == "image.ready"
    assert message["body"]["data"] == {"image_id": image, "product_id": "sku-1", "tenant": "acme"}
    assert message["body"]["timestamp"].startswith(time.strftime("%Y-%m-%d", time.gmtime()))
    assert message["id"].startswith("msg_") and message["headers"]["webhook-signature"].startswith("v1,")
    assert receiver.rejected == []
    [endpoint] = catalog.webhooks.list("acme")
    assert (endpoint.delivered, endpoint.pending, endpoint.dead) == (1, 0, 0)


def test_a_receiver_that_was_down_gets_every_event_once_its_back(catalog: Catalog) -> None:
    with serving(Receiver()) as probe:
        port = probe.port
    receiver = Receiver()
    created = catalog.webhooks.add(f"http://127.0.0.1:{port}/hooks", tenant="acme")
    receiver.secrets = [created.secret]
    ids = catalog.add_many(
        [{"embedding": unit(catalog.dim, i), "tenant": "acme", "product_id": f"p{i}"} for i in range(20)]
    )
    attempted = catalog.webhooks.deliver(random.Random(0))  # nobody listens on the port
    assert len(attempted) == 20 and all("cannot connect" in (o.error or "") for _, o in attempted)
    with catalog.engine.connect() as conn:
        assert conn.execute(text("SELECT min(due_at) > now() FROM imgsearch.webhook_deliveries")).scalar()
    assert catalog.webhooks.stats().failing == 20  # the metric of deliveries waiting for a retry
    with serving(receiver, port):
        deliver_all(catalog)
    arrived = receiver.events("image.ready")
    assert sorted(m["body"]["data"]["image_id"] for m in arrived) == sorted(ids)
    assert len(receiver.messages()) == 20 and receiver.rejected == []


def test_an_images_events_go_in_order_even_when_the_first_is_retried(catalog: Catalog) -> None:
    receiver = Receiver(status=503)
    with serving(receiver):
        created = catalog.webhooks.add(receiver.url, tenant="acme")
        receiver.secrets = [created.secret]
        image = catalog.add(embedding=unit(catalog.dim, 1), tenant="acme", product_id="p1")
        catalog.update_product("p1", tenant="acme", title="renamed")
        catalog.delete(image, tenant="acme")
        first = catalog.webhooks.deliver(random.Random(0))
        # image.ready failed: image.deleted waits behind it; the product's own event goes
        assert sorted(c.type for c, _ in first) == ["image.ready", "product.updated"]
        assert all(o.error == "HTTP 503" for _, o in first)
        receiver.status = 200
        deliver_all(catalog)
    kinds = [m["body"]["type"] for m in receiver.events() if m["body"]["type"].startswith("image.")]
    assert kinds == ["image.ready", "image.deleted"]


def test_a_rotated_secret_signs_with_both_for_a_day(catalog: Catalog) -> None:
    with serving(Receiver()) as receiver:
        created = catalog.webhooks.add(receiver.url, tenant="acme", events=["product.updated"])
        catalog.add(embedding=unit(catalog.dim, 1), tenant="acme", product_id="p1")
        rotated = catalog.webhooks.rotate_secret(created.id, tenant="acme")
        assert rotated.id == created.id and rotated.secret != created.secret
        receiver.secrets = [created.secret]  # a receiver not yet told the new one
        catalog.update_product("p1", tenant="acme", price=3)
        deliver_all(catalog)
        receiver.secrets = [rotated.secret]
        catalog.update_product("p1", tenant="acme", price=4)
        deliver_all(catalog)
    assert len(receiver.events("product.updated")) == 2 and receiver.rejected == []
    assert len(receiver.raw[0]["headers"]["webhook-signature"].split(" ")) == 2


def test_replay_resends_a_time_range_with_the_same_ids(catalog: Catalog) -> None:
    with serving(Receiver()) as receiver:
        created = catalog.webhooks.add(receiver.url, tenant="acme")
        receiver.secrets = [created.secret]
        start = time.time()
        for i in range(3):
            catalog.add(embedding=unit(catalog.dim, i), tenant="acme", product_id=f"p{i}")
        deliver_all(catalog)
        queued = catalog.webhooks.replay(tenant="acme", since=time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(start - 60)))
        assert queued == 3
        deliver_all(catalog)
    assert len(receiver.raw) == 6 and len(receiver.messages()) == 3  # each id twice: the receiver drops repeats
    assert catalog.webhooks.replay(tenant="acme", since="2020-01-01", until="2020-01-02") == 0


def test_hostile_endpoints_get_clear_errors(catalog: Catalog) -> None:
    slow, huge = Receiver(delay=5), Receiver(answer_bytes=10 * 1024 * 1024)
    redirecting = Receiver(redirect_to="http://169.254.169.254/latest/meta-data/")
    with serving(slow), serving(huge), serving(redirecting):
        for receiver in (slow, huge, redirecting):
            receiver.secrets = [catalog.webhooks.add(receiver.url, tenant="acme", events=["image.ready"]).secret]
        catalog.add(embedding=unit(catalog.dim, 1), tenant="acme", product_id="p1")
        policy = catalog.webhooks.policy
        started = time.monotonic()
        attempted = {c.url: o for c, o in catalog.webhooks.deliver(random.Random(0))}
        took = time.monotonic() - started
    assert attempted[slow.url].error == "no answer within 2 s"
    assert attempted[huge.url].delivered and attempted[huge.url].status == 200  # read 64 KiB, no more
    assert attempted[redirecting.url].error == (
        "HTTP 302 redirect to http://169.254.169.254/latest/meta-data/: webhooks follow no redirect"
    )
    assert took < policy.timeout + 2  # posted side by side; none waited for another
    with catalog.engine.connect() as conn:
        kept = conn.execute(text("SELECT last_error FROM imgsearch.webhook_deliveries WHERE state = 'pending'")).scalars().all()
    assert sorted(kept) == sorted([attempted[slow.url].error, attempted[redirecting.url].error])


def test_a_name_resolving_to_a_private_address_is_refused_at_delivery(catalog: Catalog) -> None:
    with serving(Receiver()) as receiver:
        created = catalog.webhooks.add(receiver.url, tenant="acme")
        name = socket.gethostname()  # a name, checked on the address its connection goes to
        with catalog.engine.begin() as conn:
            conn.execute(
                text("UPDATE imgsearch.webhook_endpoints SET url = :u WHERE id = :i"),
                {"u": f"http://{name}:{receiver.port}/hooks", "i": created.id},
            )
        catalog.add(embedding=unit(catalog.dim, 1), tenant="acme", product_id="p1")
        public_only = delivery.Policy(timeout=2)
        [(_, outcome)] = delivery.deliver_due(catalog.engine, public_only)
    assert outcome.error is not None and "IMGSEARCH_WEBHOOK_ALLOW" in outcome.error, outcome
    assert receiver.raw == []


def test_an_endpoint_failing_past_the_give_up_time_is_disabled_with_the_reason(catalog: Catalog) -> None:
    with serving(Receiver(status=500)) as receiver:
        created = catalog.webhooks.add(receiver.url, tenant="acme")
        catalog.add(embedding=unit(catalog.dim, 1), tenant="acme", product_id="p1")
        brief = delivery.Policy(network=catalog.webhooks.policy.network, retry_seconds=0.05, give_up_hours=0.5 / 3600)
        delivery.deliver_due(catalog.engine, brief)
        time.sleep(0.6)
        delivery.deliver_due(catalog.engine, brief)
    [endpoint] = catalog.webhooks.list("acme")
    assert endpoint.disabled_at is not None and endpoint.dead == 1
    assert endpoint.disabled_reason is not None and endpoint.disabled_reason.endswith(": HTTP 500")
    catalog.add(embedding=unit(catalog.dim, 2), tenant="acme", product_id="p2")
    assert catalog.webhooks.list("acme")[0].pending == 0  # a disabled endpoint is sent nothing new
    catalog.webhooks.rotate_secret(created.id, tenant="acme")
    assert catalog.webhooks.list("acme")[0].disabled_at is None
