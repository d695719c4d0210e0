"""The online store of window features, on SQLite and on this machine's real Redis.

The central check is parity: fed a simulated stream day by day, with trimming
on, the store's features at each transaction's own timestamp equal the offline
feature tables that the model is trained on, whether the transactions are
scored before the consumer applies them (as serving does) or after.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis

from feature_repo.engine import FEATURE_TIMESTAMP, feature_table
from feature_repo.on_demand import calendar_features
from feature_repo.online import (
    EventBuffers,
    RedisEventBuffers,
    SqliteEventBuffers,
    StaleReadError,
    open_event_buffers,
)
from feature_repo.windows import CUSTOMER_SPENDING, MODEL_FEATURES, TERMINAL_RISK
from simulator import SimulatedData, SimulatorConfig, simulate
from tests.conftest import REDIS_URL

DAY = pd.Timedelta(days=1)
T0 = pd.Timestamp("2018-06-01 12:00", tz="UTC")

OpenStore = Callable[[], EventBuffers]


@pytest.fixture(scope="module")
def stream() -> SimulatedData:
    return simulate(SimulatorConfig(n_customers=200, n_terminals=400, n_days=60, seed=5))


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.integration)])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """Opens fresh, empty stores of one backend, each in its own namespace, and cleans all of them up."""
    opened: list[EventBuffers] = []
    run = uuid.uuid4().hex

    def open_one() -> EventBuffers:
        name = f"s{len(opened)}"
        if request.param == "sqlite":
            store: EventBuffers = SqliteEventBuffers(tmp_path / f"{name}.db")
        else:
            store = RedisEventBuffers(REDIS_URL, prefix=f"test_online:{run}:{name}:")
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        store.close()
    if request.param == "redis":
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"test_online:{run}:*"))
        if keys:
            client.delete(*keys)
        client.close()


def transaction(tx_id: int, at: pd.Timestamp, customer: int, terminal: int, amount: float) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "TRANSACTION_ID": [tx_id],
            "TX_DATETIME": pd.DatetimeIndex([at]).as_unit("ns"),
            "CUSTOMER_ID": [customer],
            "TERMINAL_ID": [terminal],
            "TX_AMOUNT": [amount],
        }
    )


def report(tx_id: int, at: pd.Timestamp) -> pd.DataFrame:
    return pd.DataFrame({"TRANSACTION_ID": [tx_id], "REPORT_DATETIME": pd.DatetimeIndex([at]).as_unit("ns")})


def days(data: SimulatedData) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    """Each day's transactions and the reports that arrived that day, in time order."""
    events, reports = data.events(), data.fraud_reports
    first = events["TX_DATETIME"].min().floor("D")
    for start in pd.date_range(first, events["TX_DATETIME"].max(), freq="D"):
        end = start + DAY
        yield (
            events[(events["TX_DATETIME"] >= start) & (events["TX_DATETIME"] < end)],
            reports[(reports["REPORT_DATETIME"] >= start) & (reports["REPORT_DATETIME"] < end)],
        )


def offline_features(data: SimulatedData) -> pd.DataFrame:
    """The training set's inputs for every transaction, from the offline feature tables."""
    events = data.events()
    frame = events.rename(columns={"TX_DATETIME": FEATURE_TIMESTAMP})
    for group in (CUSTOMER_SPENDING, TERMINAL_RISK):
        table = feature_table(group, events, data.fraud_reports if group.uses_labels else None)
        frame = frame.merge(table, on=[group.join_key, FEATURE_TIMESTAMP], how="left", validate="many_to_one")
    frame = pd.concat([frame, calendar_features(frame[FEATURE_TIMESTAMP])], axis=1)
    return frame.set_index("TRANSACTION_ID")[list(MODEL_FEATURES)]


def assert_same_features(online: pd.DataFrame, offline: pd.DataFrame) -> None:
    assert list(online.columns) == list(MODEL_FEATURES)
    for column in MODEL_FEATURES:
        if pd.api.types.is_integer_dtype(offline[column]):
            np.testing.assert_array_equal(
                online[column].to_numpy(), offline[column].to_numpy(), err_msg=column
            )
        else:
            np.testing.assert_allclose(
                online[column].to_numpy(), offline[column].to_numpy(), rtol=1e-9, atol=0, err_msg=column
            )


