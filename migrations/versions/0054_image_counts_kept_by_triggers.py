"""Images per state kept by triggers: a catalog's status reads a few rows, not every image.

``/v1/status``, ``/metrics`` and ``imgsearch status`` (whose ``--wait`` reads again each time an
image turns ready) counted the images per state and looked for the latest failures by reading
every image: 19 ms at 100k images, O(images) (bench/work/status.py). Now:

* ``image_counts``: an append-only log of signed counts per (tenant, state), appended by
  statement-level triggers with transition tables on ``images`` (insert, update, delete: an
  update that moves no image between states appends nothing) and emptied by a truncate. Writers
  only append (no row is a hot spot for concurrent workers); a read sums a shop's rows, and
  ``imgsearch.compact_image_counts`` folds them when they pile up, as the facet counts of
  migration 0039 are folded.
* ``images_failed_idx`` (tenant, updated_at, id) over failed images: the latest failures read
  from the failures alone.
* ``images_waiting_idx`` (tenant, created_at) over pending and embedding images: a shop's oldest
  waiting image is one probe.

Exact, as the counting statement that a Citus coordinator keeps (:func:`imgsearch.db.citus.distribute`
drops these triggers). Each definition is held whole (imgsearch/db/sql/).

Revision ID: 0054
Revises: 0053
Create Date: 2026-11-29
"""

from collections.abc import Sequence

from alembic import op

from imgsearch.db import citus, definitions

revision: str = "0054"
down_revision: str | None = "0053"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLES = "imgsearch_app, imgsearch_console, imgsearch_worker, imgsearch_admin"

CREATE = """
CREATE TABLE imgsearch.image_counts (
    tenant text NOT NULL,
    state text NOT NULL,
    n bigint NOT NULL
);
CREATE INDEX image_counts_tenant_idx ON imgsearch.image_counts (tenant);
"""
# one statement each: Citus refuses a distributed table's CREATE INDEX sent among others ("cannot
# insert multiple commands into a prepared statement")
INDEXES = (
    "CREATE INDEX images_failed_idx ON imgsearch.images (tenant, updated_at, id) WHERE state = 'failed'",
    "CREATE INDEX images_waiting_idx ON imgsearch.images (tenant, created_at) WHERE state IN ('pending', 'embedding')",
)

FUNCTIONS = r"""
CREATE OR REPLACE FUNCTION imgsearch._image_counts_follow()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    -- the images a statement added, removed or moved between states, as signed counts per
    -- (tenant, state) appended to imgsearch.image_counts; an update that moves none appends nothing
    IF TG_OP = 'INSERT' THEN
        INSERT INTO imgsearch.image_counts (tenant, state, n)
        SELECT a.tenant, a.state, count(*) FROM added a GROUP BY 1, 2;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO imgsearch.image_counts (tenant, state, n)
        SELECT r.tenant, r.state, -count(*) FROM removed r GROUP BY 1, 2;
    ELSE
        INSERT INTO imgsearch.image_counts (tenant, state, n)
        SELECT m.tenant, m.state, sum(m.n)
        FROM (SELECT a.tenant, a.state, 1 AS n FROM added a
              UNION ALL SELECT r.tenant, r.state, -1 FROM removed r) AS m
        GROUP BY 1, 2 HAVING sum(m.n) <> 0;
    END IF;
    RETURN NULL;
END
$function$;

CREATE OR REPLACE FUNCTION imgsearch._image_counts_truncated()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    TRUNCATE imgsearch.image_counts;
    RETURN NULL;
END
$function$;

CREATE OR REPLACE FUNCTION imgsearch.compact_image_counts(tenant text)
 RETURNS bigint
 LANGUAGE sql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    -- a shop's counts (NULL: every shop's) folded into one row per state: the rows it deletes
    -- are those it sums (a count a concurrent writer appends meanwhile stays beside them)
    WITH gone AS (
        DELETE FROM imgsearch.image_counts c
        WHERE c.tenant = compact_image_counts.tenant OR compact_image_counts.tenant IS NULL
        RETURNING c.tenant, c.state, c.n
    ), folded AS (
        INSERT INTO imgsearch.image_counts (tenant, state, n)
        SELECT g.tenant, g.state, sum(g.n) FROM gone g GROUP BY 1, 2 HAVING sum(g.n) <> 0
        RETURNING 1
    )
    SELECT count(*) FROM folded
$function$;
"""

