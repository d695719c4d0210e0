"""The self-healing loop, one simulated day at a time, through the production path.

Each day: the day's transactions and fraud reports go to the event bus; the
stream consumer lands them and updates the online event buffers; every
transaction is scored by the scoring service, whose prediction log goes to
the bus and is landed too; Dagster lands the day (`ingestion_job`) and
monitors it (`monitoring_job`), and the outcome metrics of the day whose
labels just became complete are computed; then the retraining sensors tick.
A run a sensor asks for is launched once per run key, as the daemon does, and
a passed promotion gate moves the `champion` alias and the `deployment` asset
pins the new versions into serving, in the same run.

`make demo` and the scenario tests drive it. The sensors here are Dagster's
own sensor definitions evaluated with `evaluate_tick`: the simulated day, not
the wall clock, paces them. Under `make dev` the daemon runs the same sensors
(their exactly-once behaviour under daemon kills is tested separately).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import dagster as dg
import pandas as pd
from dagster._core.definitions.repository_definition.valid_definitions import SINGLETON_REPOSITORY_NAME
from dagster._core.definitions.selector import InstigatorSelector
from dagster._core.definitions.sensor_definition import SensorExecutionData
from dagster._core.scheduler.instigation import InstigatorType, TickData, TickStatus

from feature_repo.windows import LABEL_DELAY_DAYS
from modeling import registry
from orchestration import CODE_LOCATION
from orchestration.definitions import build_definitions
from orchestration.retraining import RETRAINING_SENSORS, TRIGGER_TAG
from streaming.bus_kafka import mock_kafka_cluster
from streaming.config import StreamConfig
from streaming.consumer import LANDED_KINDS, ConsumerSettings, StreamConsumer
from streaming.traffic import send_events

RUN_KEY_TAG = "dagster/run_key"
SENSOR_TAG = "dagster/sensor_name"


class Scorer(Protocol):
    """Scores transactions the way apps call serving; its prediction log reaches the bus."""

    def score(self, transactions: pd.DataFrame) -> int:
        """Score the rows (`SimulatedData.events()` columns); returns how many were answered."""
        ...

    def wait_logged(self, expected: int, timeout_s: float) -> None:
        """Return once `expected` prediction records in all have left for the bus."""
        ...

    def follow_deployment(self, version: str, timeout_s: float) -> None:
        """Return once serving answers with champion `version`, as the last deployment pinned."""
        ...


@dataclass
class Happening:
    """One line of the demo's timeline."""

    day: str
    what: str
    detail: str
    numbers: dict[str, float] = field(default_factory=dict)


@dataclass
class DayReport:
    day: str
    scored: int
    drift: dict[str, Any]
    happenings: list[Happening]
    seconds: dict[str, float]


class _Clock:
    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.monotonic()

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.laps[name] = now - self._last
        self._last = now


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        if materialization.asset_key == dg.AssetKey(asset):
            return {k: v.value for k, v in materialization.metadata.items()}
    return {}


