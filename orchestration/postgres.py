"""Create the prod profile's PostgreSQL databases: each service gets its own.

Dagster and MLflow both own a table called `runs`, so they cannot share one
database; keeping Feast apart too lets each be backed up and dropped alone.

Least privilege: given an admin URL, `ensure_database` also makes the role each
service URL names (login, no superuser, no role or database creation), gives it
its database as owner and takes CONNECT away from everyone else, so a service's
credentials reach its own tables and nothing else. The admin URL is used here only.
"""

from __future__ import annotations

import psycopg
from psycopg import sql
from sqlalchemy.engine import URL, make_url


def ensure_database(url: str, admin_url: str | None = None) -> bool:
    """Create the database named by a SQLAlchemy/libpq URL if it is missing.

    Args:
        url: the service's URL: its role, password and database.
        admin_url: a role that may create roles and databases: the service's role is then
            made (or its password set) and given the database, owner and sole user. None:
            the service's own role creates the database, which it must be allowed to.

    Returns:
        True when it was created.
    """
    parsed = make_url(url)
    name = parsed.database
    if not name:
        raise ValueError(f"{parsed.render_as_string(hide_password=True)} names no database")
    server = make_url(admin_url) if admin_url else parsed
    with psycopg.connect(_maintenance(server), autocommit=True) as conn:
        if admin_url:
            _ensure_role(conn, parsed)
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            if admin_url:
                create += sql.SQL(" OWNER {}").format(sql.Identifier(str(parsed.username)))
            conn.execute(create)
        if admin_url:
            conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name)))
        return not exists


def _maintenance(url: URL) -> str:
    """The libpq URL of the server's `postgres` database, as `url`'s role."""
    return url.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)


def _ensure_role(conn: psycopg.Connection, service: URL) -> None:
    """The service's role: able to log in and nothing more; its password set to the URL's."""
    if not service.username:
        raise ValueError(f"{service.render_as_string(hide_password=True)} names no role")
    role = sql.Identifier(service.username)
    if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (service.username,)).fetchone() is None:
        conn.execute(sql.SQL("CREATE ROLE {}").format(role))
    limits = sql.SQL("ALTER ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS")
    conn.execute(limits.format(role))
    if service.password:
        # A literal, quoted by psycopg: DDL takes no parameters. Sent, never logged.
        password = sql.SQL("ALTER ROLE {} PASSWORD {}")
        conn.execute(password.format(role, sql.Literal(str(service.password))))


def drop_database(url: str) -> None:
    parsed = make_url(url)
    server = parsed.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(str(parsed.database)))
        )
