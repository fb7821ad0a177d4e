-- imgsearch.setup_text_loopback: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch.setup_text_loopback(host text DEFAULT NULL::text, port integer DEFAULT NULL::integer)
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
$function$;
