"""Exactly once per trigger: 20 drifted days, the Dagster daemon SIGKILLed at random points (issue 5).

A real `dagster-daemon run` ticks the real retraining sensors (`tests/daemon_location.py`) over a
temporary SQLite instance. The test reports drifted `feature_drift` days one at a time, as the
daily monitoring job would, and kills the daemon's process group with SIGKILL at seeded random
points (`Kill`): a moment after a tick with a day to launch begins (evaluating, reserving, creating
or launching its run), and at the end of such a tick, caught between saving the tick and saving
the sensor's cursor, the window where only the run key prevents a second run. Each time it starts
a new daemon, until every day has been dealt with. Then every `dagster/run_key` must have exactly
one run, every drifted day exactly one run, and no drifted day none.

The code location runs in its own code server, started once, as `dagster dev` and the Helm chart
run it: a daemon crash kills the daemon, not the code server nor the runs it launched. Runs are
stand-ins (one op that logs its window): what is tested is the sensors and the daemon's tick
machinery, not training.

The next day is reported once the last one has its run, or once a finished drift tick that began
after it was reported, with no retraining run unfinished, launched nothing for it: the sensor
passed over it, and the test records it as lost instead of waiting for ever.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy
import yaml
from dagster._core.scheduler.instigation import (
    InstigatorTick,
    InstigatorType,
    SensorInstigatorData,
    TickStatus,
)

from bench.ports import free_port
from orchestration.jobs import RETRAINING_JOB
from orchestration.resources import LakeResource
from orchestration.retraining import TRIGGER_DAY_TAG
from tests.daemon_location import LAKE_ROOT_ENV

ROOT = Path(__file__).resolve().parent.parent
LOCATION_FILE = Path(__file__).resolve().parent / "daemon_location.py"
LOCAL_INSTANCE = ROOT / "orchestration" / "instance" / "local" / "dagster.yaml"
BIN = Path(sys.executable).parent
RUN_KEY_TAG = "dagster/run_key"

DRIFTED_DAYS = [d.strftime("%Y-%m-%d") for d in pd.date_range("2018-09-01", periods=20, freq="D")]
REPORT_DAY = "2018-09-28"
"""The one landed fraud report partition: `retrain_run_config` needs a settled day to end on."""
SEED = 20240905
KILLS = 8
POLL_S = 0.05
"""How often the test looks at the instance."""
END_POLL_S = 0.005
"""How often it looks at a tick it means to kill the daemon after: the daemon saves the tick, then
the sensor's cursor, a few milliseconds apart."""
STALL_S = 300
"""Not a performance bound: a day waiting this long for its run (run monitoring frees a run stuck
STARTING after 60 s) means the daemon is stuck, and the test fails saying what it saw instead of
hanging until pytest's own timeout."""
CODE_SERVER_START_S = 300
"""The code server imports the code location (dagster, pandas) before it listens: slow on 2 busy cores."""
SETTLE_TICKS = 2
"""Drift ticks the last daemon completes after the last run finished: a repeated request would
show there."""


@dataclass(frozen=True)
class Kill:
    """How one daemon life ends.

    `start`: SIGKILL `after` seconds past the start of the `nth` drift tick seen under way with a
    day waiting for its run (evaluating, reserving, creating or launching the run).
    `end`: at the end of each tick that launches a run, SIGSTOP at once, then SIGKILL if the
    daemon stopped between saving the tick and saving the sensor's cursor (a window of
    milliseconds, the one where only the run key prevents a second run), else SIGCONT; SIGKILL
    regardless at the `nth` such tick.
    """

    at: Literal["start", "end"]
    nth: int
    after: float = 0.0


def kill_plan(rng: random.Random, kills: int) -> list[Kill]:
    """Seeded random kill points. None while the daemon starts: with no tick under way a kill
    there leaves nothing to recover and costs a restart."""
    return [
        Kill("start", rng.randint(1, 3), rng.uniform(0.0, 2.0))
        if rng.random() < 0.5
        else Kill("end", rng.randint(1, 3))
        for _ in range(kills)
    ]


