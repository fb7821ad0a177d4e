-- imgsearch.login_tenant: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch.login_tenant()
 RETURNS text
 LANGUAGE sql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog'
BEGIN ATOMIC
 SELECT tenant_logins.tenant
    FROM imgsearch.tenant_logins
   WHERE (tenant_logins.role_name = SESSION_USER);
END;
