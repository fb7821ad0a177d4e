-- imgsearch.create_tenant_login: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch.create_tenant_login(login text, tenant text, password text DEFAULT NULL::text)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
        BEGIN
            IF login IS NULL OR login !~ '^[a-z_][a-z0-9_]{0,62}$' THEN
                RAISE EXCEPTION 'login must be lowercase letters, digits and underscores, got %', login
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            IF tenant IS NULL OR tenant = '' THEN
                RAISE EXCEPTION 'tenant must not be empty' USING ERRCODE = 'invalid_parameter_value';
            END IF;
            IF password IS NULL THEN
                EXECUTE format('CREATE ROLE %I LOGIN IN ROLE imgsearch_console', login);
            ELSE
                EXECUTE format('CREATE ROLE %I LOGIN PASSWORD %L IN ROLE imgsearch_console', login, password);
            END IF;
            INSERT INTO imgsearch.tenant_logins (role_name, tenant) VALUES (login, tenant);
        END
        $function$;
