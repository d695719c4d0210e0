"""The prod profile's online event buffers: sorted sets in Redis, one per entity."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta

import numpy as np
import pandas as pd
import redis

from feature_repo.online.buffers import (
    _REPORT_US,
    DEFAULT_GRACE,
    BufferState,
    Columns,
    EventBuffers,
    _Snapshot,
    _state,
)
from settings.stream import SYSTEM_REDIS_TLS, RedisTls

_CUSTOMER_MEMBER = np.dtype([("time", ">i8"), ("tx", ">i8"), ("amount", ">f8")])
_TX_MEMBER = np.dtype(">i8")
_WATERMARK, _FLOOR = b"watermark", b"floor"
_TRIM_CHUNK = 1_000
"""Entities per trim script call or UNLINK: bounds how long one call blocks the Redis server."""

_TRIM_SCRIPT = """
-- KEYS: the index, then entity keys; ARGV: inclusive cutoff, then the entity ids.
-- Keeps the index invariant: an entity's score is its oldest buffered event.
local dropped = 0
for i = 2, #KEYS do
  dropped = dropped + redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', ARGV[1])
  local oldest = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
  if #oldest == 0 then
    redis.call('ZREM', KEYS[1], ARGV[i])
  else
    redis.call('ZADD', KEYS[1], oldest[2], ARGV[i])
  end
