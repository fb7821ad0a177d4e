"""Citus mode: the catalog's tables distributed by tenant over a Citus cluster
(``imgsearch db distribute``; docs/scaling.md).

Each shop's rows (products, images, their links, embeddings, boosts, adapters, event ids, its
searches and their events) live in one shard group on one node: the tenant tables are hash-distributed on ``tenant`` and colocated
with ``products``, so a search that names its tenant is a router query to that node, and a
shop's joins and foreign keys stay on it. The small shared tables (models, API keys, logins, the
text cache, the filter-index rules) are reference tables, copied to every node.

Citus enforces a key or a foreign key only where it includes the distribution column, so
``distribute`` first makes every key of a tenant table include ``tenant`` (the ids stay unique:
an id is still drawn from one sequence) and every foreign key between tenant tables carry it.
It runs in one transaction: a cluster is either distributed or untouched. A second run finds
the catalog distributed and changes nothing.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from imgsearch.db import revisions
from imgsearch.errors import ConfigurationError

ROLES = ("imgsearch_app", "imgsearch_console", "imgsearch_worker", "imgsearch_admin")
REFERENCE = (
    "tenant_logins",
    "text_search",
    "models",
    "api_keys",
    "filter_index_rules",
    "filter_indexes",
    "binary_code_checks",
    "text_embeddings",
    "text_requests",
)
# distributed on tenant, colocated with products (the first)
DISTRIBUTED = (
    "products",
    "images",
    "image_products",
    "embeddings",
    "boosts",
    "event_ids",
    "query_adapters",
    "query_adapter_rows",
    "search_queries",  # the query log and events: partitioned by day, each partition distributed
    "search_events",
    "webhook_endpoints",  # webhooks (migration 0037): a shop's endpoints, events and deliveries
    "webhook_events",
    "webhook_deliveries",
)

# keys that become (..., tenant): (table, constraint, kind, columns)
KEYS = (
    ("products", "products_pkey", "PRIMARY KEY", "id, tenant"),
    ("images", "images_pkey", "PRIMARY KEY", "id, tenant"),
    ("image_products", "image_products_pkey", "PRIMARY KEY", "image_id, product_pk, tenant"),
    ("embeddings", "embeddings_pkey", "PRIMARY KEY", "image_id, product_pk, model_id, region, tenant"),
    ("boosts", "boosts_pkey", "PRIMARY KEY", "product_pk, query_norm, tenant"),
    ("query_adapters", "query_adapters_pkey", "PRIMARY KEY", "id, tenant"),
    ("query_adapter_rows", "query_adapter_rows_pkey", "PRIMARY KEY", 'adapter_id, "row", tenant'),
    ("search_queries", "search_queries_pkey", "PRIMARY KEY", "query_id, searched_at, tenant"),
    ("webhook_endpoints", "webhook_endpoints_pkey", "PRIMARY KEY", "id, tenant"),
    ("webhook_events", "webhook_events_pkey", "PRIMARY KEY", "id, tenant"),
    ("webhook_deliveries", "webhook_deliveries_pkey", "PRIMARY KEY", "id, tenant"),
)
# keys the new primary keys make redundant
REDUNDANT = (("products", "products_id_tenant_key"), ("images", "images_id_tenant_key"))
# Citus refuses ON DELETE SET NULL on a key that holds the distribution column: a trigger on the
# shards does what images_duplicate_of_fkey's action did (a deleted original's copies forget it)
FORGET_ORIGINAL = """
CREATE OR REPLACE FUNCTION imgsearch._forget_original() RETURNS trigger
LANGUAGE plpgsql
AS $fn$
BEGIN
    UPDATE imgsearch.images SET duplicate_of = NULL WHERE tenant = OLD.tenant AND duplicate_of = OLD.id;
    RETURN OLD;
END
$fn$
"""
REPLACED = {("images", "images_duplicate_of_fkey")}

# the filter columns' row trigger on every insert, as migration 0004 wrote it (0048 fires it on one
# node only for a row that gives neither column, the recheck of 0046 correcting the others)
PRODUCT_FILTERS_TRIGGER = (
    "CREATE TRIGGER embeddings_product_filters BEFORE INSERT OR UPDATE OF product_pk, category, price "
    "ON imgsearch.embeddings FOR EACH ROW EXECUTE FUNCTION imgsearch.embedding_takes_product_filters()"
)
IMAGE_WEBHOOK_ROW_TRIGGER = (
    "CREATE TRIGGER images_webhook_inserted AFTER INSERT ON imgsearch.images FOR EACH ROW "
    "WHEN (new.state = 'ready') EXECUTE FUNCTION imgsearch._webhook_row_event('images')"
)

# The triggers run on the shards, where a query on another table is a query of the cluster: each
# names its tenant, so that it goes to the colocated shard on the same node (migrations 0004 and
# 0019 wrote them for one node), and the new images' links are made row by row (a shard's query
# can't read a statement trigger's transition table).
TRIGGERS = (
    """
