"""PostgreSQL restarting under a Dagster run of the prod instance: a clear failure, then a retry that works.

The session's PostgreSQL is shared with other tests, so the restart happens in front of it:
the run's instance reaches its own database through a relay (`tests.tcp_proxy`) that the test
cuts for 20 s, resetting every connection and refusing new ones, which is what a client sees
while the server restarts. The instance is the prod profile's `dagster.yaml`, whose
`run_retries` says which failures Dagster's daemon launches again: this one, and not a run
whose step failed on its own.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from dagster._core.storage.tags import RUN_FAILURE_REASON_TAG, WILL_RETRY_TAG
from psycopg import sql

from orchestration.postgres import ensure_database
from tests.tcp_proxy import TcpProxy, tcp_proxy

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
SERVER = ("127.0.0.1", 5432)
ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
OUTAGE_S = 20.0
"""Longer than dagster-postgres's own connection retries (5 × 0.2 s), so the run does see it."""


@dg.op
def extract() -> int:
    return 1


@dg.op
def transform(value: int) -> int:
    time.sleep(8)  # the restart begins while this step runs
    return value + 1


@dg.op
def load(value: int) -> int:
    return value * 2


@dg.job
def etl() -> None:
    load(transform(extract()))


@dg.op
def refuse() -> None:
    raise ValueError("a check that failed on its own")


@dg.job
def failing() -> None:
    refuse()


@pytest.fixture
def database() -> Iterator[str]:
    name = f"fraudpipe_pgrestart_{uuid.uuid4().hex[:10]}"
    ensure_database(f"postgresql://postgres@127.0.0.1:5432/{name}")
    yield name
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def prod_instance(
    database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[dg.DagsterInstance, TcpProxy]]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "orchestration/instance/prod/dagster.yaml").read_text())
    with tcp_proxy(SERVER) as proxy:
        # dagster-postgres speaks psycopg2.
        monkeypatch.setenv(
            "FRAUDPIPE_DAGSTER_PG_URL", f"postgresql+psycopg2://postgres@127.0.0.1:{proxy.port}/{database}"
        )
        with dg.DagsterInstance.from_config(str(home)) as instance:
            yield instance, proxy


def _restart_after(proxy: TcpProxy, delay_s: float) -> threading.Thread:
    def restart() -> None:
        time.sleep(delay_s)
        proxy.cut()
        time.sleep(OUTAGE_S)
        proxy.restore()

    thread = threading.Thread(target=restart, daemon=True)
    thread.start()
    return thread


def test_a_run_cut_off_by_a_restart_fails_clearly_and_its_retry_completes(
    prod_instance: tuple[dg.DagsterInstance, TcpProxy],
) -> None:
    instance, proxy = prod_instance
    restart = _restart_after(proxy, delay_s=3)
    result = dg.execute_job(dg.reconstructable(etl), instance=instance, raise_on_error=False)
    restart.join()
    assert not result.success, "the run went through a 20 s outage unscathed: nothing was cut"

    run = instance.get_run_by_id(result.run_id)
    assert run is not None and run.status == dg.DagsterRunStatus.FAILURE
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE)
    reason = f"{failure.message} {failure.event_specific_data}"
    assert "Connection refused" in reason or "too many retries for DB connection" in reason, reason
    assert run.tags[RUN_FAILURE_REASON_TAG] != "STEP_FAILURE"
    assert run.tags[WILL_RETRY_TAG] == "true", "the prod instance's run_retries launch it again"

    # What the daemon launches for it: a re-execution from the failure (Dagster's default strategy).
    with dg.execute_job(
        dg.reconstructable(etl),
        instance=instance,
        reexecution_options=dg.ReexecutionOptions.from_failure(run.run_id, instance),
    ) as retry:
        assert retry.success
        assert retry.output_for_node("load") == 4
    retried = instance.get_run_by_id(retry.run_id)
    assert retried is not None and retried.parent_run_id == run.run_id


def test_a_run_whose_step_failed_on_its_own_is_not_retried(
    prod_instance: tuple[dg.DagsterInstance, TcpProxy],
) -> None:
    instance, _proxy = prod_instance
    result = dg.execute_job(dg.reconstructable(failing), instance=instance, raise_on_error=False)
    run = instance.get_run_by_id(result.run_id)
    assert run is not None and run.status == dg.DagsterRunStatus.FAILURE
    assert run.tags[RUN_FAILURE_REASON_TAG] == "STEP_FAILURE"
    assert run.tags[WILL_RETRY_TAG] == "false", "a failed check needs a person, not a loop of retries"
