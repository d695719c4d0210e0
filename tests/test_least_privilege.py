"""`make prod-init` with an admin URL: each service's role owns its database and reaches no other."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from typer.testing import CliRunner

from orchestration.cli import app

pytestmark = pytest.mark.integration

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
SERVICES = ("dagster", "mlflow", "feast")


@pytest.fixture
def service_urls() -> Iterator[dict[str, str]]:
    tag = f"fp{uuid.uuid4().hex[:8]}"
    urls = {
        name: f"postgresql+psycopg://{tag}_{name}:pw-{name}-{tag}@127.0.0.1:5432/{tag}_{name}"
        for name in SERVICES
    }
    yield urls
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        for name in SERVICES:
            ident = sql.Identifier(f"{tag}_{name}")
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(ident))


def test_each_service_role_owns_its_database_alone(
    service_urls: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FRAUDPIPE_PROFILE", "prod")
    monkeypatch.setenv("FRAUDPIPE_PG_ADMIN_URL", ADMIN)
    monkeypatch.setenv("FRAUDPIPE_BUS_URL", "redis://127.0.0.1:6379/1")
    monkeypatch.setenv("FRAUDPIPE_ONLINE_URL", "redis://127.0.0.1:6379/0")
    for name, url in service_urls.items():
        monkeypatch.setenv(f"FRAUDPIPE_{name.upper()}_PG_URL", url)
    for _ in range(2):  # twice: the second run finds everything in place and changes nothing
        result = CliRunner().invoke(app, ["prod-init"])
        assert result.exit_code == 0, result.output
    assert result.output.count("exists; its role owns it alone") == 3
    for url in service_urls.values():
        assert "pw-" not in result.output and url not in result.output

    with psycopg.connect(ADMIN) as conn:
        for url in service_urls.values():
            role = url.split("//")[1].split(":")[0]
            database = url.rsplit("/", 1)[1]
            flags = conn.execute(
                "SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = %s",
                (role,),
            ).fetchone()
            assert flags == (True, False, False, False), (role, flags)
            owner = conn.execute(
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (database,)
            ).fetchone()
            assert owner == (role,)

    def libpq(url: str, database: str | None = None) -> str:
        plain = url.replace("postgresql+psycopg://", "postgresql://")
        return plain if database is None else plain.rsplit("/", 1)[0] + f"/{database}"

    dagster, mlflow = service_urls["dagster"], service_urls["mlflow"]
    with psycopg.connect(libpq(dagster), autocommit=True) as own:
        own.execute("CREATE TABLE runs (id int)")  # its own database: it may create its tables
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        psycopg.connect(libpq(dagster, mlflow.rsplit("/", 1)[1]))