TRIGGERS = r"""CREATE OR REPLACE TRIGGER images_counts_added AFTER INSERT ON imgsearch.images REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION imgsearch._image_counts_follow();

CREATE OR REPLACE TRIGGER images_counts_moved AFTER UPDATE ON imgsearch.images REFERENCING OLD TABLE AS removed NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION imgsearch._image_counts_follow();

CREATE OR REPLACE TRIGGER images_counts_removed AFTER DELETE ON imgsearch.images REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION imgsearch._image_counts_follow();

CREATE OR REPLACE TRIGGER images_counts_truncated AFTER TRUNCATE ON imgsearch.images FOR EACH STATEMENT EXECUTE FUNCTION imgsearch._image_counts_truncated();
"""

# the images a catalog holds already, counted once its writers wait (the lock is held to commit)
BACKFILL = """
LOCK TABLE imgsearch.images IN SHARE ROW EXCLUSIVE MODE;
INSERT INTO imgsearch.image_counts (tenant, state, n)
SELECT tenant, state, count(*) FROM imgsearch.images GROUP BY 1, 2;
"""


def upgrade() -> None:
    conn = op.get_bind()
    definitions.run(conn, CREATE)
    for index in INDEXES:
        op.execute(index)
    op.execute(f"GRANT SELECT ON imgsearch.image_counts TO {ROLES}")
    op.execute("ALTER TABLE imgsearch.image_counts ENABLE ROW LEVEL SECURITY")
    op.execute(
        "CREATE POLICY tenant_app ON imgsearch.image_counts FOR SELECT TO imgsearch_app "
        "USING (tenant = imgsearch.current_tenant())"
    )
    op.execute(
        "CREATE POLICY tenant_console ON imgsearch.image_counts FOR SELECT TO imgsearch_console "
        "USING (tenant = imgsearch.login_tenant())"
    )
    op.execute(
        "CREATE POLICY all_tenants ON imgsearch.image_counts FOR SELECT TO imgsearch_admin, imgsearch_worker "
        "USING (true)"
    )
    definitions.run(conn, FUNCTIONS)
    op.execute("REVOKE EXECUTE ON FUNCTION imgsearch.compact_image_counts(text) FROM PUBLIC")
    op.execute(
        "GRANT EXECUTE ON FUNCTION imgsearch.compact_image_counts(text) "
        "TO imgsearch_app, imgsearch_console, imgsearch_worker, imgsearch_admin"
    )
    if citus.is_distributed(conn):  # a cluster counts its images: no triggers
        return
    definitions.run(conn, BACKFILL)
    definitions.run(conn, TRIGGERS)


def downgrade() -> None:
    if citus.is_distributed(op.get_bind()):
        op.execute("SET LOCAL citus.enable_unsafe_triggers = on")
    for trigger in ("images_counts_added", "images_counts_moved", "images_counts_removed", "images_counts_truncated"):
        op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON imgsearch.images")
    op.execute("DROP FUNCTION imgsearch.compact_image_counts(text)")
    op.execute("DROP FUNCTION imgsearch._image_counts_truncated()")
    op.execute("DROP FUNCTION imgsearch._image_counts_follow()")
    op.execute("DROP INDEX imgsearch.images_waiting_idx")  # one each: Citus drops a distributed index alone
    op.execute("DROP INDEX imgsearch.images_failed_idx")
    op.execute("DROP TABLE imgsearch.image_counts")
