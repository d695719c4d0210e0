"""Create the prod profile's PostgreSQL databases: each service gets its own.

Dagster and MLflow both own a table called `runs`, so they cannot share one
database; keeping Feast apart too lets each be backed up and dropped alone.
"""

from __future__ import annotations

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url


def ensure_database(url: str) -> bool:
    """Create the database named by a SQLAlchemy/libpq URL if it is missing.

    Returns:
        True when it was created.
    """
    parsed = make_url(url)
    name = parsed.database
    if not name:
        raise ValueError(f"{parsed.render_as_string(hide_password=True)} names no database")
    server = parsed.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    with psycopg.connect(server, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists:
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return True


def drop_database(url: str) -> None:
    parsed = make_url(url)
    server = parsed.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(str(parsed.database)))
        )
