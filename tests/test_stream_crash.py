"""No loss, no duplicates: 200,000 events through each bus, the consumer SIGKILLed at 5 random points.

The consumer runs as a real `python -m streaming consume` process, killed with
SIGKILL (no cleanup, no commit) whenever its landing area has grown past a
random mark, then restarted; the last life runs until the group has committed
everything. What it landed is then read file by file, without the readers'
de-duplication, and its online store is compared with a clean run's over the
same bus.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from settings import Settings
from simulator import SimulatorConfig, simulate
from streaming.config import StreamConfig
from streaming.consumer import ConsumerSettings, StreamConsumer
from streaming.traffic import send_events
from tests.conftest import BACKENDS, stream_resource, stream_settings

EVENTS = 200_000
KILLS = 5
CRASH_DATA = SimulatorConfig(n_customers=1_000, n_terminals=2_000, n_days=120, seed=11)
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _events() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Exactly `EVENTS` events: the first transactions and the reports made by then."""
    data = simulate(CRASH_DATA)
    transactions = data.events()
    for n_tx in range(EVENTS, 0, -1):
        last = transactions["TX_DATETIME"].iloc[n_tx - 1]
        reports = data.fraud_reports[data.fraud_reports["REPORT_DATETIME"] <= last]
        if n_tx + len(reports) <= EVENTS:
            break
    transactions = transactions.iloc[: EVENTS - len(reports)]
    assert len(transactions) + len(reports) == EVENTS
    return transactions.reset_index(drop=True), reports.reset_index(drop=True)


def _landed_files(stream: StreamConfig, table: str) -> list[Path]:
    return sorted((Path(stream.landing_path) / table).glob("date=*/*.parquet"))


def _read_raw(stream: StreamConfig, table: str) -> pd.DataFrame:
    """Every landed row as written, duplicates included: what the landing must never produce."""
    files = _landed_files(stream, table)
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else pd.DataFrame()


def _consumer_process(settings: Settings, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "streaming", "consume", *extra],
        cwd=PROJECT_ROOT,
        env={**os.environ, **settings.to_env()},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigkill_five_times_loses_and_duplicates_nothing(
    backend: str, tmp_path: Path, namespace: str, kafka_bootstrap: str
) -> None:
    transactions, reports = _events()
    settings = stream_settings(backend, tmp_path / "killed", namespace, kafka_bootstrap, batch_size=2_000)
    stream = StreamConfig.from_settings(settings)
    bus = stream.bus()
    bus.ensure_topics(stream.topics().names())
    assert send_events(bus.producer(), stream.topics(), transactions, reports) == EVENTS

    rng = random.Random(20261127)
    marks = sorted(rng.sample(range(3, 90), KILLS))
    for mark in marks:
        proc = _consumer_process(settings)
        deadline = time.monotonic() + 120
        while len(_landed_files(stream, "transactions")) < mark and proc.poll() is None:
            assert time.monotonic() < deadline, f"no progress to {mark} files"
            time.sleep(0.02)
        time.sleep(rng.uniform(0, 0.2))
        assert proc.poll() is None, proc.communicate()[0].decode()[-3000:]
        proc.kill()
        proc.wait()

    final = _consumer_process(settings, "--idle-exit=2")
    output, _ = final.communicate(timeout=300)
    assert final.returncode == 0, output.decode()[-3000:]

    landed = _read_raw(stream, "transactions")
    assert len(landed) == len(transactions), "landed rows differ from produced events"
    assert landed["TRANSACTION_ID"].is_unique, "a transaction landed twice"
    assert set(landed["TRANSACTION_ID"]) == set(transactions["TRANSACTION_ID"])
    landed_reports = _read_raw(stream, "fraud_reports")
    assert len(landed_reports) == len(reports) and landed_reports["TRANSACTION_ID"].is_unique
    by_id = landed.set_index("TRANSACTION_ID").sort_index()
    expected = transactions.set_index("TRANSACTION_ID").sort_index()
    pd.testing.assert_frame_equal(by_id[expected.columns], expected, check_dtype=False)

    # A clean run over the same bus (a group of its own, nothing killed) into its own stores.
    clean = stream_resource(backend, tmp_path / "clean", namespace + "clean.", kafka_bootstrap)
    clean = replace(clean, topic_prefix=stream.topic_prefix)
    clean_settings = ConsumerSettings(group="clean", name="clean", batch_size=5_000)
    with StreamConsumer(bus, stream.topics(), clean.landing(), clean.online(), clean_settings) as consumer:
        consumer.run(idle_exit_s=1.0)
    killed_state, clean_state = stream.online().dump(), clean.online().dump()
    assert len(clean_state.customer_events) > 0
    pd.testing.assert_frame_equal(killed_state.customer_events, clean_state.customer_events)
    pd.testing.assert_frame_equal(killed_state.terminal_events, clean_state.terminal_events)
    pd.testing.assert_frame_equal(killed_state.reports, clean_state.reports)
    assert killed_state.equals(clean_state)
