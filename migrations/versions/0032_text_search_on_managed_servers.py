"""Text search from psql on a managed PostgreSQL: ``imgsearch.setup_text_loopback`` makes the
loopback connection ``search_text`` asks workers through (``imgsearch db console-setup`` calls
it), and ``imgsearch._text_embedding`` finds dblink wherever an administrator created it and says
in one line what is missing (dblink, USAGE on its wrapper, a loopback that logs in by password)
instead of dblink's stack of errors.

Each definition is held whole (imgsearch/db/sql/functions/, docs/architecture.md "Where a console
function lives").

Revision ID: 0032
Revises: 0031
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import op
from sqlalchemy import text

from imgsearch.db import definitions

revision: str = "0032"
down_revision: str | None = "0031"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TEXT_EMBEDDING = r"""CREATE OR REPLACE FUNCTION imgsearch._text_embedding(query text, OUT embedding vector, OUT logit_scale double precision, OUT logit_bias double precision)
 RETURNS record
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'public', 'pg_temp'
AS $function$
DECLARE
    model smallint;
    hex text;
    answer record;
    connections text[];
    timeout numeric;
    started timestamptz := clock_timestamp();
    asked timestamptz;
    pause double precision := 0.001;
    conninfo text;
    listening bigint;
    -- dblink's schema, read here: an administrator may have created it anywhere (a managed service)
    dblink text := (SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
                    WHERE e.extname = 'dblink');
    setup constant text := ' (docs/operations.md, "Managed PostgreSQL")';
BEGIN
    IF query IS NULL OR btrim(query) = '' THEN
        RAISE EXCEPTION 'a text query must be a non-empty string, got %', quote_nullable(query)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF length(query) > 2000 THEN
        RAISE EXCEPTION 'text query is % characters; the limit is 2000', length(query)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT m.id INTO model FROM imgsearch.models m WHERE m.active;
    IF model IS NULL THEN
        RAISE EXCEPTION 'the catalog has no active model' USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF (SELECT m.external FROM imgsearch.models m WHERE m.id = model) THEN
        RAISE EXCEPTION 'the catalog''s model % embeds no text here: its vectors come from elsewhere '
            '(imgsearch model add); search with imgsearch.search_vector and a query vector made by that model',
            (SELECT m.name FROM imgsearch.models m WHERE m.id = model)
            USING ERRCODE = 'object_not_in_prerequisite_state';
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
    IF dblink IS NULL THEN
        RAISE EXCEPTION 'text search from SQL needs the dblink extension, which this database lacks: an '
            'administrator runs CREATE EXTENSION dblink, then run `imgsearch db console-setup`%', setup
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    EXECUTE format('SELECT %I.dblink_get_connections()', dblink) INTO connections;
    IF NOT ('imgsearch_text' = ANY (coalesce(connections, '{}'))) THEN
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
            RAISE EXCEPTION 'text search from SQL needs its loopback connection, which this database lacks: '
                'an administrator runs GRANT USAGE ON FOREIGN DATA WRAPPER dblink_fdw TO %, then run '
                '`imgsearch db console-setup`%', quote_ident(current_user), setup
                USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
        BEGIN
            EXECUTE format('SELECT %I.dblink_connect(%L, %L)', dblink, 'imgsearch_text', conninfo || ' dbname='
                || imgsearch._conninfo_quote(current_database()) || ' application_name=imgsearch-search-text');
        EXCEPTION WHEN OTHERS THEN  -- one line saying what to do, not dblink's stack of errors
            RAISE EXCEPTION 'text search from SQL could not open its loopback connection: %; %', split_part(SQLERRM, E'\n', 1),
                CASE WHEN SQLERRM LIKE '%password%' THEN 'the server let it in without a password, which dblink '
                    'refuses to a role that is not a superuser: point it at an address whose pg_hba.conf asks for one '
                    'with `imgsearch db console-setup --host HOST`' || setup
                ELSE 'check it with `imgsearch db check`, or make it anew with `imgsearch db console-setup`' || setup END
                USING ERRCODE = 'sqlclient_unable_to_establish_sqlconnection';
        END;
    END IF;
    hex := encode(convert_to(query, 'UTF8'), 'hex');  -- only 0-9a-f reaches the loopback's SQL
    LOOP
        IF asked IS NULL OR clock_timestamp() - asked > interval '1 second' THEN
            -- again after a second without an answer: a worker killed with the request claimed
            EXECUTE format('SELECT * FROM %I.dblink(%L, %L) AS r(ok text)', dblink, 'imgsearch_text', format(
                'SELECT imgsearch._request_text(%s::smallint, convert_from(decode(%L, ''hex''), ''UTF8''))',
                model, hex));
            asked := clock_timestamp();
        END IF;
        EXECUTE format('SELECT * FROM %I.dblink(%L, %L) AS a(embedding text, logit_scale double precision, '
            'logit_bias double precision, error text)', dblink, 'imgsearch_text', format(
            'SELECT * FROM imgsearch._text_answer(%s::smallint, convert_from(decode(%L, ''hex''), ''UTF8''))',
            model, hex)) INTO answer;
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
            SELECT count(*) INTO listening FROM pg_stat_activity a
                WHERE a.datname = current_database() AND a.application_name = 'imgsearch text listener';
            IF listening = 0 THEN
                RAISE EXCEPTION 'no imgsearch worker answered within % s: start one with `imgsearch worker` '
                    '(none listens; a worker just started listens once its model is loaded: '
                    '`imgsearch status --wait-worker` waits for it)', timeout
                    USING ERRCODE = 'query_canceled';
            END IF;
            RAISE EXCEPTION 'no imgsearch worker answered within % s (% listening): busy or slow; '
                'SET imgsearch.text_timeout to wait longer, or start more with `imgsearch worker`',
                timeout, listening
                USING ERRCODE = 'query_canceled';
        END IF;
        PERFORM pg_sleep(pause);
        pause := least(pause * 1.5, 0.02);
    END LOOP;
