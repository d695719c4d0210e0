"""Online equals offline: features read from the stream-fed online store equal the Feast training set's.

The offline side is the training set the Dagster pipeline built through Feast
(point-in-time join over the engine's feature tables). The online side gets
the same simulated events through the real bus and consumer, day by day as
they happened; after each day, every transaction of that day is read back at
its own timestamp, with the day's later events already in the store, so a
read that ignored its timestamp would show.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from feature_repo.windows import MODEL_FEATURES
from orchestration.resources import LakeResource
from streaming.consumer import ConsumerSettings, StreamConsumer
from streaming.traffic import in_window, send_events
from tests.conftest import BACKENDS, PipelineRun, stream_resource

CHECKED_DAYS = 24
"""Days read back one by one: about 520 settled transactions a day in the small dataset."""
MIN_CHECKED = 10_000


@pytest.mark.parametrize("backend", BACKENDS)
def test_online_features_equal_the_offline_training_set(
    backend: str, pipeline_run: PipelineRun, tmp_path: Path, namespace: str, kafka_bootstrap: str
) -> None:
    lake: LakeResource = pipeline_run.resources["lake"]
    training = lake.read_table("training_set").set_index("TRANSACTION_ID")
    events, reports = pipeline_run.data.events(), pipeline_run.data.fraud_reports
    last_day = training["TX_DATETIME"].max().normalize()
    first_checked = last_day - pd.Timedelta(days=CHECKED_DAYS - 1)

    stream = stream_resource(backend, tmp_path, namespace, kafka_bootstrap)
    bus = stream.bus()
    bus.ensure_topics(stream.topics().names())
    producer, online = bus.producer(), stream.online()
    settings = ConsumerSettings(group="parity", status_every_s=60)
    checked: list[pd.DataFrame] = []
    with StreamConsumer(bus, stream.topics(), stream.landing(), online, settings) as consumer:
        # The history before the checked days in one go, then each checked day as it happened.
        bounds = [None, *pd.date_range(first_checked, periods=CHECKED_DAYS + 1, freq="D")]
        for start, end in itertools.pairwise(bounds):
            send_events(
                producer,
                stream.topics(),
                in_window(events, "TX_DATETIME", start, end),
                in_window(reports, "REPORT_DATETIME", start, end),
            )
            consumer.run(idle_exit_s=0.2)
            if start is None:
                continue
            day = in_window(events, "TX_DATETIME", start, end)
            day = day[day["TRANSACTION_ID"].isin(training.index)]
            served = online.features(day.reset_index(drop=True)).values
            checked.append(served.assign(TRANSACTION_ID=day["TRANSACTION_ID"].to_numpy()))

    online_rows = pd.concat(checked, ignore_index=True).set_index("TRANSACTION_ID")
    assert len(online_rows) >= MIN_CHECKED
    offline_rows = training.loc[online_rows.index]
    mismatches = {}
    for name in MODEL_FEATURES:
        got, want = online_rows[name].to_numpy(np.float64), offline_rows[name].to_numpy(np.float64)
        exact = "NB_TX" in name or name.startswith("TX_")
        bad = got != want if exact else ~np.isclose(got, want, rtol=1e-9, atol=0.0)
        if bad.any():
            mismatches[name] = int(bad.sum())
    assert not mismatches, f"online != offline: {mismatches} of {len(online_rows)} rows"
    # The check must exercise the windows, not only empty ones.
    assert (online_rows["TERMINAL_ID_RISK_30DAY_WINDOW"] > 0).sum() > 100
    assert (online_rows["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] > 1).sum() > 100
