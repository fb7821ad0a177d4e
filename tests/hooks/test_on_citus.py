"""Webhooks on a Citus cluster: the outbox's tables live with each shop's shards, the shards'
triggers write the events of their rows, and deliveries are claimed shop by shop and arrive
signed; a shop's endpoints and events stay its own."""

from __future__ import annotations

import random
import time
from pathlib import Path

from sqlalchemy import text

from imgsearch import Catalog
from imgsearch.access import tenancy
from imgsearch.settings import Settings
from tests.citus import CitusCluster
from tests.helpers import unit
from tests.hooks.receiver import Receiver, serving


def test_events_of_each_shop_are_written_on_its_shards_and_delivered(
    citus_cluster: CitusCluster, tiny_siglip: Path
) -> None:
    url = citus_cluster.create_catalog("citus_webhooks")
    settings = Settings(model=str(tiny_siglip), webhook_allow=["127.0.0.1/32"], webhook_timeout_seconds=5)
    acme, globex = Receiver(), Receiver()
    with serving(acme), serving(globex), Catalog.open(url, settings=settings) as catalog:
        with catalog.engine.connect() as conn:
            distributed = conn.execute(
                text(
                    "SELECT logicalrelid::text FROM pg_dist_partition WHERE colocationid = "
                    "(SELECT colocationid FROM pg_dist_partition WHERE logicalrelid = 'imgsearch.products'::regclass)"
                    " AND logicalrelid::text LIKE '%webhook%' ORDER BY 1"
                )
            ).scalars().all()
        assert distributed == ["imgsearch.webhook_deliveries", "imgsearch.webhook_endpoints", "imgsearch.webhook_events"]
        acme.secrets = [catalog.webhooks.add(acme.url, tenant="acme").secret]
        globex.secrets = [catalog.webhooks.add(globex.url, tenant="globex", events=["image.deleted"]).secret]
        ids = catalog.add_many(
            [{"embedding": unit(catalog.dim, i), "tenant": ("acme", "globex")[i % 2], "product_id": f"p{i}"}
             for i in range(10)]
        )  # fmt: skip
        catalog.update_product("p0", tenant="acme", price=9)
        catalog.delete(ids[1], tenant="globex")
        deadline = time.monotonic() + 60
        while catalog.webhooks.stats().pending and time.monotonic() < deadline:
            catalog.webhooks.deliver(random.Random(0))
        with tenancy.begin(catalog.engine, "globex") as conn:
            assert conn.execute(text("SELECT count(*) FROM imgsearch.webhook_endpoints")).scalar() == 1
    assert sorted(m["body"]["data"]["image_id"] for m in acme.events("image.ready")) == ids[0::2]
    assert [m["body"]["data"]["product_id"] for m in acme.events("product.updated")] == ["p0"]
    assert [m["body"]["data"]["image_id"] for m in globex.events()] == [ids[1]]  # the one type it took
    assert acme.rejected == globex.rejected == []
