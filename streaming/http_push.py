"""The HTTP push adapter of the event bus: apps that speak neither Kafka nor Redis POST events here.

An event gets in only through the decoder the stream consumer runs, so HTTP
lets in nothing the stream would dead-letter, and ``202`` is answered only
after the producer's flush, so it means what a flushed producer means: the
events are durably on the bus. A batch is all or nothing: a ``422`` names every
bad event and appends none, so a client fixes those and resends the same batch
without tracking which events went through. A ``503`` (bus unreachable, or too
many requests in flight) means "resend later" and that nothing of the batch was
appended, nor will be: the producer keeps nothing queued to send afterwards. A
``504`` means the bus did not confirm in time after it may have stored some
events; resending is safe too, as the consumer lands each event id once.

Without API keys (`settings.AuthSettings`) the endpoint is open, which is why
:func:`serve` binds to the loopback interface unless told otherwise; with keys,
every request but `/healthz` needs `Authorization: Bearer <key>`.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from settings import ApiKeyGuard, ApiKeys
from streaming.bus import DeliveryError, EventBus, Producer, Topics
from streaming.events import (
    MAX_FUTURE,
    Rejection,
    decode_report,
    decode_transaction,
    encode_report,
    encode_transaction,
)

MAX_BODY_BYTES = 1 << 20
"""1 MiB: a full batch of compact events fits with room to spare."""
MAX_EVENTS = 1_000
"""Events per request; a bigger batch holds the single producer thread up for every other client."""
MAX_IN_FLIGHT = 8
"""Requests being read, checked or appended at once; the next one is refused rather than queued."""
FLUSH_TIMEOUT_S = 10.0
"""How long one batch may wait for the bus before the client is told to retry."""
RETRY_AFTER_S = 1

Keyed = tuple[bytes, bytes]
"""(key, canonical payload) of one valid event, ready for `Producer.send`."""
Canonicaliser = Callable[[bytes, datetime, timedelta], Keyed | Rejection]

_PUSH_STATUSES = (202, 401, 413, 422, 500, 503, 504)
"""Every status a push endpoint answers."""
_TRANSACTIONS_PATH = "/v1/transactions"
_REPORTS_PATH = "/v1/fraud_reports"

_NOT_JSON_WHITESPACE = re.compile(r"[^ \t\n\r]")
_SCANNER = json.JSONDecoder()


def _transaction(raw: bytes, now: datetime, max_future: timedelta) -> Keyed | Rejection:
    event = decode_transaction(raw, now, max_future)
    if isinstance(event, Rejection):
        return event
    return str(event.TRANSACTION_ID).encode(), encode_transaction(event)


def _report(raw: bytes, now: datetime, max_future: timedelta) -> Keyed | Rejection:
    """Keyed by the transaction's id too, so a report lands on its transaction's partition."""
    event = decode_report(raw, now, max_future)
    if isinstance(event, Rejection):
        return event
    return str(event.TRANSACTION_ID).encode(), encode_report(event)


class _RefusedError(Exception):
    """The request is answered with `status` and nothing is appended; `errors` names the bad events."""

    def __init__(self, status: int, detail: str, errors: Sequence[dict[str, object]] = ()) -> None:
        super().__init__(detail)
        self.status = status
        self.errors = list(errors)


def _skip_whitespace(text: str, pos: int) -> int:
    found = _NOT_JSON_WHITESPACE.search(text, pos)
    return len(text) if found is None else found.start()


def _split_events(body: bytes, max_events: int) -> list[bytes]:
    """The bytes of each event in the body: the body itself, or each element of a top-level array.

    Elements are cut out of the client's text rather than parsed and serialised
    again, so the decoder judges exactly what the client sent, as it would on the
    stream: a repeated key, which a parse would silently collapse to its last
    copy, is still refused, and the per-event size limit counts the client's bytes.
    A body that is no array goes to the decoder whole, which names anything wrong
    with it, malformed JSON included.
    """
    start = len(body) - len(body.lstrip(b" \t\n\r"))
    if body[start : start + 1] != b"[":
        return [body]
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _RefusedError(422, f"malformed JSON: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    events: list[bytes] = []
    pos = _skip_whitespace(text, start + 1)
    closed = text.startswith("]", pos)
    if closed:
        pos += 1
    while not closed:
        if len(events) == max_events:
            raise _RefusedError(413, f"more than {max_events} events: split the batch")
        try:
            _, end = _SCANNER.raw_decode(text, pos)
        except ValueError as exc:
            raise _RefusedError(422, f"malformed JSON in event {len(events)}: {exc}") from None
        except RecursionError:
            raise _RefusedError(422, f"malformed JSON: event {len(events)} nested too deeply") from None
        events.append(text[pos:end].encode())
        pos = _skip_whitespace(text, end)
        if text.startswith(",", pos):
            pos = _skip_whitespace(text, pos + 1)
        elif text.startswith("]", pos):
            pos += 1
            closed = True
        else:
            raise _RefusedError(422, f"malformed JSON: expecting ',' or ']' after event {len(events) - 1}")
    if _skip_whitespace(text, pos) != len(text):
        raise _RefusedError(422, f"malformed JSON: extra data after the array at char {pos}")
    return events


def _checked(body: bytes, canonical: Canonicaliser, max_events: int, max_future: timedelta) -> list[Keyed]:
    """The body's events, decoded by the stream's rules and encoded again; else why not, for each bad one.

    The server's clock is the decoder's `now`, as the consumer's is on the stream.
    """
    raw_events = _split_events(body, max_events)
    now = datetime.now(UTC)
    valid: list[Keyed] = []
    errors: list[dict[str, object]] = []
    for index, raw in enumerate(raw_events):
        outcome = canonical(raw, now, max_future)
        if isinstance(outcome, Rejection):
            errors.append({"index": index, "reason": outcome.reason})
        else:
            valid.append(outcome)
    if errors:
        detail = f"{len(errors)} of {len(raw_events)} events invalid: nothing was appended"
        raise _RefusedError(422, detail, errors)
    return valid


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None once it exceeds `limit` bytes.

    The declared length is checked first so an honest oversized request is
    refused unread, and the bytes are counted as they arrive so a chunked body,
    which declares no length, cannot get past the limit either.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


class _Slots:
    """Requests in flight; taken on the event loop, given back there or by the producer thread."""

    def __init__(self, limit: int) -> None:
        self._free = limit
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self._free == 0:
                return False
            self._free -= 1
            return True

    def give_back(self, _done: object = None) -> None:
        """Also a future's done callback, hence the ignored argument."""
        with self._lock:
            self._free += 1


