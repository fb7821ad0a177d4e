"""``catalog.webhooks``: a tenant's endpoints, replays and the delivery figures, over
:mod:`.endpoints`, :mod:`.outbox` and :mod:`.delivery`."""

from __future__ import annotations

import builtins
import random
from typing import Any

from sqlalchemy import Engine

from imgsearch.hooks import delivery, endpoints, outbox


class Webhooks:
    """A catalog's webhooks. Workers deliver (a running ``imgsearch worker``); :meth:`deliver`
    sends one batch from this process, for a script or a test without one."""

    def __init__(self, engine: Engine, policy: delivery.Policy) -> None:
        self.engine, self.policy = engine, policy

    def add(self, url: str, *, tenant: str, events: Any = None) -> endpoints.Created:
        """A new endpoint of ``tenant`` for ``events`` (every type when None): its id and its
        secret (``whsec_...``), shown this once."""
        return endpoints.add(self.engine, tenant, url, events, policy=self.policy.network)

    def list(self, tenant: str | None = None) -> list[endpoints.Endpoint]:
        """``tenant``'s endpoints (every tenant's without one), with their deliveries' counts."""
        return endpoints.listed(self.engine, tenant)

    def remove(self, endpoint_id: int, *, tenant: str) -> None:
        """Remove an endpoint and its deliveries still to go; :class:`NotFound` if it isn't ``tenant``'s."""
        endpoints.remove(self.engine, tenant, endpoint_id)

    def rotate_secret(self, endpoint_id: int, *, tenant: str) -> endpoints.Created:
        """A new secret (deliveries are signed under the old one too for a day); a disabled
        endpoint is enabled again."""
        return endpoints.rotate(self.engine, tenant, endpoint_id)

    def replay(self, *, tenant: str, since: Any, until: Any = None, endpoint_id: int | None = None) -> int:
        """Queue ``tenant``'s events from ``since`` to ``until`` again; the deliveries queued."""
        return outbox.replay(self.engine, tenant, since, until, endpoint_id)

    def stats(self) -> outbox.Stats:
        """Deliveries pending, delivered and dead, the oldest pending one's age, disabled endpoints."""
        return outbox.stats(self.engine)

    def deliver(self, rng: random.Random | None = None) -> builtins.list[tuple[delivery.Claimed, delivery.Outcome]]:
        """Deliver one batch of due deliveries now; what was attempted."""
        return delivery.deliver_due(self.engine, self.policy, rng)
