"""Tenant isolation: PostgreSQL row-level security, from the library's side.

Whenever a call names a tenant, its transaction runs as the ``imgsearch_app`` role with the
``imgsearch.tenant`` setting set to that tenant (both transaction-local), and the policies created
by migration 0003 hide every other tenant's rows: a forgotten filter, a foreign id or a crafted
``where`` can't reach them. SQL console logins made by :func:`create_login` are bound to their
tenant on the server, by login name.

On a Citus coordinator (:mod:`imgsearch.db.citus`) the policies run on the workers' shards, which
see a setting only when it comes as ``SET LOCAL`` (``citus.propagate_set_commands = 'local'``,
set by ``imgsearch db distribute``): there the tenant is also sent that way, as a quoted literal
(a SET takes no parameters; the name is checked by :func:`~imgsearch.ingest.checks.identifier`
first).
"""

from __future__ import annotations

import secrets
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from psycopg import sql
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError, ProgrammingError

from imgsearch.db import citus, wire
from imgsearch.db.compiled import Compiled
from imgsearch.errors import ConfigurationError, InvalidInput
from imgsearch.ingest import checks

APP_ROLE = "imgsearch_app"
WORKER_ROLE = "imgsearch_worker"
ADMIN_ROLE = "imgsearch_admin"
CONSOLE_ROLE = "imgsearch_console"


def scope(conn: Connection, tenant: str, *, defer: bool = False) -> str:
    """Restrict the rest of the current transaction to ``tenant`` (SET LOCAL semantics); the
    tenant's name as stored (:func:`imgsearch.ingest.checks.identifier`). ``defer``: sent with
    the transaction's next statement, in its round trip (:func:`imgsearch.db.wire.defer`: no
    statement runs before it), once the role switch has worked on this engine (the first time it
    is sent at once, so a login that can't switch gets the error below)."""
    tenant = checks.identifier(tenant, "tenant")
    scoping = Compiled.once(_SCOPE_STATEMENT, conn)
    values = {"role": APP_ROLE, "tenant": tenant}
    try:
        # one statement: set_config(..., true) is SET LOCAL, and 'role' is what SET ROLE sets;
        # compiled once (every search of a shop sends it)
        if defer and conn.engine in _SWITCHED:
            wire.defer(conn, scoping.bound(values))
        else:
            scoping.send(conn, values)
            _SWITCHED.add(conn.engine)
        if citus.on_coordinator(conn):
            driver_conn = conn.connection.driver_connection
            assert driver_conn is not None
            command = sql.SQL(citus.PROPAGATE + "; SET LOCAL imgsearch.tenant TO {}").format(sql.Literal(tenant))
            conn.exec_driver_sql(command.as_string(driver_conn))
    except ProgrammingError as exc:
        raise ConfigurationError(
            f"the database login cannot switch to role {APP_ROLE} for tenant isolation; "
            f"run `GRANT {APP_ROLE} TO <login>` as an administrator"
        ) from exc
    return tenant


_SCOPE_STATEMENT = text(
    "SELECT set_config('role', :role, true), set_config('imgsearch.tenant', :tenant, true)"
)
_SWITCHED: weakref.WeakSet[Engine] = weakref.WeakSet()  # engines whose login switched to the role


@contextmanager
def begin(engine: Engine, tenant: str | None) -> Iterator[Connection]:
    """A transaction on ``engine``, restricted to ``tenant`` (:func:`scope`) when one is given."""
    with engine.begin() as conn:
        if tenant is not None:
            scope(conn, tenant)
        yield conn


def run_as_worker(conn: Connection) -> None:
    """Let the current transaction process every tenant (workers, sweeps)."""
    conn.execute(text(f"SET LOCAL ROLE {WORKER_ROLE}"))


def create_login(engine: Engine, login: str, tenant: str, password: str | None = None) -> str:
    """Create a PostgreSQL login that sees only ``tenant``'s rows, for a SQL console (psql), and
    return its password: ``password``, or one made here (logins other than the server's owner
    authenticate by password: the embedded server requires it, scram-sha-256).

    >>> create_login(catalog.engine, "acme_console", "acme", password="...")   # doctest: +SKIP
    '...'
    """
    if password is None:
        password = secrets.token_urlsafe(24)
    # the SQL function checks the login's form; values PostgreSQL can't even receive stop here
    if isinstance(login, str):
        checks.name(login, "login")
    tenant = checks.identifier(tenant, "tenant")  # as uploads store it
    if isinstance(password, str) and "\x00" in password:
        raise InvalidInput("password must not contain a NUL character")
    if password == "":
        raise InvalidInput("password must not be empty: PostgreSQL takes an empty one for none")
    try:
        with engine.begin() as conn:
            conn.execute(
                text("SELECT imgsearch.create_tenant_login(:login, :tenant, :password)"),
                {"login": login, "tenant": tenant, "password": password},
            )
    except DBAPIError as exc:
        sqlstate = getattr(exc.orig, "sqlstate", None)
        message = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        if sqlstate == "42710":  # duplicate_object
            raise InvalidInput(f"a login named {login!r} already exists") from exc
        if sqlstate in ("22023", "42501"):  # invalid_parameter_value, insufficient_privilege
            raise InvalidInput(message) from exc
        raise
    return password