END
$function$;"""

SETUP_TEXT_LOOPBACK = r"""CREATE OR REPLACE FUNCTION imgsearch.setup_text_loopback(host text DEFAULT NULL::text, port integer DEFAULT NULL::integer)
 RETURNS text
 LANGUAGE plpgsql
AS $function$
DECLARE
    -- a login of this database's own (roles are the cluster's; two catalogs in one cluster each
    -- have theirs) that can only call the two loopback functions; its password is new each time
    requester text := 'imgsearch_text_' || (SELECT d.oid FROM pg_database d WHERE d.datname = current_database());
    secret text := encode(sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text
        || clock_timestamp()::text, 'UTF8')), 'hex');
    address text := coalesce(setup_text_loopback.host, host(inet_server_addr()),
        btrim(split_part(current_setting('unix_socket_directories'), ',', 1)));
    number text := coalesce(setup_text_loopback.port::text, current_setting('port'));
    where_to constant text := ' (docs/operations.md, "Managed PostgreSQL")';
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension e WHERE e.extname = 'dblink') THEN
        RAISE EXCEPTION 'text search from SQL needs the dblink extension: an administrator runs CREATE EXTENSION dblink%',
            where_to USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF NOT has_foreign_data_wrapper_privilege('dblink_fdw', 'USAGE') THEN
        RAISE EXCEPTION 'text search from SQL needs USAGE on dblink''s wrapper: an administrator runs '
            'GRANT USAGE ON FOREIGN DATA WRAPPER dblink_fdw TO %', quote_ident(current_user) || where_to
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF setup_text_loopback.port IS NOT NULL AND NOT setup_text_loopback.port BETWEEN 1 AND 65535 THEN
        RAISE EXCEPTION 'port must be from 1 to 65535, got %', setup_text_loopback.port
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = requester) THEN
        EXECUTE format('CREATE ROLE %I LOGIN PASSWORD %L', requester, secret);
    ELSE
        EXECUTE format('ALTER ROLE %I LOGIN PASSWORD %L', requester, secret);
    END IF;
    IF EXISTS (SELECT 1 FROM pg_foreign_server s WHERE s.srvname = 'imgsearch_loopback') THEN
        EXECUTE format('ALTER SERVER imgsearch_loopback OPTIONS (SET host %L, SET port %L)', address, number);
    ELSE
        EXECUTE format('CREATE SERVER imgsearch_loopback FOREIGN DATA WRAPPER dblink_fdw OPTIONS (host %L, port %L)',
            address, number);
    END IF;
    IF EXISTS (SELECT 1 FROM pg_user_mappings u WHERE u.srvname = 'imgsearch_loopback' AND u.usename = current_user) THEN
        EXECUTE format('ALTER USER MAPPING FOR CURRENT_USER SERVER imgsearch_loopback OPTIONS (SET user %L, SET password %L)',
            requester, secret);
    ELSE
        EXECUTE format('CREATE USER MAPPING FOR CURRENT_USER SERVER imgsearch_loopback OPTIONS (user %L, password %L)',
            requester, secret);
    END IF;
    REVOKE ALL ON FOREIGN SERVER imgsearch_loopback FROM PUBLIC;
    EXECUTE format('GRANT USAGE ON SCHEMA imgsearch TO %I', requester);
    EXECUTE format('GRANT EXECUTE ON FUNCTION imgsearch._request_text(smallint, text) TO %I', requester);
    EXECUTE format('GRANT EXECUTE ON FUNCTION imgsearch._text_answer(smallint, text) TO %I', requester);
    RETURN format('%s:%s as %s', address, number, requester);