class LiveLoop:
    """Replays days through bus, consumer, serving and Dagster.

    Args:
        resources: the profile's resources in stream mode (`source="stream"`).
        instance: the Dagster instance runs are recorded in (the UI's, or a test's).
        scorer: serving, in process or over HTTP.
        log: where timeline lines are printed as they happen.
    """

    def __init__(
        self,
        resources: dict[str, Any],
        instance: dg.DagsterInstance,
        scorer: Scorer,
        log: Callable[[Happening], None] = lambda h: None,
    ) -> None:
        self.resources = resources
        self.instance = instance
        self.scorer = scorer
        self.log = log
        self.defs = build_definitions(resources)
        self.cursors: dict[str, str | None] = {}
        self.stream: StreamConfig = resources["stream"]
        self.timeline: list[Happening] = []

    def _note(self, happening: Happening) -> Happening:
        self.timeline.append(happening)
        self.log(happening)
        return happening

    def _execute(self, job: str, log_level: str = "WARNING", **kwargs: Any) -> dg.ExecuteInProcessResult:
        return self.defs.resolve_job_def(job).execute_in_process(
            instance=self.instance,
            raise_on_error=kwargs.pop("raise_on_error", True),
            run_config={
                "loggers": {"console": {"config": {"log_level": log_level}}},
                **kwargs.pop("run_config", {}),
            },
            **kwargs,
        )

    def deliver(self, transactions: pd.DataFrame, reports: pd.DataFrame, consumer: StreamConsumer) -> int:
        """Send the events to the bus, score the transactions, and land all of it."""
        send_events(self.stream.bus().producer(), self.stream.topics(), transactions, reports)
        consumer.run(idle_exit_s=0.3)
        scored = self.scorer.score(transactions)
        self.scorer.wait_logged(scored, timeout_s=120)
        consumer.run(idle_exit_s=0.3)
        return scored

    def run_day(
        self, day: str, transactions: pd.DataFrame, reports: pd.DataFrame, consumer: StreamConsumer
    ) -> DayReport:
        """One simulated day: deliver, land, monitor, tick the sensors, retrain if asked."""
        clock = _Clock()
        scored = self.deliver(transactions, reports, consumer)
        # The day just landed is a new partition: the location learns it, as `dagster dev` would on a reload.
        self.defs = build_definitions(self.resources)
        clock.lap("deliver")
        self._execute("ingestion_job", partition_key=day)
        clock.lap("ingest")
        monitoring = self._execute("monitoring_job", partition_key=day)
        clock.lap("monitor")
        drift = _metadata(monitoring, "feature_drift")
        settled = (pd.Timestamp(day) - pd.Timedelta(days=LABEL_DELAY_DAYS + 1)).strftime("%Y-%m-%d")
        happenings: list[Happening] = []
        if self.resources["lake"].partition_path("predictions", settled).exists():
            outcome = self._execute(
                "monitoring_job", partition_key=settled, asset_selection=[dg.AssetKey("outcome_metrics")]
            )
            metrics = _metadata(outcome, "outcome_metrics")
            if metrics.get("sufficient"):
                happenings.append(
                    self._note(
                        Happening(
                            day,
                            "outcome",
                            f"labels of {settled} complete: served by v{metrics.get('served_version')}",
                            {
                                k: float(v)
                                for k, v in metrics.items()
                                if k in ("served_average_precision", "served_card_precision_at_100")
                            },
                        )
                    )
                )
        if drift.get("drift_detected"):
            happenings.append(
                self._note(
                    Happening(
                        day,
                        "drift",
                        f"drifted features {drift.get('drifted_features')}",
                        {"max_psi": float(drift.get("max_psi", 0.0))},
                    )
                )
            )
        clock.lap("outcome")
        happenings.extend(self.tick(day))
        clock.lap("sensors")
        return DayReport(day, scored, drift, happenings, clock.laps)

    def tick(self, day: str) -> list[Happening]:
        """Evaluate every retraining sensor once; launch what they ask for, once per run key.

        Each evaluation is written to the sensor's tick history, as the daemon's are, so the
        UI's Automation page shows why a sensor skipped or what it launched.
        """
        happenings = []
        for sensor in RETRAINING_SENSORS:
            started = time.time()
            context = dg.build_sensor_context(
                instance=self.instance,
                cursor=self.cursors.get(sensor.name),
                resources={"lake": self.resources["lake"], "monitoring": self.resources["monitoring"]},
            )
            data = sensor.evaluate_tick(context)
            self.cursors[sensor.name] = data.cursor
            launched: dict[str, str] = {}
            for request in data.run_requests or []:
                assert isinstance(request, dg.RunRequest)
                key = request.run_key
                if key and self.instance.get_runs(dg.RunsFilter(tags={RUN_KEY_TAG: key}), limit=1):
                    continue
                happenings.append(
                    self._note(
                        Happening(day, "trigger", f"{sensor.name}: {request.tags.get('fraudpipe/reason')}")
                    )
                )
                run_id, retrained = self.retrain(day, request, sensor.name)
                launched[key or run_id] = run_id
                happenings.extend(retrained)
            record_tick(self.instance, sensor.name, started, data, launched, day)
        return happenings

    def retrain(self, day: str, request: dg.RunRequest, sensor_name: str) -> tuple[str, list[Happening]]:
        """Run the retraining job a sensor asked for; when the gate passes, wait for serving to swap.

        Returns:
            the run's id and what happened.
        """
        tags = {**request.tags, SENSOR_TAG: sensor_name}
        if request.run_key:
            tags[RUN_KEY_TAG] = request.run_key
        started = time.monotonic()
        # A refused challenger fails the run by design (the gate's ERROR): the timeline's gate line
        # says why, and the run's events stay in the instance, so the console shows none of it.
        result = self._execute(
            "retraining_job",
            log_level="CRITICAL",
            run_config=dict(request.run_config),
            tags=tags,
            raise_on_error=False,
        )
        gate = next(
            (e for e in result.get_asset_check_evaluations() if e.check_name == "check_promotion_gate"), None
        )
        if gate is None:
            return result.run_id, [
                self._note(
                    Happening(day, "retrain-failed", f"run {result.run_id} ({tags[TRIGGER_TAG]}) failed")
                )
            ]
        meta: dict[str, Any] = {k: v.value for k, v in gate.metadata.items()}
        numbers = {k: float(v) for k, v in meta.items() if k.endswith(("average_precision", "roc_auc"))}
        numbers["seconds"] = time.monotonic() - started
        happenings = [self._note(Happening(day, "gate", str(gate.description), numbers))]
        if gate.passed:
            version = str(meta["challenger_version"])
            swap_started = time.monotonic()
            self.scorer.follow_deployment(version, timeout_s=120)
            happenings.append(
                self._note(
                    Happening(
                        day,
                        "swap",
                        f"serving answers with v{version}",
                        {"seconds": time.monotonic() - swap_started},
                    )
                )
            )
        return result.run_id, happenings