CREATE OR REPLACE FUNCTION imgsearch.embedding_takes_product_filters() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    SELECT p.category, p.price INTO NEW.category, NEW.price
    FROM imgsearch.products p WHERE p.tenant = NEW.tenant AND p.id = NEW.product_pk;
    RETURN NEW;
END $fn$
""",
    """
CREATE OR REPLACE FUNCTION imgsearch.product_filters_to_embeddings() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    UPDATE imgsearch.embeddings e SET category = NEW.category, price = NEW.price
    WHERE e.tenant = NEW.tenant AND e.product_pk = NEW.id;
    RETURN NULL;
END $fn$
""",
    """
CREATE OR REPLACE FUNCTION imgsearch._keep_shared_images() RETURNS trigger
LANGUAGE plpgsql
AS $fn$
BEGIN
    UPDATE imgsearch.images i SET product_pk = other.product_pk, updated_at = now()
    FROM (
        SELECT DISTINCT ON (l.image_id) l.image_id, l.product_pk
        FROM imgsearch.image_products l JOIN imgsearch.images s ON s.id = l.image_id AND s.tenant = l.tenant
        WHERE l.tenant = OLD.tenant AND s.product_pk = OLD.id AND l.product_pk <> OLD.id
        ORDER BY l.image_id, l.created_at, l.product_pk
    ) AS other
    WHERE i.tenant = OLD.tenant AND i.id = other.image_id;
    RETURN OLD;
END
$fn$
""",
    """
CREATE OR REPLACE FUNCTION imgsearch._link_new_image() RETURNS trigger
LANGUAGE plpgsql
AS $fn$
BEGIN
    INSERT INTO imgsearch.image_products (image_id, product_pk, tenant)
    VALUES (NEW.id, NEW.product_pk, NEW.tenant)
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$fn$
""",
    "DROP TRIGGER images_link_new ON imgsearch.images",
    "CREATE TRIGGER images_link_new AFTER INSERT ON imgsearch.images FOR EACH ROW "
    "EXECUTE FUNCTION imgsearch._link_new_image()",
    # a new image's image.ready event, row by row as migration 0037 wrote it (0047 made it a
    # statement trigger on one node)
    "DROP TRIGGER images_webhook_inserted ON imgsearch.images",
    IMAGE_WEBHOOK_ROW_TRIGGER,
    # every new row reads its product (migration 0048 skips rows that give their filter columns,
    # leaving them to a recheck a cluster doesn't run)
    "DROP TRIGGER embeddings_product_filters_added ON imgsearch.embeddings",
    "DROP TRIGGER embeddings_product_filters ON imgsearch.embeddings",
    PRODUCT_FILTERS_TRIGGER,
)
# the triggers that keep facet counts on one node (migration 0039)
FACET_TRIGGERS = (
    ("embeddings_facets_added", "embeddings"),
    ("embeddings_facets_moved", "embeddings"),
    ("embeddings_facets_removed", "embeddings"),
    ("embeddings_facets_truncated", "embeddings"),
    ("products_facets_moved", "products"),
)
# the triggers that keep the images' counts per state on one node (migration 0054)
IMAGE_COUNT_TRIGGERS = (
    ("images_counts_added", "images"),
    ("images_counts_moved", "images"),
    ("images_counts_removed", "images"),
    ("images_counts_truncated", "images"),
)
# the triggers that read the filter columns again after the facets' waits (migration 0046)
FILTER_RECHECKS = (
    ("embeddings_filters_rechecked", "embeddings"),
    ("products_filters_rechecked", "products"),
)
# foreign keys between tenant tables that didn't carry tenant: (table, constraint, definition)
FOREIGN_KEYS = (
    ("boosts", "boosts_product_pk_fkey",
     "FOREIGN KEY (product_pk, tenant) REFERENCES imgsearch.products (id, tenant) ON DELETE CASCADE"),
    ("embeddings", "embeddings_link_fkey",
     "FOREIGN KEY (image_id, product_pk, tenant) REFERENCES imgsearch.image_products (image_id, product_pk, tenant)"
     " ON DELETE CASCADE"),
    ("query_adapter_rows", "query_adapter_rows_adapter_id_fkey",
     "FOREIGN KEY (adapter_id, tenant) REFERENCES imgsearch.query_adapters (id, tenant) ON DELETE CASCADE"),
    ("webhook_deliveries", "webhook_deliveries_endpoint_id_fkey",
     "FOREIGN KEY (endpoint_id, tenant) REFERENCES imgsearch.webhook_endpoints (id, tenant) ON DELETE CASCADE"),
    ("webhook_deliveries", "webhook_deliveries_event_id_fkey",
     "FOREIGN KEY (event_id, tenant) REFERENCES imgsearch.webhook_events (id, tenant) ON DELETE CASCADE"),
)  # fmt: skip


@dataclass(frozen=True)
class Distributed:
    """What ``distribute`` did: the tables it distributed and made reference tables (empty when
    the catalog was distributed already), and the cluster's worker nodes."""

    distributed: tuple[str, ...]
    reference: tuple[str, ...]
    workers: int