END
$function$;"""

# 0015's, as it runs where 0015 created dblink itself (in schema imgsearch)
PREVIOUS_TEXT_EMBEDDING = r"""CREATE OR REPLACE FUNCTION imgsearch._text_embedding(query text, OUT embedding vector, OUT logit_scale double precision, OUT logit_bias double precision)
 RETURNS record
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'public', 'pg_temp'
AS $function$
DECLARE
    model smallint;
    hex text;
    answer record;
    timeout numeric;
    started timestamptz := clock_timestamp();
    asked timestamptz;
    pause double precision := 0.001;
    conninfo text;
    listening bigint;
BEGIN
    IF query IS NULL OR btrim(query) = '' THEN
        RAISE EXCEPTION 'a text query must be a non-empty string, got %', quote_nullable(query)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF length(query) > 2000 THEN
        RAISE EXCEPTION 'text query is % characters; the limit is 2000', length(query)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT m.id INTO model FROM imgsearch.models m WHERE m.active;
    IF model IS NULL THEN
        RAISE EXCEPTION 'the catalog has no active model' USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF (SELECT m.external FROM imgsearch.models m WHERE m.id = model) THEN
        RAISE EXCEPTION 'the catalog''s model % embeds no text here: its vectors come from elsewhere '
            '(imgsearch model add); search with imgsearch.search_vector and a query vector made by that model',
            (SELECT m.name FROM imgsearch.models m WHERE m.id = model)
            USING ERRCODE = 'object_not_in_prerequisite_state';
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
    IF NOT ('imgsearch_text' = ANY (coalesce(imgsearch.dblink_get_connections(), '{}'))) THEN
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
        PERFORM imgsearch.dblink_connect('imgsearch_text', conninfo || ' dbname='
            || imgsearch._conninfo_quote(current_database()) || ' application_name=imgsearch-search-text');
    END IF;
    hex := encode(convert_to(query, 'UTF8'), 'hex');  -- only 0-9a-f reaches the loopback's SQL
    LOOP
        IF asked IS NULL OR clock_timestamp() - asked > interval '1 second' THEN
            -- again after a second without an answer: a worker killed with the request claimed
            PERFORM * FROM imgsearch.dblink('imgsearch_text', format(
                'SELECT imgsearch._request_text(%s::smallint, convert_from(decode(%L, ''hex''), ''UTF8''))',
                model, hex)) AS r(ok text);
            asked := clock_timestamp();
        END IF;
        SELECT * INTO answer FROM imgsearch.dblink('imgsearch_text', format(
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
            SELECT count(*) INTO listening FROM pg_stat_activity a
                WHERE a.datname = current_database() AND a.application_name = 'imgsearch text listener';
            IF listening = 0 THEN
                RAISE EXCEPTION 'no imgsearch worker answered within % s: start one with `imgsearch worker` '
                    '(none listens; a worker just started listens once its model is loaded: '
                    '`imgsearch status --wait-worker` waits for it)', timeout
                    USING ERRCODE = 'query_canceled';
            END IF;
            RAISE EXCEPTION 'no imgsearch worker answered within % s (% listening): busy or slow; '
                'SET imgsearch.text_timeout to wait longer, or start more with `imgsearch worker`',
                timeout, listening
                USING ERRCODE = 'query_canceled';
        END IF;
        PERFORM pg_sleep(pause);
        pause := least(pause * 1.5, 0.02);
    END LOOP;
END
$function$;"""


def upgrade() -> None:
    bind = op.get_bind()
    definitions.run(bind, TEXT_EMBEDDING)
    definitions.run(bind, SETUP_TEXT_LOOPBACK)
    # the operator's (the migrating role's) to run: it makes a login and a user mapping
    op.execute("REVOKE ALL ON FUNCTION imgsearch.setup_text_loopback(text, integer) FROM PUBLIC")


def downgrade() -> None:
    bind = op.get_bind()
    op.execute("DROP FUNCTION imgsearch.setup_text_loopback(text, integer)")
    schema = bind.execute(
        text(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
            "WHERE e.extname = 'dblink'"
        )
    ).scalar()
    if schema == "imgsearch":  # elsewhere (an administrator's dblink), 0032's definition stays: it works there
        definitions.run(bind, PREVIOUS_TEXT_EMBEDDING)
