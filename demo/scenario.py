"""A drift scenario end to end: a champion trained on history, then live days through the loop.

Shared by `make demo` (over Ray Serve) and the scenario tests (in process):
the history before `live_start` is landed and trained on headless, the online
buffers are warmed with it, then each live day goes through `LiveLoop`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dagster as dg
import pandas as pd

from demo.live_loop import DayReport, Happening, LiveLoop, Scorer, days_of, local_consumer
from feature_repo.online import TRANSACTION_COLUMNS
from orchestration.profiles import build_resources
from orchestration.runner import run_pipeline
from settings import Settings
from simulator import SimulatedData, write_dataset
from streaming.config import StreamConfig

INITIAL_MODEL_DAYS = 28
"""Train 7 days, wait 7, test 7, and 7 more until the test week's labels are settled."""


@dataclass
class ScenarioPlan:
    data: SimulatedData
    live_start: str
    live_days: int
    model_config: dict[str, Any]

    @property
    def days(self) -> list[str]:
        start = pd.Timestamp(self.live_start)
        return [(start + pd.Timedelta(days=i)).strftime("%Y-%m-%d") for i in range(self.live_days)]


def history(data: SimulatedData, live_start: str) -> SimulatedData:
    """What the bank knows before the live days: earlier payments, earlier reports."""
    start = pd.Timestamp(live_start, tz="UTC")
    return SimulatedData(
        data.customers,
        data.terminals,
        data.transactions[data.transactions["TX_DATETIME"] < start].reset_index(drop=True),
        data.fraud_reports[data.fraud_reports["REPORT_DATETIME"] < start].reset_index(drop=True),
        data.config,
    )


def initial_model_config(live_start: str, fast: dict[str, Any] | None = None) -> dict[str, Any]:
    train_start = pd.Timestamp(live_start) - pd.Timedelta(days=INITIAL_MODEL_DAYS)
    config = {"train_start": train_start.strftime("%Y-%m-%d"), **(fast or {})}
    return {"ops": {"fraud_model": {"config": config}}}


def prepare_history(plan: ScenarioPlan, settings: Settings, instance: dg.DagsterInstance) -> None:
    """Land the history, train, register and deploy the first champion, warm the online event buffers."""
    known = history(plan.data, plan.live_start)
    write_dataset(known, settings.source_path)
    run_pipeline(build_resources(settings), instance, plan.model_config, log_level="WARNING")
    with StreamConfig.from_settings(settings).online() as online:
        online.add_transactions(known.events()[list(TRANSACTION_COLUMNS)])
        online.add_reports(known.fraud_reports)


@contextmanager
def live(
    plan: ScenarioPlan,
    settings: Settings,
    instance: dg.DagsterInstance,
    make_scorer: Callable[[dict[str, Any]], Scorer],
    log: Callable[[Happening], None] = lambda h: None,
) -> Iterator[tuple[LiveLoop, Iterator[DayReport]]]:
    """The loop over `plan`'s live days, after `prepare_history`; iterate to replay them.

    Ingestion reads what the stream consumer landed (`source` = stream), as in production.
    """
    resources = build_resources(settings.model_copy(update={"source": "stream"}))
    tx_by_day = days_of(plan.data.events(), "TX_DATETIME", plan.days)
    reports_by_day = days_of(plan.data.fraud_reports, "REPORT_DATETIME", plan.days)
    with local_consumer(resources["stream"]) as consumer:
        scorer = make_scorer(resources)
        loop = LiveLoop(resources, instance, scorer, log)

        def days() -> Iterator[DayReport]:
            for day in plan.days:
                yield loop.run_day(day, tx_by_day[day], reports_by_day[day], consumer)

        try:
            yield loop, days()
        finally:
            close = getattr(scorer, "close", None)
            if close is not None:
                close()