def test_online_features_equal_the_offline_tables_at_every_transaction(
    open_store: OpenStore, stream: SimulatedData
) -> None:
    store = open_store()
    expected = offline_features(stream)
    dropped = 0
    for transactions, reports in days(stream):
        store.add_reports(reports)
        # Scored before the consumer applies them: the batch's own requests supply the day's events.
        before = store.features(transactions)
        store.add_transactions(transactions)
        dropped += store.trim()
        after = store.features(transactions)
        for online in (before, after):
            assert_same_features(online.values, expected.loc[transactions["TRANSACTION_ID"]])
            # Unknown customer: no event in 30 days but the transaction itself.
            first_in_30_days = online.values["CUSTOMER_ID_NB_TX_30DAY_WINDOW"] == 1
            np.testing.assert_array_equal(online.unknown_customer, first_in_30_days.to_numpy())

    state = store.dump()
    assert dropped > 0
    assert state.floor is not None
    assert len(state.customer_events) < len(stream.transactions)
    assert state.customer_events["TX_DATETIME"].min() > state.floor - CUSTOMER_SPENDING.horizon_days * DAY
    assert state.terminal_events["TX_DATETIME"].min() > state.floor - TERMINAL_RISK.horizon_days * DAY
    assert state.reports["REPORT_DATETIME"].min() > state.floor - TERMINAL_RISK.horizon_days * DAY


