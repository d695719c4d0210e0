"""The landing area: each event id lands once (another content is a conflict), whole files only, durable."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from streaming.events import Transaction, transactions_to_frame
from streaming.landing import DEDUP_DAYS, ConsumerStatus, StreamLanding

DAY = datetime(2018, 4, 1, tzinfo=UTC)


def transactions(
    ids: range | list[int], start: datetime = DAY, step: timedelta = timedelta(minutes=7)
) -> pd.DataFrame:
    """Typed transactions as the consumer builds them: id `i` at `start + i * step` (one id, one content)."""
    return transactions_to_frame([Transaction(i, start + i * step, i % 13, i % 17, 10.0 + i) for i in ids])


def landed_ids(landing: StreamLanding, day: str = "2018-04-01") -> list[int]:
    return landing.read_day("transactions", day)["TRANSACTION_ID"].tolist()


def test_landing_the_same_batch_twice_lands_it_once(tmp_path: Path) -> None:
    landing = StreamLanding(tmp_path)
    batch = transactions(range(50))
    first = landing.land("transactions", batch)
    again = landing.land("transactions", batch)
    assert (first.landed, first.duplicates, len(first.files)) == (50, 0, 1)
    assert (again.landed, again.duplicates, again.files) == (0, 50, ())
    assert first.max_event_time == again.max_event_time == batch["TX_DATETIME"].max()
    assert landed_ids(landing) == list(range(50))
    assert landing.count("transactions") == 50


def test_overlapping_batches_and_repeats_within_a_batch(tmp_path: Path) -> None:
    landing = StreamLanding(tmp_path)
    landing.land("transactions", transactions(range(100)))
    repeated = pd.concat([transactions(range(50, 150)), transactions([149, 149])], ignore_index=True)
    result = landing.land("transactions", repeated)
    assert (result.landed, result.duplicates) == (50, 52)
    assert sorted(landed_ids(landing)) == list(range(150))


def test_two_landings_on_one_root_see_each_others_files(tmp_path: Path) -> None:
    """A consumer taking over a partition must not land again what the previous owner landed."""
    a, b = StreamLanding(tmp_path), StreamLanding(tmp_path)
    b.land("transactions", transactions(range(10)))  # b caches the day before a writes to it
    a.land("transactions", transactions(range(10, 30)))
    result = b.land("transactions", transactions(range(20, 40)))
    assert (result.landed, result.duplicates) == (10, 10)
    back = a.land("transactions", transactions(range(40)))
    assert back.landed == 0
    assert sorted(landed_ids(a)) == list(range(40))


def test_days_are_utc_days_whatever_the_offset(tmp_path: Path) -> None:
    landing = StreamLanding(tmp_path)
    times = ["2018-04-01T23:30:00-02:00", "2018-03-31T23:30:00-02:00", "2018-03-31T21:00:00-02:00"]
    local = transactions(range(3)).assign(TX_DATETIME=pd.to_datetime(times))
    assert str(local["TX_DATETIME"].dt.tz) == "UTC-02:00"
    result = landing.land("transactions", local)
    assert result.landed == 3
    assert [p.parent.name for p in result.files] == [
        "date=2018-03-31",
        "date=2018-04-01",
        "date=2018-04-02",
    ]
    assert landing.days("transactions") == ["2018-03-31", "2018-04-01", "2018-04-02"]
    assert [landed_ids(landing, day) for day in landing.days("transactions")] == [[2], [1], [0]]
    assert str(landing.read_day("transactions", "2018-04-02")["TX_DATETIME"].dt.tz) == "UTC"


def test_an_id_re_sent_with_other_content_is_a_conflict_on_any_day(tmp_path: Path) -> None:
    """One landed copy per id: a second copy with other content is refused and named, not landed."""
    landing = StreamLanding(tmp_path)
    landing.land("transactions", transactions([7, 8]))
    other_day = transactions([7], start=DAY + timedelta(days=3))
    other_amount = transactions([8]).assign(TX_AMOUNT=99.0)
    in_batch = pd.concat([transactions([9]), transactions([9]).assign(TX_AMOUNT=1.0)], ignore_index=True)
    result = landing.land("transactions", pd.concat([other_day, other_amount, in_batch], ignore_index=True))
    assert (result.landed, result.duplicates, result.conflicts.tolist()) == (1, 0, [0, 1, 3])
    assert landing.days("transactions") == ["2018-04-01"], "no second copy on another day"
    day = landing.read_day("transactions", "2018-04-01").set_index("TRANSACTION_ID")["TX_AMOUNT"]
    assert day.to_dict() == {7: 17.0, 8: 18.0, 9: 19.0}, "the first copy stays"
    again = StreamLanding(tmp_path).land("transactions", transactions([7, 8, 9]))
    assert (again.landed, again.duplicates, len(again.conflicts)) == (0, 3, 0), "read back from disk alike"
    assert StreamLanding(tmp_path).conflicts("transactions", other_day).tolist() == [0]


def test_conflicts_are_recognised_within_the_dedup_window_only(tmp_path: Path) -> None:
    """The bound that keeps memory finite: copies further apart than DEDUP_DAYS are not compared."""
    landing = StreamLanding(tmp_path)
    landing.land("transactions", transactions([7]))
    inside = landing.land("transactions", transactions([7], start=DAY - timedelta(days=DEDUP_DAYS)))
    assert inside.conflicts.tolist() == [0], "an earlier re-sent copy is found too"
    outside = landing.land("transactions", transactions([7], start=DAY + timedelta(days=DEDUP_DAYS + 1)))
    assert (outside.landed, len(outside.conflicts)) == (1, 0)


def test_a_leftover_tmp_file_is_ignored_then_cleaned_up(tmp_path: Path) -> None:
    landing = StreamLanding(tmp_path)
    landing.land("transactions", transactions(range(5)))
    day = landing.day_dir("transactions", "2018-04-01")
    stale, live = day / ".killed.parquet.tmp", day / ".in-flight.parquet.tmp"
    stale.write_bytes(b"PAR1 half a file")
    live.write_bytes(b"PAR1 another process is writing this")
    hours_ago = time.time() - 2 * 3600
    os.utime(stale, (hours_ago, hours_ago))
    assert landed_ids(landing) == list(range(5))
    assert landing.count("transactions") == 5
    fingerprint = landing.fingerprint("transactions", "2018-04-01")
    landing.land("transactions", transactions(range(5, 8)))
    assert not stale.exists(), "a killed writer's leftover is removed"
    assert live.exists(), "a young temporary file may be a live write: left alone"
    assert sorted(landed_ids(landing)) == list(range(8))
    assert landing.fingerprint("transactions", "2018-04-01") != fingerprint


def test_a_failed_write_leaves_nothing_and_lands_on_retry(tmp_path: Path, monkeypatch) -> None:
    landing = StreamLanding(tmp_path)
    landing.land("transactions", transactions(range(3)))

    def crash(fd: int) -> None:
        raise OSError("disk gone")

    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", crash)
        with pytest.raises(OSError, match="disk gone"):
            landing.land("transactions", transactions(range(3, 6)))
    day = landing.day_dir("transactions", "2018-04-01")
    assert sorted(p.name for p in day.iterdir() if p.suffix == ".tmp") == []
    assert landed_ids(landing) == [0, 1, 2]
    retry = landing.land("transactions", transactions(range(6)))
    assert retry.landed == 3, "ids of a failed write are not remembered as landed"
    assert sorted(landed_ids(landing)) == list(range(6))


def test_read_day_drops_doubles_of_racing_writers(tmp_path: Path) -> None:
    """Two processes landing one id at the same instant both write it; readers see it once."""
    landing = StreamLanding(tmp_path)
    landing.land("transactions", transactions(range(4)))
    racing = transactions([2, 3, 4])
    racing["TX_AMOUNT"] = -1.0
    racing.to_parquet(landing.day_dir("transactions", "2018-04-01") / "99999999999999999999-race.parquet")
    day = landing.read_day("transactions", "2018-04-01")
    assert sorted(day["TRANSACTION_ID"]) == [0, 1, 2, 3, 4]
    assert (day.loc[day["TRANSACTION_ID"] < 4, "TX_AMOUNT"] > 0).all(), "the earliest file's row wins"
    assert day["TX_DATETIME"].is_monotonic_increasing
    assert landing.count("transactions") == 5


def test_cache_keeps_only_recent_days_and_stays_correct(tmp_path: Path) -> None:
    landing = StreamLanding(tmp_path, cached_days=2)
    for offset in range(5):
        landing.land(
            "transactions", transactions(range(10 * offset, 10 * offset + 10), DAY + timedelta(days=offset))
        )
        assert len(landing._cache) <= 2
    assert [day for _, day in landing._cache] == ["2018-04-04", "2018-04-05"]
    again = landing.land("transactions", transactions(range(10)))
    assert again.landed == 0, "an evicted day's ids are read back from disk"
    with pytest.raises(ValueError, match="cached_days"):
        StreamLanding(tmp_path, cached_days=0)


def test_empty_days_and_fingerprints(tmp_path: Path) -> None:
    landing = StreamLanding(tmp_path / "nothing-yet")
    assert landing.days("transactions") == [] and landing.count("fraud_reports") == 0
    empty = landing.read_day("fraud_reports", "2018-04-01")
    assert list(empty.columns) == ["TRANSACTION_ID", "REPORT_DATETIME"] and empty.empty
    before = landing.fingerprint("transactions", "2018-04-01")
    landing.land("transactions", transactions(range(3)))
    after = landing.fingerprint("transactions", "2018-04-01")
    assert (
        before != after == StreamLanding(tmp_path / "nothing-yet").fingerprint("transactions", "2018-04-01")
    )
    assert landing.land("transactions", transactions([])).files == ()


@pytest.mark.parametrize(
    ("table", "frame", "message"),
    [
        ("clicks", transactions(range(1)), "unknown table"),
        ("transactions", transactions(range(1)).drop(columns="TX_DATETIME"), "missing column"),
        (
            "transactions",
            transactions(range(1)).assign(TX_DATETIME=lambda f: f["TX_DATETIME"].dt.tz_localize(None)),
            "timezone-aware",
        ),
        (
            "transactions",
            transactions(range(2)).assign(TRANSACTION_ID=pd.array([1, None], dtype="Int64")),
            "must not be missing",
        ),
    ],
)
def test_land_refuses_what_it_cannot_place(
    tmp_path: Path, table: str, frame: pd.DataFrame, message: str
) -> None:
    landing = StreamLanding(tmp_path)
    with pytest.raises(ValueError, match=message):
        landing.land(table, frame)
    assert not (tmp_path / "transactions").exists()


def test_status_round_trip(tmp_path: Path) -> None:
    landing = StreamLanding(tmp_path)
    first = ConsumerStatus(
        name="transactions-0",
        topic="transactions",
        table="transactions",
        events_landed=10,
        duplicates_skipped=2,
        dead_letters=1,
        watermark=datetime(2018, 4, 1, 12, tzinfo=UTC),
        lag=3,
        updated_at=datetime(2018, 4, 1, 12, 0, 5, tzinfo=UTC),
    )
    reports = ConsumerStatus(
        "reports-0", "fraud_reports", "fraud_reports", 0, 0, 0, None, None, first.updated_at
    )
    landing.write_status(first)
    landing.write_status(reports)
    later = ConsumerStatus(**{**first.__dict__, "events_landed": 20, "lag": None})
    landing.write_status(later)
    assert StreamLanding(tmp_path).read_statuses() == [reports, later]
    assert landing.days("transactions") == []
    with pytest.raises(ValueError, match="consumer name"):
        landing.write_status(ConsumerStatus(**{**first.__dict__, "name": "../escape"}))
    (tmp_path / "_status" / "junk.json").write_text("{}")
    with pytest.raises(ValueError, match=r"junk\.json"):
        landing.read_statuses()
