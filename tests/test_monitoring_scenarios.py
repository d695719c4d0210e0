"""The self-healing loop on the simulator's drift scenarios, through the production path.

Each scenario trains a champion on 70 days of history, then replays live days
one at a time (`demo.live_loop`): events to the real Kafka protocol
(librdkafka's mock cluster), the stream consumer, the scoring service (in
process: the same `ScoringService` the Ray deployment runs, to keep Ray's
start-up out of every scenario), its prediction log back through the bus,
Dagster's ingestion and monitoring jobs, then the retraining sensors' ticks,
retraining runs, the promotion gate and the deployment. Thresholds are the defaults
of `MonitoringSettings`, the ones `make demo` uses.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from demo.live_loop import DayReport, Happening
from demo.scenario import ScenarioPlan, history, initial_model_config, live, prepare_history
from demo.scorers import InProcessScorer
from feature_repo.windows import MODEL_FEATURES
from modeling import registry
from modeling.train import score
from orchestration.jobs import RETRAINING_JOB
from settings import MonitoringSettings, ServingConfig, Settings
from simulator import SimulatedData, SimulatorConfig, simulate, write_dataset
from tests.conftest import local_settings

pytestmark = [pytest.mark.e2e, pytest.mark.scenario]

LIVE_START_DAY = 70
LIVE_START = "2018-06-10"
ONSET_DAY = LIVE_START_DAY + 3
ONSET = "2018-06-13"
MAX_LIVE_DAYS = 30
FAST = {"n_folds": 2, "max_depth": [3], "learning_rate": [0.3]}
DETECTION_DAYS = 3
"""Scenario (a) must be detected within this many days of its onset (the onset day counts as one)."""
AP_MARGIN = 0.25
"""Scenario (a): the retrained champion's average precision after the onset beats the first one's by this."""
AP_TOLERANCE = 0.05
"""Scenario (b): the champion after the shift may not score below the first one by more than this."""


@dataclass
class ScenarioRun:
    data: SimulatedData
    timeline: list[Happening]
    days: list[DayReport]
    resources: dict[str, Any]
    retraining_runs: list[dg.DagsterRun]

    def of(self, what: str) -> list[Happening]:
        return [h for h in self.timeline if h.what == what]


def _config(drift: str) -> SimulatorConfig:
    """Every scenario simulates the same days, so that their histories are identical."""
    return SimulatorConfig(
        n_customers=500,
        n_terminals=1000,
        n_days=LIVE_START_DAY + MAX_LIVE_DAYS,
        n_compromised_terminals_per_day=1,
        n_compromised_customers_per_day=1,
        seed=3,
        drift=drift,  # type: ignore[arg-type]
        drift_start_day=ONSET_DAY if drift != "none" else 0,
    )


def _plan(data: SimulatedData, live_days: int) -> ScenarioPlan:
    return ScenarioPlan(data, LIVE_START, live_days, initial_model_config(LIVE_START, FAST))


def _settings(root: Path) -> Settings:
    """The local profile over `root/data`, with the default thresholds but no Evidently report."""
    settings = local_settings(root / "data")
    return settings.model_copy(update={"monitoring": MonitoringSettings(evidently_reports=False)})


@pytest.fixture(scope="module")
def history_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The history landed, the first champion trained and the online buffers warmed, once:
    each scenario starts from a copy (data and Dagster instance). The drift scenarios' history
    equals this one, since their onset is after the live start (checked in `_run`)."""
    root = tmp_path_factory.mktemp("history")
    data = simulate(_config("none"))
    (root / "dagster").mkdir()
    instance = dg.DagsterInstance.local_temp(tempdir=str(root / "dagster"))
    try:
        prepare_history(_plan(data, 1), _settings(root), instance)
    finally:
        instance.dispose()
    return root


def _run(drift: str, live_days: int, template: Path, tmp_path: Path) -> ScenarioRun:
    data = simulate(_config(drift))
    live_start = pd.Timestamp(LIVE_START, tz="UTC")
    reference = simulate(_config("none")).transactions
    pd.testing.assert_frame_equal(
        data.transactions[data.transactions["TX_DATETIME"] < live_start],
        reference[reference["TX_DATETIME"] < live_start],
    )
    shutil.copytree(template, tmp_path, dirs_exist_ok=True)
    # Reference data is this scenario's: card testers' terminals are registered before they are used,
    # and each day's ingestion run lands customers and terminals again before the day's events.
    write_dataset(history(data, LIVE_START), tmp_path / "data" / "source")
    instance = dg.DagsterInstance.local_temp(tempdir=str(tmp_path / "dagster"))
    try:
        with live(
            _plan(data, live_days),
            _settings(tmp_path),
            instance,
            lambda r: InProcessScorer(r["stream"], r["mlflow"], ServingConfig()),
        ) as (loop, days):
            reports = list(days)
        runs = list(instance.get_runs(dg.RunsFilter(job_name=RETRAINING_JOB)))
    finally:
        instance.dispose()
    return ScenarioRun(data, loop.timeline, reports, loop.resources, runs)


