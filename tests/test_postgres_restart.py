"""PostgreSQL restarting under a Dagster run of the prod instance: a clear failure, then a retry that works.

How the restart is made, and why in front of the server: `bench.postgres_restart`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.tags import RUN_FAILURE_REASON_TAG, WILL_RETRY_TAG

from bench.postgres_restart import database, etl, failing, prod_instance, restart_at_step_launch
from bench.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration


@pytest.fixture
def instance_behind_relay(tmp_path: Path) -> Iterator[tuple[dg.DagsterInstance, TcpProxy]]:
    with database() as name, prod_instance(name, tmp_path / "dagster_home") as instance:
        yield instance


def test_a_run_cut_off_by_a_restart_fails_clearly_and_its_retry_completes(
    instance_behind_relay: tuple[dg.DagsterInstance, TcpProxy],
) -> None:
    instance, proxy = instance_behind_relay
    restart = threading.Thread(target=restart_at_step_launch, args=(instance, proxy), daemon=True)
    restart.start()
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
    instance_behind_relay: tuple[dg.DagsterInstance, TcpProxy],
) -> None:
    instance, _proxy = instance_behind_relay
    result = dg.execute_job(dg.reconstructable(failing), instance=instance, raise_on_error=False)
    run = instance.get_run_by_id(result.run_id)
    assert run is not None and run.status == dg.DagsterRunStatus.FAILURE
    assert run.tags[RUN_FAILURE_REASON_TAG] == "STEP_FAILURE"
    assert run.tags[WILL_RETRY_TAG] == "false", "a failed check needs a person, not a loop of retries"