IS_COORDINATOR = "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')"


def is_coordinator(conn: Connection) -> bool:
    """Whether the database is a Citus coordinator (the extension installed)."""
    return bool(conn.execute(text(IS_COORDINATOR)).scalar())


_COORDINATORS: weakref.WeakKeyDictionary[Engine, bool] = weakref.WeakKeyDictionary()

# sent before a transaction's SET LOCALs on a coordinator, so that Citus forwards them to the
# workers' sessions whatever the database's default (distribute sets it, for new sessions)
PROPAGATE = "SET LOCAL citus.propagate_set_commands = 'local'"


def on_coordinator(conn: Connection) -> bool:
    """:func:`is_coordinator`, asked once per engine (a search asks at every run)."""
    found = _COORDINATORS.get(conn.engine)
    if found is None:
        found = _COORDINATORS[conn.engine] = is_coordinator(conn)
    return found


def largest_shard_rows(conn: Connection, index: str | None = None) -> int:
    """The planner's row estimate of the embeddings' largest shard (``index``: of that index's
    copy on it), read on the workers (``pg_class.reltuples``, free to read); 0 when unknown. On a
    coordinator the distributed tables are empty shells, and a shop's search walks one shard."""
    # run_command_on_shards puts each shard's name (imgsearch.embeddings_<id>) for %s; an index's
    # copy on a shard is named <index>_<id>. ``index`` is a name of imgsearch's own making.
    target = "'%s'" if index is None else f"replace('%s', 'embeddings_', '{index}_')"
    command = (
        f"SELECT coalesce((SELECT reltuples FROM pg_catalog.pg_class WHERE oid = to_regclass({target})), 0)"
    )
    found = conn.execute(
        text("SELECT result FROM run_command_on_shards('imgsearch.embeddings', :command) WHERE success"),
        {"command": command},
    ).scalars()
    return max((max(0, int(float(rows))) for rows in found), default=0)


def is_distributed(conn: Connection) -> bool:
    """Whether the catalog's tables are distributed (Citus mode)."""
    if not is_coordinator(conn):
        return False
    return bool(
        conn.execute(
            text(
                "SELECT EXISTS (SELECT 1 FROM pg_dist_partition"
                " WHERE logicalrelid = to_regclass('imgsearch.products'))"
            )
        ).scalar()
    )


def _foreign_keys(conn: Connection) -> list[tuple[str, str, str]]:
    """Every foreign key of the imgsearch tables: (table, name, definition)."""
    rows = conn.execute(
        text(
            "SELECT t.relname, c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint c "
            "JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
            "WHERE n.nspname = 'imgsearch' AND c.contype = 'f' ORDER BY 1, 2"
        )
    ).all()
    return [(row[0], row[1], row[2]) for row in rows]


def _workers(conn: Connection) -> int:
    return int(conn.execute(text("SELECT count(*) FROM citus_get_active_worker_nodes()")).scalar_one())