def record_tick(
    instance: dg.DagsterInstance,
    sensor_name: str,
    started: float,
    data: SensorExecutionData,
    launched: dict[str, str],
    day: str,
) -> None:
    """Write one sensor evaluation to the instance's tick history, under the code location's sensor.

    Dagster records ticks only from its daemon and offers no public call for an evaluation made
    elsewhere, so this writes the storage's own `TickData`, keyed by the sensor's selector in the
    code location `CODE_LOCATION` (what `make dev` loads): the UI lists it with the daemon's ticks.
    """
    selector = InstigatorSelector(
        location_name=CODE_LOCATION, repository_name=SINGLETON_REPOSITORY_NAME, name=sensor_name
    )
    selector_id = selector.get_id()
    reason = data.skip_message or "no run requested"
    instance.create_tick(
        TickData(
            instigator_origin_id=selector_id,
            instigator_name=sensor_name,
            instigator_type=InstigatorType.SENSOR,
            status=TickStatus.SUCCESS if launched else TickStatus.SKIPPED,
            timestamp=started,
            run_ids=list(launched.values()),
            run_keys=list(launched),
            skip_reason=None if launched else f"simulated day {day}: {reason}",
            cursor=data.cursor,
            selector_id=selector_id,
            end_timestamp=time.time(),
        )
    )


def champion_version(resources: dict[str, Any]) -> str | None:
    mlflow = resources["mlflow"]
    mlflow.activate()
    return registry.alias_version(mlflow.client(), mlflow.model_name, registry.CHAMPION)


@contextmanager
def local_consumer(stream: StreamConfig) -> Iterator[StreamConsumer]:
    """A local broker hosted by this process and a consumer of every kind, predictions included."""
    with mock_kafka_cluster() as servers:
        stream.publish_local_broker(servers)
        settings = ConsumerSettings(group=stream.group, name="live-loop", batch_size=stream.batch_size)
        with StreamConsumer(
            stream.bus(), stream.topics(), stream.landing(), stream.online(), settings, kinds=LANDED_KINDS
        ) as consumer:
            yield consumer


def days_of(frame: pd.DataFrame, column: str, days: Sequence[str]) -> dict[str, pd.DataFrame]:
    day = frame[column].dt.strftime("%Y-%m-%d")
    return {d: frame[day == d] for d in days}