def write_instance(home: Path, port: int) -> Path:
    """The local profile's dagster.yaml plus what a daemon needs; returns the workspace file.

    SQLite storage under `home`; the default coordinator launches a run from the sensor's own
    tick; run monitoring fails a run left STARTING by a kill between the daemon marking it
    STARTING and the code server receiving it, which would otherwise be unfinished for ever
    and block every retraining sensor (`orchestration.retraining._blocked`).
    """
    config = yaml.safe_load(LOCAL_INSTANCE.read_text()) or {}
    config.update(
        {
            "storage": {"sqlite": {"base_dir": str(home)}},
            "run_coordinator": {
                "module": "dagster._core.run_coordinator",
                "class": "DefaultRunCoordinator",
            },
            "run_launcher": {"module": "dagster._core.launcher", "class": "DefaultRunLauncher"},
            "run_monitoring": {
                "enabled": True,
                "start_timeout_seconds": 60,
                "poll_interval_seconds": 5,
                "max_resume_run_attempts": 0,
            },
        }
    )
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    workspace = home / "workspace.yaml"
    server = {"host": "127.0.0.1", "port": port, "location_name": "sensor_crash_test"}
    workspace.write_text(yaml.safe_dump({"load_from": [{"grpc_server": server}]}))
    return workspace


def _report_drift(instance: dg.DagsterInstance, day: str) -> None:
    """A `feature_drift` materialisation of a drifted day, as the monitoring job records it."""
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            asset_key="feature_drift",
            partition=day,
            metadata={
                "drift_detected": True,
                "drifted_features": dg.MetadataValue.json(["TX_AMOUNT", "CUSTOMER_ID_MEAN_AMOUNT_1DAY"]),
                "max_psi": 0.42,
            },
        )
    )