class _Appender:
    """The app's one producer and the one thread that ever touches it.

    Producers are not thread-safe (the Redis one buffers commands in a list) and
    `flush` blocks, so every send and flush runs on a single worker thread: each
    batch is sent and flushed whole before the next starts, so a failed flush
    fails only the batches it covered, and the event loop never waits on the bus.
    The producer is made on that thread too, at first use, so an app that is
    built but never served opens no connection.
    """

    def __init__(self, bus: EventBus, flush_timeout_s: float) -> None:
        self._bus = bus
        self._flush_timeout_s = flush_timeout_s
        self._producer: Producer | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="http-push-producer")

    def submit(self, topic: str, events: Sequence[Keyed]) -> Future[None]:
        return self._thread.submit(self._append, topic, events)

    def _append(self, topic: str, events: Sequence[Keyed]) -> None:
        if self._producer is None:
            self._producer = self._bus.producer()
        for key, value in events:
            self._producer.send(topic, value, key=key)
        self._producer.flush(self._flush_timeout_s)

    def close(self) -> None:
        """Wait for the batches in hand, then let the producer go now, not whenever the app is collected.

        Every batch was flushed, so dropping the producer loses nothing but its
        connections, which would otherwise outlive the app (a Kafka client keeps
        reconnecting to brokers that may be gone by then).
        """
        self._thread.shutdown(wait=True)
        self._producer = None


