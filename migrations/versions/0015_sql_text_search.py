"""Text search from plain SQL: ``imgsearch.search_text('red leather sneakers', 10, ...)``.

A text's embedding needs the model, which lives in imgsearch's workers, not in PostgreSQL. The
function reads it from a cache table (``imgsearch.text_embeddings``, keyed by model and text,
shared with the library's text cache), and otherwise asks a worker and waits for the answer.

How the request reaches a worker while the caller's transaction is still open: rows the caller
inserts, and its ``NOTIFY``, are delivered only at its commit, after the function has returned.
So the request goes through **dblink**, on a loopback connection of its own to this database: it
inserts the request row and notifies ``imgsearch_text_requests`` in that connection's transaction,
which commits at once. Workers ``LISTEN`` on the channel and answer within milliseconds of the
notification (their own fallback is a check every few seconds). The function then reads the
answer through the same loopback connection, so it sees it whatever its own isolation level.

Security:
- the loopback connection logs in as ``imgsearch_text_requester``, a role that can do exactly two
  things: call ``imgsearch._request_text`` (insert a request, notify) and
  ``imgsearch._text_answer`` (read one answer); no table rights;
- its password is random, made here, and kept only in the user mapping, which belongs to the
  login that ran the migrations: ``pg_user_mappings`` shows its options to that login and to
  superusers only, and console logins get no right on the foreign server;
- the text goes into the loopback SQL hex-encoded (only ``0-9a-f``), so no text can change that
  statement; it is checked (not empty, at most 2,000 characters) before anything is sent;
- ``search_text`` itself runs as its caller: a tenant console login searches its own tenant's
  rows only, under row-level security, through ``search_vector``. Only ``_text_embedding``, which
  returns a vector, runs as the functions' owner.

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-23
"""

from collections.abc import Sequence

from alembic import op
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MAX_TEXT_CHARS = 2000  # imgsearch.embed.model.MAX_TEXT_CHARS
CALLERS = "imgsearch_app, imgsearch_console, imgsearch_admin"

TABLES = f"""
CREATE TABLE imgsearch.text_embeddings (
    model_id smallint NOT NULL REFERENCES imgsearch.models (id) ON DELETE CASCADE,
    text_hash bytea NOT NULL,
    text text NOT NULL,
    embedding vector NOT NULL,
    logit_scale double precision,
    logit_bias double precision,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_id, text_hash)
);
CREATE INDEX text_embeddings_created_idx ON imgsearch.text_embeddings (created_at);
CREATE TABLE imgsearch.text_requests (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model_id smallint NOT NULL REFERENCES imgsearch.models (id) ON DELETE CASCADE,
    text_hash bytea NOT NULL,
    text text NOT NULL CONSTRAINT text_requests_text_length_check CHECK (length(text) BETWEEN 1 AND {MAX_TEXT_CHARS}),
    requested_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    claimed_at timestamptz,
    error text,
    UNIQUE (model_id, text_hash)
);
"""