def test_a_window_read_later_forgets_events_that_left_it(open_store: OpenStore) -> None:
    """Unlike values stored as of an entity's last event, a read 40 hours on sees only the request."""
    store = open_store()
    store.add_transactions(transaction(1, T0 - pd.Timedelta(hours=40), customer=7, terminal=3, amount=10.0))
    online = store.features(transaction(2, T0, customer=7, terminal=4, amount=30.0)).values.iloc[0]
    assert online["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 1
    assert online["CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"] == 30.0
    assert online["CUSTOMER_ID_NB_TX_7DAY_WINDOW"] == 2
    assert online["CUSTOMER_ID_AVG_AMOUNT_7DAY_WINDOW"] == 20.0


def test_terminal_risk_reads_labels_through_the_delayed_window(open_store: OpenStore) -> None:
    """Transaction 1 is reported in time; transaction 2 later than the label delay, so never counts."""
    store = open_store()
    store.add_reports(report(1, T0 + 2 * DAY))
    store.add_reports(report(2, T0 + 8 * DAY + pd.Timedelta(hours=2)))
    store.add_transactions(transaction(1, T0, customer=1, terminal=9, amount=5.0))
    store.add_transactions(transaction(2, T0 + pd.Timedelta(hours=1), customer=2, terminal=9, amount=5.0))
    risk = store.features(
        pd.concat(
            [
                transaction(3, T0 + 7 * DAY + pd.Timedelta(hours=2), customer=3, terminal=9, amount=1.0),
                transaction(4, T0 + 8 * DAY + pd.Timedelta(minutes=30), customer=3, terminal=9, amount=1.0),
                transaction(5, T0 + 9 * DAY, customer=3, terminal=9, amount=1.0),
            ],
            ignore_index=True,
        )
    ).values
    assert risk["TERMINAL_ID_NB_TX_1DAY_WINDOW"].tolist() == [2, 1, 0]
    assert risk["TERMINAL_ID_RISK_1DAY_WINDOW"].tolist() == [0.5, 0.0, 0.0]
    assert risk["TERMINAL_ID_RISK_7DAY_WINDOW"].tolist() == [0.5, 0.5, 0.5]


def test_redelivered_and_reordered_batches_leave_the_state_of_one_delivery(
    open_store: OpenStore, stream: SimulatedData
) -> None:
    batches = list(days(stream))[:12]
    once, twice = open_store(), open_store()
    for transactions, reports in batches:
        once.add_transactions(transactions)
        once.add_reports(reports)
    once.trim()
    for _, reports in reversed(batches):
        twice.add_reports(reports)
    for transactions, reports in batches:
        twice.add_transactions(transactions)
        twice.add_transactions(transactions.iloc[::-1])
        twice.add_reports(reports)
    twice.trim()
    twice.trim()

    state, replayed = once.dump(), twice.dump()
    assert len(state.customer_events) and len(state.terminal_events) and len(state.reports)
    for frame in ("customer_events", "terminal_events", "reports"):
        pd.testing.assert_frame_equal(getattr(replayed, frame), getattr(state, frame))
    assert replayed.equals(state)
    # What reads see too: the packed events of the SQLite store are kept beside its rows.
    requests = batches[-1][0]
    pd.testing.assert_frame_equal(twice.features(requests).values, once.features(requests).values)
    once.clear()
    assert once.dump().customer_events.empty and once.dump().watermark is None


def test_a_sqlite_store_written_before_packing_is_packed_when_opened(
    tmp_path: Path, stream: SimulatedData
) -> None:
    """Its rows stay the record: a store of the earlier layout reads the same once reopened."""
    path = tmp_path / "online.db"
    store = SqliteEventBuffers(path)
    batches = list(days(stream))[:12]
    for transactions, reports in batches:
        store.add_transactions(transactions)
        store.add_reports(reports)
    requests = batches[-1][0]
    expected = store.features(requests).values
    store.close()
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE customer_packed")
        db.execute("DROP TABLE terminal_packed")
    reopened = SqliteEventBuffers(path)
    pd.testing.assert_frame_equal(reopened.features(requests).values, expected)
    reopened.close()


def test_a_read_before_the_floor_is_refused(open_store: OpenStore, stream: SimulatedData) -> None:
    store = open_store()
    batches = list(days(stream))[:3]
    for transactions, reports in batches:
        store.add_transactions(transactions)
        store.add_reports(reports)
    first_day = batches[0][0]
    assert len(store.features(first_day).values) == len(first_day)
    store.trim()
    floor = store.dump().floor
    assert floor == batches[-1][0]["TX_DATETIME"].max() - DAY
    with pytest.raises(StaleReadError, match="before the online store's floor"):
        store.features(first_day)
    store.features(transaction(10**9, floor, customer=1, terminal=1, amount=1.0))


def test_unknown_entities_read_as_a_first_transaction_and_are_flagged(open_store: OpenStore) -> None:
    """A terminal is known once a transaction reaches its delayed window: 10 days back is inside."""
    store = open_store()
    store.add_transactions(transaction(1, T0 - 10 * DAY, customer=1, terminal=1, amount=50.0))
    requests = pd.concat(
        [
            transaction(2, T0, customer=1, terminal=1, amount=10.0),
            transaction(3, T0, customer=99, terminal=98, amount=20.0),
        ],
        ignore_index=True,
    )
    online = store.features(requests)
    assert online.unknown_customer.tolist() == [False, True]
    assert online.unknown_terminal.tolist() == [False, True]
    new = online.values.iloc[1]
    assert new["CUSTOMER_ID_NB_TX_30DAY_WINDOW"] == 1
    assert new["CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW"] == 20.0
    assert (new[TERMINAL_RISK.feature_names] == 0).all()


def test_a_request_already_applied_counts_once(open_store: OpenStore) -> None:
    store = open_store()
    request = transaction(1, T0, customer=1, terminal=1, amount=50.0)
    store.add_transactions(request)
    online = store.features(request)
    assert online.values["CUSTOMER_ID_NB_TX_1DAY_WINDOW"].tolist() == [1]
    assert online.unknown_customer.tolist() == [True]


def test_sub_microsecond_times_are_refused(open_store: OpenStore) -> None:
    frame = transaction(1, T0 + pd.Timedelta(nanoseconds=1), customer=1, terminal=1, amount=1.0)
    with pytest.raises(ValueError, match="finer than a microsecond"):
        open_store().add_transactions(frame)


@pytest.mark.integration
def test_the_url_chooses_the_backend(tmp_path: Path) -> None:
    with open_event_buffers(f"sqlite:///{tmp_path}/online.db") as local:
        assert isinstance(local, SqliteEventBuffers)
    with open_event_buffers(REDIS_URL, prefix=f"test_online:{uuid.uuid4().hex}:") as prod:
        assert isinstance(prod, RedisEventBuffers)


@pytest.mark.parametrize("url", ["postgresql://u:secret@host/db", "sqlite://", "online.db", ""])
def test_an_unsupported_url_is_refused_without_echoing_it(url: str) -> None:
    with pytest.raises(ValueError, match="unsupported online store URL") as error:
        open_event_buffers(url)
    assert "secret" not in str(error.value)