@dataclass
class Processes:
    """Every process group the test started, killed at teardown whatever happened."""

    logs: Path
    env: dict[str, str]
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, name: str, *command: str | Path) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                [str(part) for part in command],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started.append(proc)
        return proc

    @staticmethod
    def kill(proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL to the whole group: no shutdown hook of the daemon runs."""
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def kill_all(self) -> None:
        for proc in self.started:
            self.kill(proc)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home"), LAKE_ROOT_ENV: str(tmp_path / "lake")}
    procs = Processes(logs, env)
    try:
        yield procs
    finally:
        procs.kill_all()


def _wait_for_port(port: int, server: subprocess.Popen[bytes]) -> None:
    """The code server listens once it has loaded the code location."""
    deadline = time.monotonic() + CODE_SERVER_START_S
    while time.monotonic() < deadline:
        assert server.poll() is None, "the code server exited: see its log under the test's tmp_path"
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"the code server did not listen on port {port} in {CODE_SERVER_START_S} s")


def _log_count(logs: Path, pattern: str) -> int:
    return sum(len(re.findall(pattern, p.read_text(errors="replace"))) for p in logs.glob("daemon-*.log"))


class Scenario:
    """The test's side of the instance: reports drifted days, watches ticks and runs, kills daemons."""

    def __init__(self, instance: dg.DagsterInstance, processes: Processes, workspace: Path) -> None:
        self.instance = instance
        self.processes = processes
        self.workspace = workspace
        self.to_report = list(DRIFTED_DAYS)
        self.reported_at: dict[str, float] = {}
        self.passed_over: list[str] = []
        self.crashes: list[str] = []
        self.lives = 0
        self.progress_at = time.time()
        self._sensor_ids: tuple[str, str] | None = None

    def runs(self) -> list[dg.RunRecord]:
        return list(self.instance.get_run_records(dg.RunsFilter(job_name=RETRAINING_JOB)))

    def _drift_sensor_ids(self) -> tuple[str, str] | None:
        if self._sensor_ids is None:
            states = self.instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
            state = next((s for s in states if s.instigator_name == "drift_sensor"), None)
            if state is not None:
                self._sensor_ids = (state.instigator_origin_id, state.selector_id)
        return self._sensor_ids

    def drift_ticks(self, after: float | None = None, limit: int | None = None) -> list[InstigatorTick]:
        """The drift sensor's ticks, newest first."""
        ids = self._drift_sensor_ids()
        return list(self.instance.get_ticks(*ids, after=after, limit=limit)) if ids else []

    def _cursor_saved(self, tick: InstigatorTick) -> bool:
        """Whether the daemon has saved, as the sensor's cursor, the cursor of this finished tick."""
        ids = self._drift_sensor_ids()
        state = self.instance.get_instigator_state(*ids) if ids else None
        data = state.instigator_data if state is not None else None
        return isinstance(data, SensorInstigatorData) and data.cursor == tick.cursor

    def crash_state(self) -> str:
        """Where the last kill left the drift sensor, read from what the daemon had saved."""
        ticks = self.drift_ticks(limit=1)
        if not ticks:
            return "before its first tick"
        tick = ticks[0]
        if tick.status == TickStatus.STARTED:
            if tick.unsubmitted_run_ids_with_requests:
                return "tick with reserved runs unfinished"
            return "tick evaluating"
        if tick.run_keys and not self._cursor_saved(tick):
            return "tick saved, cursor not"
        return "between ticks"

    def _dealt_with(self, day: str, runs: list[dg.RunRecord], keys: set[str | None]) -> bool:
        """The day has its run, or a finished tick that had to launch it did not."""
        if f"drift-{day}" in keys or day in self.passed_over:
            return True
        if not all(r.dagster_run.is_finished for r in runs):
            return False
        since = max([self.reported_at[day], *(r.end_time or 0.0 for r in runs)])
        if not any(t.status == TickStatus.SUCCESS or t.skip_reason for t in self.drift_ticks(after=since)):
            return False
        if f"drift-{day}" in {r.dagster_run.tags.get(RUN_KEY_TAG) for r in self.runs()}:
            return True  # launched while the ticks were being read
        self.passed_over.append(day)
        return True

    def report_next(self, runs: list[dg.RunRecord]) -> bool:
        """Reports the next drifted day once the last one is dealt with; whether one is waiting."""
        keys = {r.dagster_run.tags.get(RUN_KEY_TAG) for r in runs}
        last = next(reversed(self.reported_at), None)
        if last is not None and not self._dealt_with(last, runs, keys):
            return True
        if not self.to_report:
            return False
        day = self.to_report.pop(0)
        _report_drift(self.instance, day)
        self.reported_at[day] = self.progress_at = time.time()  # ticks after this one see the day
        return True

    def _wait_for_end(self, tick: InstigatorTick) -> InstigatorTick:
        """Polls one tick closely until it finishes, so a kill can follow its saving at once; the
        next day is reported as soon as the waiting one has its run, while the tick still runs."""
        waiting = next(reversed(self.reported_at))
        while True:
            if next(reversed(self.reported_at)) == waiting:
                self.report_next(self.runs())
            latest = self.drift_ticks(after=tick.timestamp - 1e-3)
            now = next((t for t in latest if t.tick_id == tick.tick_id), tick)
            if now.status != TickStatus.STARTED:
                return now
            self._check_stall()
            time.sleep(END_POLL_S)

    def _check_stall(self) -> None:
        assert time.time() - self.progress_at < STALL_S, (
            f"no progress for {STALL_S} s in daemon life {self.lives}: reported {list(self.reported_at)}, "
            f"runs {[(r.dagster_run.tags.get(RUN_KEY_TAG), r.dagster_run.status.value) for r in self.runs()]}"
        )

    def _new_tick(self, born: float, seen: set[int]) -> InstigatorTick | None:
        """The oldest drift tick of this life first seen under way."""
        new = None
        for tick in reversed(self.drift_ticks(after=born)):
            if tick.tick_id not in seen and tick.status == TickStatus.STARTED and new is None:
                new = tick
            seen.add(tick.tick_id)
        return new

    def _freeze_at_end(self, daemon: subprocess.Popen[bytes], tick: InstigatorTick) -> bool | None:
        """Waits for the tick to finish; if it launched a run, freezes the daemon (SIGSTOP) at once
        and says whether it stopped between saving the tick and saving the cursor. None if the tick
        launched nothing."""
        finished = self._wait_for_end(tick)
        if finished.status != TickStatus.SUCCESS or not finished.run_keys:
            return None
        os.killpg(daemon.pid, signal.SIGSTOP)
        try:
            return not self._cursor_saved(finished)
        except sqlalchemy.exc.OperationalError:
            return True  # SQLite's "locking protocol": stopped inside its write of the cursor

    def live(self, kill: Kill | None) -> None:
        """One daemon life: until `kill` strikes, or, for the last life, until all is settled."""
        self.lives += 1
        daemon = self.processes.start(
            f"daemon-{self.lives}", BIN / "dagster-daemon", "run", "-w", self.workspace
        )
        born = time.time()
        kill_at: float | None = None
        seen: set[int] = set()
        started = tries = 0
        settled_after: float | None = None
        while kill_at is None or time.time() < kill_at:
            self._check_stall()
            assert daemon.poll() is None, f"daemon life {self.lives} exited by itself: see its log"
            runs = self.runs()
            waiting = self.report_next(runs)
            if kill is not None and not waiting and not self.to_report:
                break  # nothing left to crash in: this life ends between ticks
            tick = self._new_tick(born, seen) if waiting else None
            if tick is not None and kill is not None and kill.at == "start":
                started += 1
                if started == kill.nth:
                    kill_at = time.time() + kill.after
            elif tick is not None and kill is not None:
                caught = self._freeze_at_end(daemon, tick)
                tries += caught is not None
                if caught or tries == kill.nth:
                    break
                if caught is not None:
                    os.killpg(daemon.pid, signal.SIGCONT)
            if kill is None and not waiting and all(r.dagster_run.is_finished for r in runs):
                settled_after = settled_after or time.time()
                after = self.drift_ticks(after=settled_after)
                if sum(t.status != TickStatus.STARTED for t in after) >= SETTLE_TICKS:
                    break
            time.sleep(POLL_S)
        self.processes.kill(daemon)
        if kill is not None:
            self.crashes.append(self.crash_state())
            self.progress_at = time.time()


@pytest.mark.e2e
@pytest.mark.daemon
def test_daemon_killed_at_random_points_launches_each_trigger_exactly_once(
    tmp_path: Path, processes: Processes
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    LakeResource(root=str(tmp_path / "lake")).write_partition(
        "fraud_reports",
        REPORT_DAY,
        pd.DataFrame({"REPORT_DATETIME": pd.to_datetime([f"{REPORT_DAY} 12:00"], utc=True)}),
    )
    port = free_port()
    workspace = write_instance(home, port)
    began = time.monotonic()
    server = processes.start(
        "code-server",
        *(BIN / "dagster", "api", "grpc", "--python-file", LOCATION_FILE, "--working-directory", ROOT),
        *("--host", "127.0.0.1", "--port", str(port)),
    )
    _wait_for_port(port, server)
    plan = kill_plan(random.Random(SEED), KILLS)

    with dg.DagsterInstance.from_config(str(home)) as instance:
        scenario = Scenario(instance, processes, workspace)
        for kill in [*plan, None]:
            scenario.live(kill)
        runs = [r.dagster_run for r in scenario.runs()]
        ticks = scenario.drift_ticks()

    per_key = Counter(run.tags.get(RUN_KEY_TAG) for run in runs)
    print(
        f"\n{len(plan)} kills, where they left the drift sensor: {dict(Counter(scenario.crashes))}; "
        f"{scenario.lives} daemon lives, {len(ticks)} drift_sensor ticks "
        f"{dict(Counter(t.status.value for t in ticks))}, {len(runs)} runs "
        f"{dict(Counter(r.status.value for r in runs))}, days the sensor passed over {scenario.passed_over}; "
        f"daemon logs: {_log_count(processes.logs, 'interrupted part-way through, resuming')} ticks resumed, "
        f"{_log_count(processes.logs, 'Moving dangling STARTED tick')} dangling ticks dropped, "
        f"{_log_count(processes.logs, 'already completed with run keys')} repeated requests skipped; "
        f"{time.monotonic() - began:.0f} s"
    )
    duplicated = {key: n for key, n in per_key.items() if n > 1}
    assert not duplicated, f"run keys launched more than once: {duplicated}"
    per_trigger = Counter(run.tags.get(TRIGGER_DAY_TAG) for run in runs)
    repeated = {day: n for day, n in per_trigger.items() if n > 1}
    assert not repeated, f"drifted days launched more than once, under different run keys: {repeated}"
    expected = {f"drift-{day}": day for day in DRIFTED_DAYS}
    assert set(per_key) == set(expected), (
        f"lost triggers: {sorted(set(expected) - set(per_key))}; "
        f"unexpected runs: {sorted(map(str, set(per_key) - set(expected)))}"
    )
    for run in runs:
        assert run.tags[TRIGGER_DAY_TAG] == expected[run.tags[RUN_KEY_TAG]], run.tags