FUNCTIONS = rf"""
CREATE FUNCTION imgsearch._text_hash(query text) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN sha256(convert_to(query, 'UTF8'));

-- a libpq connection string's value: in single quotes, backslashes and quotes escaped
CREATE FUNCTION imgsearch._conninfo_quote(value text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN '''' || replace(replace(value, '\', '\\'), '''', '\''') || '''';

-- called over the loopback connection: a request (again, if one is waiting) and its wake-up
CREATE FUNCTION imgsearch._request_text(model smallint, query text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    INSERT INTO imgsearch.text_requests (model_id, text_hash, text)
        VALUES (model, imgsearch._text_hash(query), query)
        ON CONFLICT (model_id, text_hash) DO UPDATE SET claimed_at = NULL, error = NULL,
            requested_at = clock_timestamp();
    PERFORM pg_notify('imgsearch_text_requests', '');
END
$fn$;

-- called over the loopback connection: the answer, or a worker's error, or nothing yet
CREATE FUNCTION imgsearch._text_answer(model smallint, query text, OUT embedding text,
    OUT logit_scale double precision, OUT logit_bias double precision, OUT error text)
LANGUAGE plpgsql SECURITY DEFINER STABLE SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    SELECT t.embedding::text, t.logit_scale, t.logit_bias INTO embedding, logit_scale, logit_bias
        FROM imgsearch.text_embeddings t WHERE t.model_id = model AND t.text_hash = imgsearch._text_hash(query);
    IF embedding IS NULL THEN
        SELECT r.error INTO error FROM imgsearch.text_requests r
            WHERE r.model_id = model AND r.text_hash = imgsearch._text_hash(query);
    END IF;
END
$fn$;

CREATE FUNCTION imgsearch._text_embedding(query text, OUT embedding vector,
    OUT logit_scale double precision, OUT logit_bias double precision)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, @VECTOR@, pg_temp
AS $fn$
DECLARE
    model smallint;
    hex text;
    answer record;
    timeout numeric;
    started timestamptz := clock_timestamp();
    asked timestamptz;
    pause double precision := 0.001;
    conninfo text;
BEGIN
    IF query IS NULL OR btrim(query) = '' THEN
        RAISE EXCEPTION 'a text query must be a non-empty string, got %', quote_nullable(query)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF length(query) > {MAX_TEXT_CHARS} THEN
        RAISE EXCEPTION 'text query is % characters; the limit is {MAX_TEXT_CHARS}', length(query)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT m.id INTO model FROM imgsearch.models m WHERE m.active;
    IF model IS NULL THEN
        RAISE EXCEPTION 'the catalog has no active model' USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    SELECT t.embedding, t.logit_scale, t.logit_bias INTO embedding, logit_scale, logit_bias
        FROM imgsearch.text_embeddings t WHERE t.model_id = model AND t.text_hash = imgsearch._text_hash(query);
    IF embedding IS NOT NULL THEN
        RETURN;
    END IF;
    BEGIN
        timeout := coalesce(nullif(current_setting('imgsearch.text_timeout', true), ''), '5')::numeric;
    EXCEPTION WHEN invalid_text_representation THEN
        RAISE EXCEPTION 'imgsearch.text_timeout must be a number of seconds, got %',
            current_setting('imgsearch.text_timeout', true) USING ERRCODE = 'invalid_parameter_value';
    END;
    IF NOT ('imgsearch_text' = ANY (coalesce(@DBLINK@.dblink_get_connections(), '{{}}'))) THEN
        -- the server's host and port, the user mapping's login, and this database: a copy of it
        -- (CREATE DATABASE ... TEMPLATE, a restore under another name) asks itself, not its origin
        SELECT string_agg(o.option_name || '=' || imgsearch._conninfo_quote(o.option_value), ' ') INTO conninfo
            FROM (
                SELECT (pg_options_to_table(s.srvoptions)).* FROM pg_foreign_server s
                    WHERE s.srvname = 'imgsearch_loopback'
                UNION ALL
                SELECT (pg_options_to_table(u.umoptions)).* FROM pg_user_mappings u
                    WHERE u.srvname = 'imgsearch_loopback' AND u.usename = current_user
            ) AS o WHERE o.option_name IN ('host', 'port', 'user', 'password');
        IF conninfo IS NULL THEN
            RAISE EXCEPTION 'the loopback server imgsearch_loopback or its user mapping is missing; run imgsearch migrate'
                USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
        PERFORM @DBLINK@.dblink_connect('imgsearch_text', conninfo || ' dbname='
            || imgsearch._conninfo_quote(current_database()) || ' application_name=imgsearch-search-text');
    END IF;
    hex := encode(convert_to(query, 'UTF8'), 'hex');  -- only 0-9a-f reaches the loopback's SQL
    LOOP
        IF asked IS NULL OR clock_timestamp() - asked > interval '1 second' THEN
            -- again after a second without an answer: a worker killed with the request claimed
            PERFORM * FROM @DBLINK@.dblink('imgsearch_text', format(
                'SELECT imgsearch._request_text(%s::smallint, convert_from(decode(%L, ''hex''), ''UTF8''))',
                model, hex)) AS r(ok text);
            asked := clock_timestamp();
        END IF;
        SELECT * INTO answer FROM @DBLINK@.dblink('imgsearch_text', format(
            'SELECT * FROM imgsearch._text_answer(%s::smallint, convert_from(decode(%L, ''hex''), ''UTF8''))',
            model, hex)) AS a(embedding text, logit_scale double precision, logit_bias double precision, error text);
        IF answer.embedding IS NOT NULL THEN
            embedding := answer.embedding::vector;
            logit_scale := answer.logit_scale;
            logit_bias := answer.logit_bias;
            RETURN;
        END IF;
        IF answer.error IS NOT NULL THEN
            RAISE EXCEPTION '%', answer.error USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF clock_timestamp() - started > make_interval(secs => timeout) THEN
            RAISE EXCEPTION 'no imgsearch worker answered within % s: start one with `imgsearch worker` '
                '(workers embed the texts of search_text; imgsearch.text_timeout sets the wait)', timeout
                USING ERRCODE = 'query_canceled';
        END IF;
        PERFORM pg_sleep(pause);
        pause := least(pause * 1.5, 0.02);
    END LOOP;
END
$fn$;

CREATE FUNCTION imgsearch.search_text(
    query text, k int DEFAULT 10, tenant text DEFAULT NULL, category text DEFAULT NULL,
    price_min numeric DEFAULT NULL, price_max numeric DEFAULT NULL
) RETURNS TABLE (image_id bigint, product_id text, distance double precision, probability double precision)
LANGUAGE plpgsql VOLATILE
AS $fn$
DECLARE
    q record;
BEGIN
    IF k IS NULL OR k < 1 OR k > 1000 THEN  -- before asking a worker anything
        RAISE EXCEPTION 'k must be from 1 to 1000, got %', coalesce(k::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO q FROM imgsearch._text_embedding(query);
    RETURN QUERY
        SELECT s.image_id, s.product_id, s.distance,
            CASE WHEN q.logit_bias IS NULL THEN NULL
                 ELSE 1 / (1 + exp(-(q.logit_scale * (1 - s.distance) + q.logit_bias))) END
        FROM imgsearch.search_vector(q.embedding, k, tenant, category, price_min, price_max) AS s;
END
$fn$;
COMMENT ON FUNCTION imgsearch.search_text(text, int, text, text, numeric, numeric) IS
    'Top k images for a text query under the active model, with optional filters; a worker embeds new texts';
"""

