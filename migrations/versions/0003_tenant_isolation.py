"""Tenant isolation with row-level security.

Roles (cluster-wide, created when missing, kept on downgrade because other databases of the
cluster may use them):

* ``imgsearch_app``: what the library switches to (``SET LOCAL ROLE``) for a tenant's work; sees
  only rows whose tenant equals the transaction's ``imgsearch.tenant`` setting (none when unset).
* ``imgsearch_console``: group of psql logins made by ``imgsearch.create_tenant_login``; each login
  sees only the tenant recorded for it in ``imgsearch.tenant_logins``, looked up by
  ``session_user``, so changing a setting or ``SET ROLE`` does not change its tenant.
* ``imgsearch_worker``: workers; every tenant (they never move rows across tenants: embeddings
  reference their image and product by (id, tenant)).
* ``imgsearch_admin``: every tenant.

The tables' owner (the login that runs the migrations) is not subject to the policies; applications
and consoles should use the roles above.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLES = ("imgsearch_app", "imgsearch_console", "imgsearch_worker", "imgsearch_admin")
TENANT_TABLES = ("products", "images", "embeddings")


def upgrade() -> None:
    for role in ROLES:
        op.execute(
            f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') "
            f"THEN CREATE ROLE {role} NOLOGIN; END IF; END $$"
        )
    # The migrating login must be able to SET ROLE to the app and worker roles; a superuser can
    # already, and PostgreSQL 16+ lets a role's creator grant it.
    op.execute(
        """DO $$ BEGIN
            IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
                GRANT imgsearch_app, imgsearch_worker, imgsearch_admin TO CURRENT_USER;
            END IF;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE WARNING 'cannot grant imgsearch roles to %: ask an administrator to', current_user;
        END $$"""
    )
    op.execute(
        """CREATE TABLE imgsearch.tenant_logins (
            role_name text PRIMARY KEY,
            tenant text NOT NULL CHECK (tenant <> ''),
            created_at timestamptz NOT NULL DEFAULT now()
        )"""
    )
    op.execute(
        """CREATE FUNCTION imgsearch.login_tenant() RETURNS text
        LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog
        BEGIN ATOMIC
            SELECT tenant FROM imgsearch.tenant_logins WHERE role_name = session_user;
        END"""
    )
    op.execute(
        """CREATE FUNCTION imgsearch.current_tenant() RETURNS text
        LANGUAGE sql STABLE
        BEGIN ATOMIC
            SELECT nullif(current_setting('imgsearch.tenant', true), '');
        END"""
    )
    op.execute(
        r"""CREATE FUNCTION imgsearch.create_tenant_login(login text, tenant text, password text DEFAULT NULL)
        RETURNS void LANGUAGE plpgsql SECURITY INVOKER
        AS $fn$
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
        $fn$"""
    )
    op.execute("REVOKE ALL ON FUNCTION imgsearch.create_tenant_login(text, text, text) FROM PUBLIC")
    op.execute("REVOKE ALL ON imgsearch.tenant_logins FROM PUBLIC")

    everyone = ", ".join(ROLES)
    op.execute(f"GRANT USAGE ON SCHEMA imgsearch TO {everyone}")
    op.execute(f"GRANT SELECT ON imgsearch.models TO {everyone}")
    op.execute(
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {', '.join('imgsearch.' + t for t in TENANT_TABLES)} TO {everyone}"
    )
    op.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA imgsearch TO {everyone}")
    op.execute(
        f"GRANT EXECUTE ON FUNCTION imgsearch.login_tenant(), imgsearch.current_tenant() TO {everyone}"
    )
    for table in TENANT_TABLES:
        op.execute(f"ALTER TABLE imgsearch.{table} ENABLE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY tenant_app ON imgsearch.{table} TO imgsearch_app "
            "USING (tenant = imgsearch.current_tenant()) WITH CHECK (tenant = imgsearch.current_tenant())"
        )
        op.execute(
            f"CREATE POLICY tenant_console ON imgsearch.{table} TO imgsearch_console "
            "USING (tenant = imgsearch.login_tenant()) WITH CHECK (tenant = imgsearch.login_tenant())"
        )
        op.execute(
            f"CREATE POLICY all_tenants ON imgsearch.{table} TO imgsearch_worker, imgsearch_admin "
            "USING (true) WITH CHECK (true)"
        )


def downgrade() -> None:
    everyone = ", ".join(ROLES)
    for table in TENANT_TABLES:
        for policy in ("tenant_app", "tenant_console", "all_tenants"):
            op.execute(f"DROP POLICY {policy} ON imgsearch.{table}")
        op.execute(f"ALTER TABLE imgsearch.{table} DISABLE ROW LEVEL SECURITY")
    op.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA imgsearch FROM {everyone}")
    op.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA imgsearch FROM {everyone}")
    op.execute(f"REVOKE USAGE ON SCHEMA imgsearch FROM {everyone}")
    op.execute("DROP FUNCTION imgsearch.create_tenant_login(text, text, text)")
    op.execute("DROP FUNCTION imgsearch.current_tenant()")
    op.execute("DROP FUNCTION imgsearch.login_tenant()")
    op.execute("DROP TABLE imgsearch.tenant_logins")