# every imgsearch function a distributed object (Citus creates it, and each later change, on
# every node, a node added later included), so that any node can run the console's searches
_FUNCTIONS = """
SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'imgsearch'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                  AND d.deptype = 'e')
  AND NOT EXISTS (SELECT 1 FROM pg_dist_object o WHERE o.classid = 'pg_proc'::regclass AND o.objid = p.oid)
ORDER BY 1
"""
# the text requests' loopback server (migration 0015) pointed at this coordinator, as that migration
# points it at its server: a catalog restored here from another server still named that one
_LOOPBACK_HERE = """
DO $do$
DECLARE
    host text := coalesce(host(inet_server_addr()), btrim(split_part(current_setting('unix_socket_directories'), ',', 1)));
BEGIN
    EXECUTE format('ALTER SERVER imgsearch_loopback OPTIONS (SET host %L, SET port %L)', host, current_setting('port'));
END
$do$
"""
# the text requests' loopback login (migration 0015) on the workers too: a function reaching a
# worker's session that asks for a text connects with it (Citus copies no user mapping)
_LOOPBACK_MAPPING = """
SELECT run_command_on_workers(format(
    'CREATE USER MAPPING IF NOT EXISTS FOR %I SERVER imgsearch_loopback OPTIONS (%s)', u.usename,
    (SELECT string_agg(format('%I %L', split_part(o, '=', 1), substr(o, strpos(o, '=') + 1)), ', ')
     FROM unnest(u.umoptions) AS o)))
FROM pg_user_mappings u WHERE u.srvname = 'imgsearch_loopback'
"""


def _share_functions(conn: Connection) -> None:
    """The console's functions on every node, and the loopback login they may ask texts with.

    A console login's row-level security policies run on the shards, and each asks
    ``imgsearch.login_tenant()``, which reads the logins' reference table: a query of the cluster
    from within a shard's, which Citus refuses unless told. It reads the node's own copy."""
    for function in conn.execute(text(_FUNCTIONS)).scalars():
        conn.execute(text("SELECT create_distributed_function(CAST(:f AS regprocedure))"), {"f": function})
    conn.execute(text(_LOOPBACK_HERE))
    conn.execute(text(_LOOPBACK_MAPPING)).all()
    conn.execute(text("ALTER FUNCTION imgsearch.login_tenant() SET citus.allow_nested_distributed_execution = on"))


def distribute_new_tables(conn: Connection, tables: Sequence[str]) -> None:
    """Distribute ``tables``, created by a migration on a distributed catalog, as
    :func:`distribute` does (their keys with tenant, colocated with products), and let the
    migration put triggers on distributed tables (``citus.enable_unsafe_triggers``: each trigger
    names its tenant, so its statements stay on the shop's node)."""
    conn.execute(text("SET LOCAL citus.multi_shard_modify_mode = 'sequential'"))
    conn.execute(text("SET LOCAL citus.enable_unsafe_triggers = on"))
    for table, name, _ in _foreign_keys(conn):
        if table in tables:
            conn.execute(text(f"ALTER TABLE imgsearch.{table} DROP CONSTRAINT {name}"))
    for table, name, kind, columns in KEYS:
        if table in tables:
            conn.execute(text(f"ALTER TABLE imgsearch.{table} DROP CONSTRAINT {name}"))
            conn.execute(text(f"ALTER TABLE imgsearch.{table} ADD CONSTRAINT {name} {kind} ({columns})"))
    for table in tables:
        conn.execute(
            text("SELECT create_distributed_table(:t, 'tenant', colocate_with => 'imgsearch.products')"),
            {"t": f"imgsearch.{table}"},
        )
    for table, name, definition in FOREIGN_KEYS:
        if table in tables:
            conn.execute(text(f"ALTER TABLE imgsearch.{table} ADD CONSTRAINT {name} {definition}"))


def adopt(engine: Engine) -> Distributed | None:
    """Citus mode where the catalog's database is a Citus coordinator with workers: after each
    migration to the latest schema (``imgsearch migrate``, ``Catalog.open``) the catalog is
    distributed (:func:`distribute`, idempotent: it also gives new functions and nodes what they
    need). None elsewhere: one node, or a coordinator with no worker yet."""
    with engine.connect() as conn:
        if not is_coordinator(conn) or _workers(conn) == 0:
            return None
    return distribute(engine)


def _create_extension(conn: Connection) -> None:
    try:
        conn.execute(text("CREATE EXTENSION IF NOT EXISTS citus"))
    except DBAPIError as exc:
        raise ConfigurationError(
            "the database is not a Citus coordinator: its server needs citus in "
            f"shared_preload_libraries ({str(exc.orig).strip().splitlines()[0]})"
        ) from exc


def make_coordinator(engine: Engine) -> None:
    """Create the citus extension in the catalog's database (a fresh cluster's first step, before
    its migration); :class:`ConfigurationError` when the server has no Citus."""
    with engine.begin() as conn:
        _create_extension(conn)