# the requester login, its password (random, made here, kept only in the user mapping) and the
# loopback server (this server's own address: a TCP one, else its Unix socket's folder)
REQUESTER = """DO $do$
DECLARE
    secret text := encode(sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text
        || clock_timestamp()::text, 'UTF8')), 'hex');
    host text := coalesce(host(inet_server_addr()),
        btrim(split_part(current_setting('unix_socket_directories'), ',', 1)));
    requester text := '@REQUESTER@';
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = requester) THEN
        EXECUTE format('CREATE ROLE %I LOGIN PASSWORD %L', requester, secret);
    ELSE
        EXECUTE format('ALTER ROLE %I LOGIN PASSWORD %L', requester, secret);
    END IF;
    EXECUTE format('CREATE SERVER imgsearch_loopback FOREIGN DATA WRAPPER dblink_fdw OPTIONS (host %L, port %L)',
        host, current_setting('port'));
    EXECUTE format('CREATE USER MAPPING FOR CURRENT_USER SERVER imgsearch_loopback OPTIONS (user %L, password %L)',
        requester, secret);
END
$do$"""


REVOKE_DBLINK = """DO $do$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
        JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
        JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'dblink'
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
END
$do$"""


def _schema_of(extension: str) -> str:
    """The schema an extension lives in, quoted as an identifier."""
    schema = (
        op.get_bind()
        .execute(
            text(
                "SELECT quote_ident(n.nspname) FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
                "WHERE e.extname = :name"
            ),
            {"name": extension},
        )
        .scalar_one()
    )
    return str(schema)


def _dblink(bind: Connection) -> bool:
    """Whether dblink is there: created now, or beforehand by an administrator. A role that is not
    a superuser can't create it (not a trusted extension): text search from SQL then waits for an
    administrator and ``imgsearch db console-setup`` (docs/operations.md, "Managed PostgreSQL")."""
    if bind.execute(text("SELECT 1 FROM pg_extension WHERE extname = 'dblink'")).scalar():
        return True
    try:
        with bind.begin_nested():  # a savepoint: a refusal ends here
            op.execute("CREATE EXTENSION dblink SCHEMA imgsearch")
    except DBAPIError:
        return False
    # dblink's functions are PUBLIC's to call by default: a console login could then open
    # connections from the server to anywhere. Ours are for the functions' owner only.
    op.execute(REVOKE_DBLINK)
    return True


