"""Webhooks: a shop's endpoints (:mod:`.endpoints`), the outbox of its events (:mod:`.outbox`,
with the row triggers of migration 0037), their signature (:mod:`.signing`, the Standard Webhooks
scheme) and their delivery by workers (:mod:`.delivery`)."""

EVENT_TYPES = (
    "image.ready",
    "image.failed",
    "image.deleted",
    "product.updated",
    "model.activated",
    "boosts.refreshed",
    "finetune.finished",
)
