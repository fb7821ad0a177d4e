"""When an image whose embedding failed for a passing reason may be claimed again.

A worker that can't embed an image for a transient reason (its URL's server resets or stalls,
the GPU is out of memory) gives it back as ``pending`` with ``retry_at`` set a backoff later (5 s,
then 10, 20, 40), and the reason in ``error``. Before this column it was claimable at once, so a
20-second outage of an image host burned all five attempts in seconds and failed the image for
good (bench/server/soak.py's download-reset fault found it).

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-23
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE imgsearch.images ADD COLUMN retry_at timestamptz")


def downgrade() -> None:
    op.execute("ALTER TABLE imgsearch.images DROP COLUMN retry_at")