def distribute(engine: Engine) -> Distributed:
    """Distribute a migrated catalog on the Citus coordinator ``engine`` points at."""
    revision, head = revisions.current(engine), revisions.head()
    if revision != head:  # the keys and triggers rewritten here are those of the latest schema
        raise ConfigurationError(
            f"the catalog is at revision {revision or 'none'}, not {head}: run `imgsearch migrate` first"
        )
    with engine.begin() as conn:
        _create_extension(conn)
        workers = _workers(conn)
        if is_distributed(conn):
            _share_functions(conn)  # a node added since has them too
            return Distributed((), (), workers)
        if workers == 0:
            raise ConfigurationError(
                "the Citus coordinator has no worker nodes: add them with citus_add_node"
            )
        conn.execute(text("SET LOCAL citus.multi_shard_modify_mode = 'sequential'"))
        conn.execute(text("SET LOCAL citus.enable_unsafe_triggers = on"))
        conn.execute(
            text("LOCK TABLE imgsearch.products, imgsearch.images IN SHARE MODE")
        )  # no write between steps
        keys = _foreign_keys(conn)
        rewritten = {(table, name) for table, name, _ in FOREIGN_KEYS}
        for table, name, _ in keys:
            conn.execute(text(f"ALTER TABLE imgsearch.{table} DROP CONSTRAINT {name}"))
        for table, name in REDUNDANT:
            conn.execute(text(f"ALTER TABLE imgsearch.{table} DROP CONSTRAINT IF EXISTS {name}"))
        for table, name, kind, columns in KEYS:
            conn.execute(text(f"ALTER TABLE imgsearch.{table} DROP CONSTRAINT {name}"))
            conn.execute(text(f"ALTER TABLE imgsearch.{table} ADD CONSTRAINT {name} {kind} ({columns})"))
        # SET LOCAL reaches the shards' sessions: the tenant scope's setting (imgsearch.access.tenancy)
        database = conn.execute(text("SELECT current_database()")).scalar_one()
        quoted = '"' + database.replace('"', '""') + '"'
        conn.execute(text(f"ALTER DATABASE {quoted} SET citus.propagate_set_commands = 'local'"))
        for role in ROLES:  # Citus reaches the shards as the current role: it must log in on the workers
            conn.execute(text(f"ALTER ROLE {role} LOGIN"))
        for statement in TRIGGERS:
            conn.execute(text(statement))
        # a shard's NOTIFY can't be part of Citus's two-phase commit (migration 0036): waiters
        # read the states from the coordinator instead (imgsearch.work.ready)
        conn.execute(text("DROP TRIGGER IF EXISTS images_state_notify ON imgsearch.images"))
        # facets and images per state are counted on a cluster: the kept counts' triggers
        # (migrations 0039 and 0054), and the filter columns' rechecks after their waits (0046),
        # read transition tables, which a shard's query can't
        for trigger, table in (*FACET_TRIGGERS, *IMAGE_COUNT_TRIGGERS, *FILTER_RECHECKS):
            conn.execute(text(f"DROP TRIGGER IF EXISTS {trigger} ON imgsearch.{table}"))
        for table in REFERENCE:
            conn.execute(text("SELECT create_reference_table(:t)"), {"t": f"imgsearch.{table}"})
        # a catalog with rows (one restored from a single node) is copied into the shards: its
        # triggers, whose work those rows hold already, must not fire again there
        for table in DISTRIBUTED:
            conn.execute(text(f"ALTER TABLE imgsearch.{table} DISABLE TRIGGER USER"))
        for i, table in enumerate(DISTRIBUTED):
            colocate = "none" if i == 0 else "imgsearch.products"
            conn.execute(
                text("SELECT create_distributed_table(:t, 'tenant', colocate_with => :c)"),
                {"t": f"imgsearch.{table}", "c": colocate},
            )
        for table in DISTRIBUTED:
            conn.execute(text(f"ALTER TABLE imgsearch.{table} ENABLE TRIGGER USER"))
        conn.execute(text(FORGET_ORIGINAL))
        conn.execute(
            text(
                "CREATE TRIGGER images_forget_original AFTER DELETE ON imgsearch.images "
                "FOR EACH ROW EXECUTE FUNCTION imgsearch._forget_original()"
            )
        )
        for table, name, definition in keys:
            if (table, name) not in rewritten | REPLACED:
                conn.execute(text(f"ALTER TABLE imgsearch.{table} ADD CONSTRAINT {name} {definition}"))
        for table, name, definition in FOREIGN_KEYS:
            conn.execute(text(f"ALTER TABLE imgsearch.{table} ADD CONSTRAINT {name} {definition}"))
        _share_functions(conn)
        return Distributed(DISTRIBUTED, REFERENCE, workers)
