"""PostgreSQL restarting under Dagster runs of the prod instance (tests, `make chaos`).

The session's PostgreSQL is shared, so the restart happens in front of it: the instance
reaches a database of its own through a relay (`bench.tcp_proxy`) that is cut for the
outage, closing every connection and refusing new ones, which is what a client sees while
the server restarts. The instance is the prod profile's `dagster.yaml`, whose `run_retries`
says which failures Dagster's daemon launches again: a run cut off, not a run whose step
failed on its own. A retry is executed as the daemon's default strategy does it, from the
failure. The jobs live here, not in a test, because their step processes import them.
"""

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

from bench.tcp_proxy import TcpProxy, tcp_proxy
from orchestration.postgres import drop_database, ensure_database

ROOT = Path(__file__).resolve().parents[1]
SERVER = ("127.0.0.1", 5432)
OUTAGE_S = 20.0
"""How long the database is cut off: dagster-postgres's connection retries rode out a 10 s outage
(the run paused and succeeded), so a shorter one shows no run failing and being retried."""
PG_URL_ENV = "FRAUDPIPE_DAGSTER_PG_URL"
"""What the prod dagster.yaml reads its storage URL from."""


class Pause(dg.Config):
    seconds: float = 8.0
    """How long the middle step runs: a restart that begins meanwhile cuts the run off mid-step."""


@dg.op
def extract() -> int:
    return 1


@dg.op
def transform(context: dg.OpExecutionContext, config: Pause, value: int) -> int:
    """Reports progress every half second, as long steps do: each report is a write to the instance."""
    deadline = time.monotonic() + config.seconds
    while (left := deadline - time.monotonic()) > 0:
        context.log.info(f"{left:.1f} s to go")
        time.sleep(min(0.5, left))
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


def wait_for_step(
    instance: dg.DagsterInstance, step_key: str = "transform", timeout_s: float = 120.0
) -> None:
    """Return once a run of `etl` has begun launching `step_key`'s process.

    A cut then lands before the step process records that it started, a write the run
    cannot do without: once dagster-postgres's connection retries (about 11 s) are spent,
    the step fails and the run is cut off, if the outage lasts that long after the process
    has started (3-4 s under pytest, about 13 s inside `make chaos`: docs/reliability.md).
    A cut in the middle of the step is ridden out: its log lines' writes fail alone.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        started = instance.get_runs(dg.RunsFilter(job_name=etl.name, statuses=[dg.DagsterRunStatus.STARTED]))
        for run in started:
            records = instance.get_records_for_run(
                run.run_id, of_type=dg.DagsterEventType.STEP_WORKER_STARTING
            ).records
            if any(record.event_log_entry.step_key == step_key for record in records):
                return
        time.sleep(0.1)
    raise TimeoutError(f"no run of {etl.name} began step {step_key!r} in {timeout_s:.0f} s")


def restart_at_step_launch(instance: dg.DagsterInstance, proxy: TcpProxy, outage_s: float = OUTAGE_S) -> None:
    """Cut the relay as a run launches its middle step's process, restore it `outage_s` later."""
    wait_for_step(instance)
    proxy.cut()
    time.sleep(outage_s)
    proxy.restore()


def run_config(step_s: float) -> dict[str, object]:
    return {"ops": {"transform": {"config": {"seconds": step_s}}}}


@contextmanager
def database() -> Iterator[str]:
    """A database of its own on the shared server, dropped after; raises psycopg's error if none answers."""
    name = f"fraudpipe_pgrestart_{uuid.uuid4().hex[:10]}"
    url = f"postgresql://postgres@{SERVER[0]}:{SERVER[1]}/{name}"
    ensure_database(url)
    try:
        yield name
    finally:
        drop_database(url)


@contextmanager
def prod_instance(name: str, home: Path) -> Iterator[tuple[dg.DagsterInstance, TcpProxy]]:
    """The prod profile's instance under `home`, its storage the database `name` behind a relay."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text((ROOT / "orchestration/instance/prod/dagster.yaml").read_text())
    before = os.environ.get(PG_URL_ENV)
    with tcp_proxy(SERVER) as proxy:
        # dagster-postgres speaks psycopg2.
        os.environ[PG_URL_ENV] = f"postgresql+psycopg2://postgres@127.0.0.1:{proxy.port}/{name}"
        try:
            with dg.DagsterInstance.from_config(str(home)) as instance:
                yield instance, proxy
        finally:
            if before is None:
                del os.environ[PG_URL_ENV]
            else:
                os.environ[PG_URL_ENV] = before