end
return dropped
"""


def _members(values: np.ndarray) -> list[bytes]:
    """One bytes member per element of a (big-endian, fixed-size) array."""
    buffer, size = values.tobytes(), values.dtype.itemsize
    return [buffer[i : i + size] for i in range(0, len(buffer), size)]


def _customer_records(tx: np.ndarray, time_us: np.ndarray, amounts: np.ndarray) -> np.ndarray:
    records = np.empty(len(tx), dtype=_CUSTOMER_MEMBER)
    records["time"], records["tx"], records["amount"] = time_us, tx, amounts
    return records


def _scores(values: Sequence[bytes]) -> np.ndarray:
    """Scores as Redis replies them, as text (exact for µs), parsed in one go."""
    return np.array(values, dtype=np.bytes_).astype(np.float64) if len(values) else np.zeros(0)


def _tx_ids(members: Sequence[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(members), dtype=_TX_MEMBER).astype(np.int64)


def _customer_columns(customers: np.ndarray, replies: Sequence[Sequence[bytes]]) -> Columns:
    """Customer events (times in µs) from one ZRANGE reply of packed members per customer."""
    events = np.frombuffer(b"".join(b"".join(reply) for reply in replies), dtype=_CUSTOMER_MEMBER)
    return {
        "CUSTOMER_ID": np.repeat(customers, [len(reply) for reply in replies]),
        "TRANSACTION_ID": events["tx"].astype(np.int64),
        "TX_DATETIME": events["time"].astype(np.int64),
        "TX_AMOUNT": events["amount"].astype(np.float64),
    }


def _terminal_columns(terminals: np.ndarray, replies: Sequence[Sequence[bytes]]) -> Columns:
    """Terminal events (times in µs) from one ZRANGE WITHSCORES reply per terminal."""
    flat = [item for reply in replies for item in reply]
    return {
        "TERMINAL_ID": np.repeat(terminals, [len(reply) // 2 for reply in replies]),
        "TRANSACTION_ID": _tx_ids(flat[0::2]),
        "TX_DATETIME": _scores(flat[1::2]).astype(np.int64),
    }


def _optional_score(score: float | None) -> int | None:
    return None if score is None else int(float(score))


class RedisEventBuffers(EventBuffers):
    """The prod profile's store: one sorted set per entity, scored by event time in µs.

    Keys (after `prefix`): `c:{customer}`, members packing the event as
    big-endian time µs, tx id (int64) and amount (float64): exact, parsed by one
    `frombuffer`, and no scores to fetch; `t:{terminal}`, members the 8-byte tx
    id; `reported`, members the 8-byte tx id scored by report time, so that a
    terminal's labels are one ZINTER of its set with `reported`, done by the
    server. `customers` and `terminals` index each entity with the time of its
    oldest buffered event, so that `trim` touches only entities with something
    to drop. `meta` holds `watermark` and `floor` as scores, so that ZADD GT
    raises them atomically. Times in µs stay below 2**53, so float scores are
    exact. A batch write and a read are each one MULTI/EXEC round trip.

    Args:
        client: a client (with `decode_responses` off) or a redis:// URL.
        prefix: the namespace of every key.
        grace: see `EventBuffers`.
        tls: the CA and client certificate of a `rediss://` URL (redis-py reads none from a URL).

    Raises:
        ValueError: `tls` has files but the URL is not `rediss://`.
    """

    UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError)

    def __init__(
        self,
        client: redis.Redis | str,
        prefix: str = "",
        grace: timedelta = DEFAULT_GRACE,
        tls: RedisTls = SYSTEM_REDIS_TLS,
    ) -> None:
        super().__init__(grace)
        self._owns_client = isinstance(client, str)
        self._client = (
            redis.Redis.from_url(client, **tls.client_options(client)) if isinstance(client, str) else client
        )
        if self._client.get_connection_kwargs().get("decode_responses"):
            raise ValueError("RedisEventBuffers stores binary members: use a client without decode_responses")
        self._prefix = prefix
        self._meta, self._reported = f"{prefix}meta", f"{prefix}reported"
        self._customer_index, self._terminal_index = f"{prefix}customers", f"{prefix}terminals"
        self._trim_script = self._client.register_script(_TRIM_SCRIPT)

    def _customer_key(self, customer: int | bytes) -> str:
        return f"{self._prefix}c:{int(customer)}"

    def _terminal_key(self, terminal: int | bytes) -> str:
        return f"{self._prefix}t:{int(terminal)}"

    def _queue_buffers(
        self,
        pipe: redis.client.Pipeline,
        index: str,
        key: Callable[[int], str],
        entities: np.ndarray,
        members: np.ndarray,
        time_us: np.ndarray,
    ) -> None:
        """ZADD each entity's events in one command, and lower its index score to its oldest event."""
        order = np.argsort(entities, kind="stable")
        ids, starts = np.unique(entities[order], return_index=True)
        sorted_us = time_us[order]
        packed, scores = _members(members[order]), sorted_us.tolist()
        bounds = [*starts.tolist(), len(order)]
        for entity, start, end in zip(ids.tolist(), bounds[:-1], bounds[1:], strict=True):
            pipe.zadd(key(entity), dict(zip(packed[start:end], scores[start:end], strict=True)))
        oldest = np.minimum.reduceat(sorted_us, starts)
        pipe.zadd(index, dict(zip(map(str, ids.tolist()), oldest.tolist(), strict=True)), lt=True)

    def _write_transactions(
        self,
        tx: np.ndarray,
        customers: np.ndarray,
        terminals: np.ndarray,
        time_us: np.ndarray,
        amounts: np.ndarray,
    ) -> None:
        pipe = self._client.pipeline(transaction=True)
        self._queue_buffers(
            pipe,
            self._customer_index,
            self._customer_key,
            customers,
            _customer_records(tx, time_us, amounts),
            time_us,
        )
        self._queue_buffers(
            pipe, self._terminal_index, self._terminal_key, terminals, tx.astype(_TX_MEMBER), time_us
        )
        pipe.zadd(self._meta, {_WATERMARK: int(time_us.max())}, gt=True)
        pipe.execute()

    def _write_reports(self, tx: np.ndarray, report_us: np.ndarray) -> None:
        members = _members(tx.astype(_TX_MEMBER))
        # One command is atomic by itself: no MULTI needed.
        self._client.zadd(self._reported, dict(zip(members, report_us.tolist(), strict=True)), lt=True)

    def _read(
        self,
        customers: np.ndarray,
        terminals: np.ndarray,
        request_tx: np.ndarray,
        customer_after_us: int,
        terminal_after_us: int,
        until_us: int,
    ) -> _Snapshot:
        pipe = self._client.pipeline(transaction=True)
        pipe.zmscore(self._meta, [_WATERMARK, _FLOOR])
        # Raw commands: redis-py's callbacks would turn each score into a Python float, one by one.
        for customer in customers.tolist():
            pipe.execute_command(
                "ZRANGE", self._customer_key(customer), f"({customer_after_us}", until_us, "BYSCORE"
            )
        terminal_keys = [self._terminal_key(terminal) for terminal in terminals.tolist()]
        for key in terminal_keys:
            pipe.execute_command("ZRANGE", key, f"({terminal_after_us}", until_us, "BYSCORE", "WITHSCORES")
        for key in terminal_keys:
            pipe.execute_command("ZINTER", 2, key, self._reported, "WEIGHTS", 0, 1, "WITHSCORES")
        pipe.zmscore(self._reported, _members(request_tx.astype(_TX_MEMBER)))
        clock, *replies, request_reports = pipe.execute()
        customer_replies = replies[: len(customers)]
        terminal_replies = replies[len(customers) : len(customers) + len(terminals)]
        label_replies = replies[len(customers) + len(terminals) :]

        label_flat = [item for reply in label_replies for item in reply]
        reported = pd.Series(_scores(label_flat[1::2]), index=_tx_ids(label_flat[0::2]))
        terminal_events = _terminal_columns(terminals, terminal_replies)
        # Deduplicated for reindex: one tx id in two terminals' sets (two payloads) shows twice.
        report_us = reported[~reported.index.duplicated()].reindex(terminal_events["TRANSACTION_ID"])
        return _Snapshot(
            _optional_score(clock[0]),
            _optional_score(clock[1]),
            _customer_columns(customers, customer_replies),
            {**terminal_events, _REPORT_US: report_us.to_numpy(np.float64)},
            np.array([np.nan if score is None else score for score in request_reports], dtype=np.float64),
        )

    def _trim(self) -> int:
        watermark = self._client.zscore(self._meta, _WATERMARK)
        if watermark is None:
            return 0
        floor, customer_cutoff, terminal_cutoff = self._cutoffs(int(watermark))
        pipe = self._client.pipeline(transaction=True)
        # The floor rises before anything is dropped: a reader sees the refusal, never the gap.
        pipe.zadd(self._meta, {_FLOOR: floor}, gt=True)
        pipe.zrangebyscore(self._customer_index, "-inf", customer_cutoff)
        pipe.zrangebyscore(self._terminal_index, "-inf", terminal_cutoff)
        pipe.zremrangebyscore(self._reported, "-inf", terminal_cutoff)
        _, stale_customers, stale_terminals, dropped = pipe.execute()
        pipe = self._client.pipeline(transaction=False)
        for index, key, cutoff, stale in (
            (self._customer_index, self._customer_key, customer_cutoff, stale_customers),
            (self._terminal_index, self._terminal_key, terminal_cutoff, stale_terminals),
        ):
            for start in range(0, len(stale), _TRIM_CHUNK):
                chunk = stale[start : start + _TRIM_CHUNK]
                self._trim_script([index, *map(key, chunk)], [cutoff, *chunk], client=pipe)
        return int(dropped) + sum(pipe.execute())

    def _entities(self) -> tuple[list[int], list[int]]:
        pipe = self._client.pipeline(transaction=True)
        pipe.zrange(self._customer_index, 0, -1)
        pipe.zrange(self._terminal_index, 0, -1)
        customers, terminals = pipe.execute()
        return [int(c) for c in customers], [int(t) for t in terminals]

    def dump(self) -> BufferState:
        customers, terminals = self._entities()
        pipe = self._client.pipeline(transaction=True)
        for customer in customers:
            pipe.execute_command("ZRANGE", self._customer_key(customer), 0, -1)
        for terminal in terminals:
            pipe.execute_command("ZRANGE", self._terminal_key(terminal), 0, -1, "WITHSCORES")
        pipe.execute_command("ZRANGE", self._reported, 0, -1, "WITHSCORES")
        pipe.zmscore(self._meta, [_WATERMARK, _FLOOR])
        *buffers, reports, clock = pipe.execute()
        return _state(
            pd.DataFrame(_customer_columns(np.asarray(customers, dtype=np.int64), buffers[: len(customers)])),
            pd.DataFrame(_terminal_columns(np.asarray(terminals, dtype=np.int64), buffers[len(customers) :])),
            pd.DataFrame(
                {
                    "TRANSACTION_ID": _tx_ids(reports[0::2]),
                    "REPORT_DATETIME": _scores(reports[1::2]).astype(np.int64),
                }
            ),
            _optional_score(clock[0]),
            _optional_score(clock[1]),
        )

    def clear(self) -> None:
        customers, terminals = self._entities()
        keys = [
            *map(self._customer_key, customers),
            *map(self._terminal_key, terminals),
            self._customer_index,
            self._terminal_index,
            self._reported,
            self._meta,
        ]
        pipe = self._client.pipeline(transaction=False)
        for start in range(0, len(keys), _TRIM_CHUNK):
            pipe.unlink(*keys[start : start + _TRIM_CHUNK])
        pipe.execute()

    def close(self) -> None:
        if self._owns_client:
            self._client.close()
