"""The Redis Streams event bus: consumer groups, XACK, and XAUTOCLAIM for dead consumers' entries.

A stream entry read through a consumer group stays in that consumer's pending
list until XACK, which gives the same at-least-once contract as Kafka's
committed offsets: a restarted consumer re-reads its own pending entries first,
and entries of a consumer that never comes back are claimed by a live one.

An entry holds the event in its `v` field and its key in `k`. An entry of any
other shape (no `v`, other fields), written by something other than this
bus's producer, is delivered as a poison message (`Message.problem`), which the
consumer dead-letters with its entry id and acknowledges like any other.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from feature_repo.contract import MAX_FIELD_CHARS
from settings.stream import SYSTEM_REDIS_TLS, RedisTls
from streaming.bus import BusDataLostError, BusUnavailableError, DeliveryError, Message

VALUE = b"v"
KEY = b"k"

Entry = tuple[bytes, dict[bytes, bytes]]


class RedisStreamProducer:
    """XADDs pipelined until `flush`, one round trip per batch.

    A send that fills `batch_size` flushes the batch itself, so it may raise
    `DeliveryError` too: buffered memory stays bounded like Kafka's send queue.
    """

    def __init__(self, client: redis.Redis, prefix: str, maxlen: int | None, batch_size: int = 500) -> None:
        # No retry: redis-py would send a pipeline again after a lost reply, storing it twice.
        client.set_retry(Retry(NoBackoff(), 0))  # type: ignore[attr-defined]  # redis 7; stubs are older
        self._pipeline = client.pipeline(transaction=False)
        self._prefix = prefix
        self._maxlen = maxlen
        self._batch_size = batch_size

    def send(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        fields = {VALUE: value} if key is None else {VALUE: value, KEY: key}
        self._pipeline.xadd(self._prefix + topic, fields, maxlen=self._maxlen, approximate=True)
        if len(self._pipeline) >= self._batch_size:
            self.flush()

    def flush(self, timeout_s: float = 30) -> None:
        """Store the pipelined entries; `timeout_s` is unused: redis-py's socket timeouts bound the wait.

        The connection is taken before anything is written, so a Redis that cannot be
        reached fails with `possibly_stored=False`; a failure once the commands went out
        may have stored some (a reply lost, a server that stalled and resumed).
        """
        if not len(self._pipeline):
            return
        try:
            pipeline = self._pipeline
            pipeline.connection = pipeline.connection or pipeline.connection_pool.get_connection()
        except redis.RedisError as exc:
            self._pipeline.reset()
            raise DeliveryError(f"Redis did not store the batch: {exc}", possibly_stored=False) from exc
        try:
            self._pipeline.execute()
        except redis.RedisError as exc:
            # The pipeline is reset either way: some entries may be stored, the caller resends all.
            raise DeliveryError(f"Redis did not store the whole batch: {exc}") from exc


class RedisStreamConsumer:
    """One named member of a consumer group on one stream.

    `poll` serves, in order: this consumer's own pending entries (left by a
    previous life under the same name), then every `claim_every_polls` polls or
    whenever no new entry came, entries other consumers left pending longer than
    `claim_min_idle_ms`, and otherwise new entries.
    """

    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        topic: str,
        group: str,
        name: str,
        claim_min_idle_ms: int,
        claim_every_polls: int,
    ) -> None:
        self._client = client
        self._stream = stream
        self._topic = topic
        self._group = group
        self._name = name
        self._claim_min_idle_ms = claim_min_idle_ms
        self._claim_every_polls = claim_every_polls
        self._history_cursor: bytes | None = b"0"
        self._claim_cursor: bytes = b"0-0"
        self._polls = 0
        # Returned, not yet committed: XAUTOCLAIM would hand a slow batch back to its own consumer.
        self._in_flight: set[str] = set()
        with self._answering():
            self._create_group()

    def _create_group(self) -> None:
        try:
            self._client.xgroup_create(self._stream, self._group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    @contextmanager
    def _answering(self) -> Iterator[None]:
        """Redis's errors as the bus's: down, `BusUnavailableError`; a vanished group, `BusDataLostError`."""
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BusUnavailableError(f"Redis did not answer for stream {self._stream}: {exc}") from exc
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # The group was there (this consumer made or found it): Redis lost it, and what it acked.
            self._create_group()
            self.rewind()
            raise BusDataLostError(
                f"stream {self._stream}: consumer group {self._group} is gone, so Redis lost entries it "
                "had acknowledged (restarted without persistence?); reading on from what it holds now"
            ) from exc

    def rewind(self) -> None:
        self._history_cursor = b"0"
        self._in_flight.clear()

    def poll(self, max_messages: int, timeout_s: float) -> list[Message]:
        with self._answering():
            return self._poll(max_messages, timeout_s)

    def _poll(self, max_messages: int, timeout_s: float) -> list[Message]:
        while self._history_cursor is not None:
            entries = self._read(self._history_cursor, max_messages, block_ms=None)
            if not entries:
                self._history_cursor = None
                break
            self._history_cursor = entries[-1][0]
            if messages := self._deliver(entries):
                return messages
        self._polls += 1
        if self._polls % self._claim_every_polls == 0 and (
            claimed := self.claim_stale(self._claim_min_idle_ms, max_messages)
        ):
            return claimed
        # BLOCK 0 would mean forever, so a zero timeout reads without blocking.
        block_ms = int(timeout_s * 1000) or None
        return self._deliver(self._read(b">", max_messages, block_ms)) or self.claim_stale(
            self._claim_min_idle_ms, max_messages
        )

    def claim_stale(self, min_idle_ms: int, max_messages: int = 100) -> list[Message]:
        """Take over entries other consumers read but left unacknowledged for `min_idle_ms`.

        Each call scans on from where the last one stopped, so repeated calls
        sweep the whole pending list. An entry is idle only while nobody
        handles it, so `min_idle_ms` must exceed the time a batch takes to commit.
        """
        cursor, entries, *_deleted = self._client.xautoclaim(
            self._stream, self._group, self._name, min_idle_ms, self._claim_cursor, count=max_messages
        )
        self._claim_cursor = cursor
        return self._deliver([entry for entry in entries if entry[0].decode() not in self._in_flight])

    def commit(self, messages: Sequence[Message]) -> None:
        if not messages:
            return
        ids = [message.position for message in messages]
        with self._answering():
            self._client.xack(self._stream, self._group, *ids)
        self._in_flight.difference_update(ids)

    def lag(self) -> int | None:
        with self._answering():
            groups = self._client.xinfo_groups(self._stream)
        for group in groups:
            if group["name"].decode() == self._group:
                # `lag` is None when Redis cannot tell (entries deleted from the middle of the stream).
                return None if group.get("lag") is None else int(group["lag"]) + int(group["pending"])
        return None

    def close(self) -> None:
        self._client.close()

    def _read(self, start: bytes, count: int, block_ms: int | None) -> list[Entry]:
        response = self._client.xreadgroup(
            self._group, self._name, {self._stream: start}, count=count, block=block_ms
        )
        return [entry for _stream, entries in response or [] for entry in entries]

    def _deliver(self, entries: list[Entry]) -> list[Message]:
        messages = []
        trimmed = []
        for entry_id, fields in entries:
            if not fields:
                trimmed.append(entry_id)
                continue
            position = entry_id.decode()
            problem = _poison(fields)
            if problem is None:
                message = Message(self._topic, fields.get(KEY), fields[VALUE], position)
            else:
                key = fields.get(KEY)
                message = Message(
                    self._topic, key if type(key) is bytes else None, _rendered(fields), position, problem
                )
            self._in_flight.add(message.position)
            messages.append(message)
        if trimmed:
            # MAXLEN trimmed these while pending: nothing is left to redeliver, so stop tracking them.
            self._client.xack(self._stream, self._group, *trimmed)
        return messages


def _poison(fields: dict[bytes, bytes]) -> str | None:
    """Why an entry is not one this bus wrote (`v`, and `k` when keyed: bytes), or None when it is.

    Anything else (written by hand or by another tool) is a poison entry: it
    becomes a message with this reason, which the consumer dead-letters and
    commits, rather than an exception that would stop the topic on every restart.
    """
    if not all(type(name) is bytes and type(value) is bytes for name, value in fields.items()):
        return "poison Redis entry: its field names and values must be bytes"
    if VALUE not in fields:
        return f"poison Redis entry: no 'v' field (it has {_names(fields)})"
    if len(fields) > 1 and (len(fields) > 2 or KEY not in fields):
        return f"poison Redis entry: fields other than 'v' and 'k' ({_names(fields)})"
    return None


def _names(fields: dict[bytes, bytes]) -> str:
    shown = [repr(name.decode("utf-8", "backslashreplace")[:MAX_FIELD_CHARS]) for name in list(fields)[:5]]
    return ", ".join(shown) + (f" and {len(fields) - 5} more" if len(fields) > 5 else "")


def _rendered(fields: dict[bytes, bytes]) -> bytes:
    """A poison entry for its dead letter: JSON pairs [name, value], text when UTF-8, else {"base64": ...}."""

    def part(raw: object) -> object:
        if type(raw) is not bytes:
            return repr(raw)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(raw).decode("ascii")}

    return json.dumps(
        [[part(name), part(value)] for name, value in fields.items()], ensure_ascii=False
    ).encode()


class RedisStreamBus:
    """Redis Streams behind the `EventBus` interface.

    Args:
        url: the Redis server; redis-py's URL options (e.g. `?socket_connect_timeout=1`) apply.
        prefix: put before every stream name, so runs sharing one Redis stay apart.
        maxlen: approximate cap per stream; trimming ignores acknowledgements, so keep it
            well above the consumers' lag, or None to keep everything.
        claim_min_idle_ms: how long an entry must sit unacknowledged before a live
            consumer takes it over from a dead one.
        claim_every_polls: how often a busy consumer looks for such entries (an idle one
            looks on every empty poll).
        tls: the CA and client certificate of a `rediss://` URL.

    Raises:
        ValueError: `tls` has files but `url` is not `rediss://`.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        prefix: str = "",
        maxlen: int | None = None,
        claim_min_idle_ms: int = 60_000,
        claim_every_polls: int = 10,
        tls: RedisTls = SYSTEM_REDIS_TLS,
    ) -> None:
        self._url = url
        self._client_options = tls.client_options(url)
        self._prefix = prefix
        self._maxlen = maxlen
        self._claim_min_idle_ms = claim_min_idle_ms
        self._claim_every_polls = claim_every_polls

    def _client(self) -> redis.Redis:
        return redis.Redis.from_url(self._url, **self._client_options)

    def producer(self) -> RedisStreamProducer:
        return RedisStreamProducer(self._client(), self._prefix, self._maxlen)

    def consumer(self, topic: str, group: str, name: str) -> RedisStreamConsumer:
        return RedisStreamConsumer(
            self._client(),
            self._prefix + topic,
            topic,
            group,
            name,
            self._claim_min_idle_ms,
            self._claim_every_polls,
        )

    def ensure_topics(self, topics: Iterable[str]) -> None:
        """Nothing to do: XADD and the consumer's XGROUP CREATE ... MKSTREAM create streams."""