def upgrade() -> None:
    bind = op.get_bind()
    dblink = _dblink(bind)
    # the loopback server needs USAGE on dblink's foreign-data wrapper, which a managed service's
    # main role gets only from an administrator: without it, `imgsearch db console-setup` makes it later
    loopback = dblink and bool(
        bind.execute(text("SELECT has_foreign_data_wrapper_privilege('dblink_fdw', 'USAGE')")).scalar()
    )
    op.execute(TABLES)
    schema = _schema_of("dblink") if dblink else "imgsearch"
    op.execute(FUNCTIONS.replace("@DBLINK@", schema).replace("@VECTOR@", _schema_of("vector")))
    # the requester: a login of this database's own (roles are the cluster's; two catalogs in one
    # cluster each have theirs) that can only call the two loopback functions
    oid = bind.execute(text("SELECT oid FROM pg_database WHERE datname = current_database()")).scalar_one()
    requester = f"imgsearch_text_{int(oid)}"
    if loopback:
        bind.execute(text(REQUESTER.replace("@REQUESTER@", requester)))
        op.execute("REVOKE ALL ON FOREIGN SERVER imgsearch_loopback FROM PUBLIC")
    op.execute("REVOKE ALL ON imgsearch.text_embeddings, imgsearch.text_requests FROM PUBLIC")
    for function in (
        "imgsearch._request_text(smallint, text)",
        "imgsearch._text_answer(smallint, text)",
        "imgsearch._text_embedding(text)",
    ):
        op.execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")
    if loopback:
        op.execute(f"GRANT USAGE ON SCHEMA imgsearch TO {requester}")
        op.execute(f"GRANT EXECUTE ON FUNCTION imgsearch._request_text(smallint, text) TO {requester}")
        op.execute(f"GRANT EXECUTE ON FUNCTION imgsearch._text_answer(smallint, text) TO {requester}")
    op.execute(f"GRANT EXECUTE ON FUNCTION imgsearch._text_embedding(text) TO {CALLERS}")
    op.execute(
        f"GRANT EXECUTE ON FUNCTION imgsearch.search_text(text, int, text, text, numeric, numeric) TO {CALLERS}"
    )
    # workers answer requests and fill the cache; the library reads and fills the cache too
    op.execute("GRANT SELECT, UPDATE, DELETE ON imgsearch.text_requests TO imgsearch_worker")
    op.execute(
        "GRANT SELECT, INSERT, UPDATE, DELETE ON imgsearch.text_embeddings TO imgsearch_worker, imgsearch_app"
    )


def downgrade() -> None:
    bind = op.get_bind()
    options = bind.execute(
        text(
            "SELECT u.umoptions FROM pg_user_mappings u "
            "WHERE u.srvname = 'imgsearch_loopback' AND u.usename = current_user"
        )
    ).scalar()
    op.execute("DROP FUNCTION imgsearch.search_text(text, int, text, text, numeric, numeric)")
    op.execute("DROP FUNCTION imgsearch._text_embedding(text)")
    op.execute("DROP FUNCTION imgsearch._text_answer(smallint, text)")
    op.execute("DROP FUNCTION imgsearch._request_text(smallint, text)")
    op.execute("DROP FUNCTION imgsearch._conninfo_quote(text)")
    op.execute("DROP FUNCTION imgsearch._text_hash(text)")
    op.execute("DROP USER MAPPING IF EXISTS FOR CURRENT_USER SERVER imgsearch_loopback")
    op.execute("DROP SERVER IF EXISTS imgsearch_loopback")
    op.execute("DROP TABLE imgsearch.text_requests, imgsearch.text_embeddings")
    op.execute("DROP EXTENSION IF EXISTS dblink")
    for option in options or []:
        if option.startswith("user="):
            role = option.removeprefix("user=")
            op.execute(f'REVOKE USAGE ON SCHEMA imgsearch FROM "{role}"')
            # a database copied from this one may still grant it something: then it stays
            bind.execute(
                text(
                    "DO $do$ BEGIN EXECUTE format('DROP ROLE %I', '" + role + "'); "
                    "EXCEPTION WHEN dependent_objects_still_exist THEN NULL; END $do$"
                )
            )
