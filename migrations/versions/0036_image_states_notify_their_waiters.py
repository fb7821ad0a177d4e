"""An image that becomes ready or fails tells those waiting for it: a row trigger on
``imgsearch.images`` sends ``NOTIFY imgsearch_image_state, '<image id>'``, delivered when the
worker's transaction commits (never for one that rolls back); not in Citus mode (see upgrade). ``catalog.wait_ready``,
``GET /v1/images/{id}?wait=S`` and ``imgsearch status --wait`` listen on it
(:mod:`imgsearch.work.ready`).

Each definition is held whole (imgsearch/db/sql/, docs/architecture.md "Where a console function
lives").

Revision ID: 0036
Revises: 0035
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import op

from imgsearch.db import citus, definitions

revision: str = "0036"
down_revision: str | None = "0035"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOTIFY_IMAGE_STATE = r"""CREATE OR REPLACE FUNCTION imgsearch._notify_image_state()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    -- the id alone: a waiter reads the state through its own tenant's scope
    PERFORM pg_notify('imgsearch_image_state', NEW.id::text);
    RETURN NULL;
END
$function$;
"""

TRIGGER = r"""CREATE OR REPLACE TRIGGER images_state_notify AFTER UPDATE OF state ON imgsearch.images FOR EACH ROW WHEN (new.state IN ('ready', 'failed') AND old.state IS DISTINCT FROM new.state) EXECUTE FUNCTION imgsearch._notify_image_state();
"""


def upgrade() -> None:
    conn = op.get_bind()
    definitions.run(conn, NOTIFY_IMAGE_STATE)
    # not on a Citus cluster's distributed images: a shard's NOTIFY can't join Citus's two-phase
    # commit, and its node's listeners aren't the coordinator's (waiters read the states there)
    if not citus.is_distributed(conn):
        definitions.run(conn, TRIGGER)


def downgrade() -> None:
    conn = op.get_bind()
    if not citus.is_distributed(conn):  # Citus takes no trigger statement on a distributed table
        op.execute("DROP TRIGGER images_state_notify ON imgsearch.images")
    op.execute("DROP FUNCTION imgsearch._notify_image_state()")