class _Metrics:
    """The app's own registry, so several apps in one process (tests, embedding) can each register theirs.

    Values are still shared between same-named series of one process when
    prometheus_client runs in multiprocess mode, which importing feast switches
    on; one app per process, as `serve` runs it, is unaffected.
    """

    def __init__(self, topics: Sequence[str], paths: Sequence[str]) -> None:
        self.registry = CollectorRegistry()
        self.accepted = Counter(
            "http_push_events_accepted",
            "Events appended to the bus and flushed.",
            ["topic"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "http_push_events_rejected",
            "Events the decoder refused (their whole batch was refused).",
            ["topic"],
            registry=self.registry,
        )
        self.requests = Counter(
            "http_push_requests", "Push requests answered.", ["path", "status"], registry=self.registry
        )
        self.unauthorized = Counter(
            "http_push_unauthorized",
            "Requests refused (401) for a missing or unknown API key.",
            registry=self.registry,
        )
        self.latency = Histogram(
            "http_push_request_seconds",
            "Push request latency, from the request reaching the app to its answer.",
            ["path"],
            registry=self.registry,
        )
        # Zero series exist from the start, so a rate() or an alert over them is defined before the
        # first event, rather than the series being absent.
        for topic in topics:
            self.accepted.labels(topic)
            self.rejected.labels(topic)
        for path in paths:
            self.latency.labels(path)
            for status in _PUSH_STATUSES:
                self.requests.labels(path, str(status))


def create_app(
    bus: EventBus,
    topics: Topics,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_events: int = MAX_EVENTS,
    max_in_flight: int = MAX_IN_FLIGHT,
    flush_timeout_s: float = FLUSH_TIMEOUT_S,
    retry_after_s: int = RETRY_AFTER_S,
    max_future: timedelta = MAX_FUTURE,
    api_keys: ApiKeys | None = None,
) -> FastAPI:
    """The push endpoints in front of `bus`, appending to the `topics` the stream consumer reads.

    Args:
        bus: Where accepted events go; the app owns one producer of it.
        topics: The topic names (with the profile's prefix) of the two event kinds.
        max_body_bytes: A larger body is refused with 413 before it is parsed.
        max_events: A larger batch is refused with 413.
        max_in_flight: More concurrent push requests are refused with 503 at once, not queued,
            so a burst cannot pile up memory or wait time behind a slow bus.
        flush_timeout_s: How long one batch may wait for the bus before the answer is 503.
        retry_after_s: The `Retry-After` of every 503.
        max_future: Clock skew allowed to event timestamps, as for the stream consumer.
        api_keys: The keys every request but `/healthz` must bear; None: open (loopback default).
    """
    appender = _Appender(bus, flush_timeout_s)
    slots = _Slots(max_in_flight)
    metrics = _Metrics((topics.transactions, topics.fraud_reports), (_TRANSACTIONS_PATH, _REPORTS_PATH))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(appender.close)

    app = FastAPI(title="fraudpipe event push", lifespan=lifespan)

    def unavailable(reason: str) -> JSONResponse:
        body = {"detail": reason, "error": "unavailable"}
        return JSONResponse(body, status_code=503, headers={"Retry-After": str(retry_after_s)})

    async def checked(request: Request, topic: str, canonical: Canonicaliser) -> list[Keyed] | JSONResponse:
        body = await _read_body(request, max_body_bytes)
        if body is None:
            detail = f"body larger than {max_body_bytes} bytes"
            return JSONResponse({"detail": detail, "error": "too_large"}, status_code=413)
        try:
            # Off the event loop: a full batch costs some 20 ms of CPU, which would stall every
            # other request, health checks and scrapes included.
            return await run_in_threadpool(_checked, body, canonical, max_events, max_future)
        except _RefusedError as exc:
            metrics.rejected.labels(topic).inc(len(exc.errors))
            code = "too_large" if exc.status == 413 else "invalid"
            refusal = {"detail": str(exc), "error": code, "errors": exc.errors}
            return JSONResponse(refusal, status_code=exc.status)

    async def push(request: Request, topic: str, canonical: Canonicaliser) -> Response:
        if not slots.take():
            return unavailable(f"already {max_in_flight} requests in flight: retry later")
        job: Future[None] | None = None
        try:
            events = await checked(request, topic, canonical)
            if isinstance(events, JSONResponse):
                return events
            job = appender.submit(topic, events)
        finally:
            # A submitted batch keeps its slot until the producer thread is done with it, even if
            # this request is abandoned, so the bound also caps the batches waiting for that thread.
            if job is None:
                slots.give_back()
            else:
                job.add_done_callback(slots.give_back)
        try:
            await asyncio.wrap_future(job)
        except DeliveryError as exc:
            if not exc.possibly_stored:
                return unavailable("the bus is unavailable: nothing was appended, resend the batch later")
            # Some events may be on the bus: not a 503, which promises that none is.
            return JSONResponse(
                {
                    "detail": "the bus did not confirm the whole batch in time: some events may be on "
                    "it; resend the batch (the consumer lands each event id once)",
                    "error": "unconfirmed",
                },
                status_code=504,
                headers={"Retry-After": str(retry_after_s)},
            )
        metrics.accepted.labels(topic).inc(len(events))
        return JSONResponse({"accepted": len(events)}, status_code=202)

    async def observed(path: str, answer: Awaitable[Response]) -> Response:
        start = time.perf_counter()
        status = 500
        try:
            response = await answer
            status = response.status_code
            return response
        finally:
            metrics.requests.labels(path, str(status)).inc()
            metrics.latency.labels(path).observe(time.perf_counter() - start)

    @app.post(_TRANSACTIONS_PATH, status_code=202)
    async def push_transactions(request: Request) -> Response:
        """Append card transactions: one JSON event object, or an array of them, all or nothing."""
        return await observed(_TRANSACTIONS_PATH, push(request, topics.transactions, _transaction))

    @app.post(_REPORTS_PATH, status_code=202)
    async def push_fraud_reports(request: Request) -> Response:
        """Append fraud reports: one JSON event object, or an array of them, all or nothing."""
        return await observed(_REPORTS_PATH, push(request, topics.fraud_reports, _report))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness only: the bus is checked by every push, whose 503 says when it is down."""
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    if api_keys is not None:
        app.add_middleware(ApiKeyGuard, keys=api_keys, on_refused=metrics.unauthorized.inc)
    return app


def serve(app: FastAPI, host: str, port: int) -> None:
    """Run `app` until interrupted; loopback by default, since without API keys it is open."""
    uvicorn.run(app, host=host, port=port)