def _post_onset_ap(run: ScenarioRun, version: str, since: str) -> float:
    """Average precision of `version` on the features served from `since` on, against the ground truth."""
    lake = run.resources["lake"]
    served = lake.read_partitions("predictions")
    served = served[served["TX_DATETIME"] >= pd.Timestamp(since, tz="UTC")]
    truth = run.data.transactions.set_index("TRANSACTION_ID")["TX_FRAUD"]
    labels = served["TRANSACTION_ID"].map(truth).to_numpy()
    mlflow = run.resources["mlflow"]
    mlflow.activate()
    model = registry.load_model(mlflow.model_name, version)
    return float(average_precision_score(labels, score(model, served[list(MODEL_FEATURES)])))


def test_no_drift_triggers_no_retraining_over_30_days(history_template: Path, tmp_path: Path) -> None:
    run = _run("none", 30, history_template, tmp_path)
    measured = [d for d in run.days if d.drift.get("sufficient")]
    assert len(measured) == 30, "every live day's drift must have been measured, or the test proves nothing"
    labelled = [h for h in run.of("outcome") if "served_average_precision" in h.numbers]
    assert len(labelled) >= 20, "the performance sensor must have had labelled days to judge"
    print(
        f"\nno drift, 30 days: max PSI per day {[round(float(d.drift['max_psi']), 3) for d in measured]}; "
        f"served AP on labelled days {[round(h.numbers['served_average_precision'], 3) for h in labelled]}"
    )
    assert run.of("drift") == []
    assert run.of("trigger") == [], "a retraining was triggered without drift (a false alarm)"
    assert run.retraining_runs == []


def test_card_testing_is_detected_retrained_and_swapped(history_template: Path, tmp_path: Path) -> None:
    run = _run("card_testing", 16, history_template, tmp_path)
    drift = run.of("drift")
    assert drift, "card testing was never detected"
    delay = (pd.Timestamp(drift[0].day) - pd.Timestamp(ONSET)).days
    assert 0 <= delay < DETECTION_DAYS, f"detected {delay} days after the onset"
    assert any(h.detail.startswith("drift_sensor") for h in run.of("trigger"))
    swaps = run.of("swap")
    assert swaps, f"no retrained model was promoted: {[h.detail for h in run.of('gate')]}"
    champion = swaps[-1].detail.rsplit("v", 1)[-1]
    mlflow = run.resources["mlflow"]
    mlflow.activate()
    window = mlflow.client().get_model_version(mlflow.model_name, champion).tags["window"]
    spec = json.loads(window)
    train_end = pd.Timestamp(spec["train_start"]) + pd.Timedelta(days=int(spec["train_days"]))
    assert train_end > pd.Timestamp(ONSET), "the promoted champion never saw the new pattern"
    since = train_end.strftime("%Y-%m-%d")
    before, after = _post_onset_ap(run, "1", since), _post_onset_ap(run, champion, since)
    print(
        f"\ncard testing from {ONSET}: detected {drift[0].day} ({delay} d); champion v{champion} "
        f"(trained to {since}) AP {after:.3f} vs first champion {before:.3f} on traffic from {since}; "
        f"timeline: {[(h.day, h.what, h.detail[:80]) for h in run.timeline if h.what != 'outcome']}"
    )
    assert after - before >= AP_MARGIN
    # Serving follows each promotion: the day after a swap is answered by the promoted version alone.
    lake = run.resources["lake"]
    last_swap_of_day = {h.day: h.detail.rsplit("v", 1)[-1] for h in swaps}
    followed = [(day, v) for day, v in last_swap_of_day.items() if day < run.days[-1].day]
    assert followed, "no swap happened before the last day, so none could be checked"
    for day, version in followed:
        after = (pd.Timestamp(day) + pd.Timedelta(days=1)).strftime("%Y-%m-%d")
        versions = set(
            pd.read_parquet(lake.partition_path("predictions", after))["MODEL_VERSION"].astype(str)
        )
        assert versions == {version}, (
            f"{after} was served by {versions}, not the champion v{version} of {day}"
        )


def test_spending_shift_is_reported_and_never_lowers_outcomes(history_template: Path, tmp_path: Path) -> None:
    """Policy: drift is reported, and may trigger a retraining; only a challenger that beats the
    champion on the latest settled days is promoted, so outcomes do not fall."""
    run = _run("spending_shift", 10, history_template, tmp_path)
    drift = run.of("drift")
    assert drift, "a 40% drop in spending was not reported as drift"
    assert (pd.Timestamp(drift[0].day) - pd.Timestamp(ONSET)).days < DETECTION_DAYS
    mlflow = run.resources["mlflow"]
    mlflow.activate()
    champion = registry.alias_version(mlflow.client(), mlflow.model_name, registry.CHAMPION)
    assert champion is not None
    before, after = _post_onset_ap(run, "1", ONSET), _post_onset_ap(run, champion, ONSET)
    print(
        f"\nspending shift from {ONSET}: drift first {drift[0].day}; gates "
        f"{[h.detail for h in run.of('gate')]}; champion v{champion} AP {after:.3f} vs first {before:.3f}"
    )
    assert after >= before - AP_TOLERANCE
    assert np.isfinite(after)
