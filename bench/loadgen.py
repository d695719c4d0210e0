"""A lean HTTP/1.1 load generator for `bench.serve`: raw keep-alive connections, nothing else.

Why not httpx or aiohttp: on two cores a Python client spends more CPU per
request than the server under test, so it would measure itself. Here each
connection is an `asyncio.Protocol` that writes pre-encoded request bytes and
parses only the status line and the body's length (Content-Length, or a
chunked body up to its last chunk). It runs in its own process
(`python -m bench.loadgen`, a `LoadSpec` as JSON on stdin, a `LoadResult` as
JSON on stdout) so that it shares no GIL with the parent or a server.

Two ways to load:

* closed loop: `connections` clients, each sending its next request as soon as
  the previous answer arrives; the throughput is the server's at that concurrency.
* open loop: request i is due at start + i / rate whatever the server does, on
  the first free connection. Latency is measured from the *due* time, not from
  the send, so a stalled server is charged for the requests it held back
  (no coordinated omission). A request unanswered `timeout_s` after its due
  time counts as a timeout, sent or not; one already that late when a
  connection frees up is not sent at all. `send_lag_p99_ms` says how late
  sends were (timers fire up to about a millisecond late; a busy server
  keeps every connection waiting); that lag is in the latencies, against
  the server, never in its favour.

This module imports only the standard library (and uvloop when present), so
the generator starts in a fraction of a second and stays small.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

Mode = Literal["closed", "open"]


@dataclass(frozen=True)
class LoadSpec:
    """One load phase against one server.

    Attributes:
        port: the server's port on 127.0.0.1.
        path: the endpoint, e.g. `/v1/score`.
        bodies: a file of JSON request bodies, one per line; used in order from
            `offset`, wrapping around.
        mode: `closed` or `open` (see the module docstring).
        connections: keep-alive connections (closed loop: the concurrency).
        duration_s: how long requests are started for.
        rate: requests per second due in open loop.
        offset: the first body used.
        items_per_request: transactions per body, for a throughput in transactions.
        timeout_s: a request unanswered this long after its due time (open
            loop) or its send (closed loop) is a timeout; none is given up
            sooner than this after its send.
    """

    port: int
    path: str
    bodies: str
    mode: Mode = "closed"
    connections: int = 1
    duration_s: float = 10.0
    rate: float = 0.0
    offset: int = 0
    items_per_request: int = 1
    timeout_s: float = 5.0


@dataclass
class LoadResult:
    """What one phase measured; latencies in ms, throughput over the phase's wall time.

    Percentiles cover every answered request (any status) and count timeouts
    as infinitely slow, so a tail of timeouts shows as `inf`, never as a fast p99.
    `ok_p99_ms` covers only the accepted (2xx) answers: under overload, what
    the requests that were served waited.
    """

    spec: LoadSpec
    taken: int = 0
    sent: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    p50_ms: float = math.nan
    p95_ms: float = math.nan
    p99_ms: float = math.nan
    p999_ms: float = math.nan
    max_ms: float = math.nan
    ok_p99_ms: float = math.nan
    send_lag_p99_ms: float = 0.0
    cpu_s: float = 0.0

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    @property
    def error_rate(self) -> float:
        total = self.ok + self.failed
        return self.failed / total if total else 0.0

    @property
    def requests_per_s(self) -> float:
        return self.ok / self.wall_s if self.wall_s else 0.0

    @property
    def items_per_s(self) -> float:
        return self.requests_per_s * self.spec.items_per_request


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with at most one request in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[int] | None = None
        self._status = 0
        self._length = -1  # body bytes still expected; -1 while reading the head
        self._chunked = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError(f"connection lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._length < 0:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._buffer[:end]).lower()
            del self._buffer[: end + 4]
            self._status = int(head[9:12])
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                line_end = head.find(b"\r\n", at + 2)
                self._length = int(head[at + 17 : line_end if line_end >= 0 else len(head)])
                self._chunked = False
            else:
                # No length: a chunked body. JSON never holds a raw CRLF, so the last chunk ends it.
                self._length = 0
                self._chunked = b"transfer-encoding: chunked" in head
        if self._chunked:
            if not self._buffer.endswith(b"0\r\n\r\n"):
                return
            self._buffer.clear()
        elif len(self._buffer) < self._length:
            return
        else:
            del self._buffer[: self._length]
        self._length = -1
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(self._status)

    async def request(self, data: bytes) -> int:
        """Send one request and return the answer's status code."""
        assert self.transport is not None
        if self.closed or self.transport.is_closing():  # the server closed it after its last answer
            raise ConnectionError("connection closed by the server")
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self._waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def _connect(port: int) -> _Connection:
    _, protocol = await asyncio.get_running_loop().create_connection(_Connection, "127.0.0.1", port)
    return protocol


def _requests(spec: LoadSpec) -> list[bytes]:
    bodies = Path(spec.bodies).read_bytes().splitlines()
    head = f"POST {spec.path} HTTP/1.1\r\nHost: 127.0.0.1:{spec.port}\r\nContent-Type: application/json\r\n"
    encoded = [f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body for body in bodies if body]
    start = spec.offset % len(encoded)
    return encoded[start:] + encoded[:start]


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class _Run:
    """The shared state of one phase: requests, counters, latencies."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.requests = _requests(spec)
        self.next = 0
        self.latencies: list[float] = []
        self.ok_latencies: list[float] = []
        self.lags: list[float] = []
        self.errors: dict[str, int] = {}
        self.sent = 0
        self.ok = 0

    def take(self) -> bytes:
        data = self.requests[self.next % len(self.requests)]
        self.next += 1
        return data

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def timed_out(self) -> None:
        self.error("timeout")
        self.latencies.append(math.inf)

    def answered(self, status: int, latency_s: float) -> None:
        self.latencies.append(latency_s * 1e3)
        if 200 <= status < 300:
            self.ok += 1
            self.ok_latencies.append(latency_s * 1e3)
        else:
            self.error(f"http {status}")

    async def exchange(self, connection: _Connection, data: bytes) -> tuple[_Connection, int, float]:
        """Send `data` and wait for the answer, at most `timeout_s` from the send.

        A request is never given up sooner: a server that falls behind then
        holds at most one abandoned request per connection per timeout, instead
        of a flood of requests sent only to be dropped at once.

        Returns:
            The connection to use next (a new one after a failure), the status
            (0 for a timeout, which is recorded, or a lost connection) and when
            the exchange ended.
        """
        self.sent += 1
        try:
            status = await asyncio.wait_for(connection.request(data), self.spec.timeout_s)
        except TimeoutError:
            self.timed_out()
            connection.close()
            return await _connect(self.spec.port), 0, time.perf_counter()
        except ConnectionError:
            self.error("connection")
            return await _connect(self.spec.port), 0, time.perf_counter()
        done = time.perf_counter()
        if connection.closed:
            connection = await _connect(self.spec.port)
        return connection, status, done


async def _closed_client(run: _Run, connection: _Connection, end: float) -> None:
    while time.perf_counter() < end:
        sent = time.perf_counter()
        connection, status, done = await run.exchange(connection, run.take())
        if status:
            run.answered(status, done - sent)
    connection.close()


async def _open_client(run: _Run, connection: _Connection, start: float, total: int) -> None:
    spec = run.spec
    while run.next < total:
        due = start + run.next / spec.rate
        data = run.take()
        now = time.perf_counter()
        if due > now:
            await asyncio.sleep(due - now)
            now = time.perf_counter()
        run.lags.append((now - due) * 1e3)
        if now - due >= spec.timeout_s:  # no connection was free in time: it is late whatever the server does
            run.timed_out()
            continue
        connection, status, done = await run.exchange(connection, data)
        if not status:
            continue
        if done - due > spec.timeout_s:  # answered, but later than the timeout after its due time
            run.timed_out()
        else:
            run.answered(status, done - due)
    connection.close()


async def run_load(spec: LoadSpec) -> LoadResult:
    """Run one phase in this process's event loop."""
    if spec.mode == "open" and spec.rate <= 0:
        raise ValueError("an open-loop phase needs a rate")
    run = _Run(spec)
    cpu = time.process_time()
    connections = await asyncio.gather(*(_connect(spec.port) for _ in range(spec.connections)))
    start = time.perf_counter()
    if spec.mode == "closed":
        end = start + spec.duration_s
        await asyncio.gather(*(_closed_client(run, c, end) for c in connections))
    else:
        total = max(1, round(spec.rate * spec.duration_s))
        await asyncio.gather(*(_open_client(run, c, start, total) for c in connections))
    wall = time.perf_counter() - start
    ordered = sorted(run.latencies)
    lags = sorted(run.lags)
    return LoadResult(
        spec=spec,
        taken=run.next,
        sent=run.sent,
        ok=run.ok,
        errors=run.errors,
        wall_s=wall,
        p50_ms=_percentile(ordered, 0.50),
        p95_ms=_percentile(ordered, 0.95),
        p99_ms=_percentile(ordered, 0.99),
        p999_ms=_percentile(ordered, 0.999),
        max_ms=ordered[-1] if ordered else math.nan,
        ok_p99_ms=_percentile(sorted(run.ok_latencies), 0.99) if run.ok_latencies else math.nan,
        send_lag_p99_ms=_percentile(lags, 0.99) if lags else 0.0,
        cpu_s=time.process_time() - cpu,
    )


def _event_loop_policy() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _to_json(result: LoadResult) -> str:
    # json writes inf and nan as Infinity and NaN, and reads them back.
    return json.dumps(asdict(result))


def _from_json(text: str) -> LoadResult:
    raw = json.loads(text)
    return LoadResult(**{**raw, "spec": LoadSpec(**raw["spec"])})


def run_in_process(spec: LoadSpec, cwd: Path | None = None) -> LoadResult:
    """Run one phase in a fresh `python -m bench.loadgen` process and return its result."""
    completed = subprocess.run(
        [sys.executable, "-m", "bench.loadgen"],
        input=json.dumps(asdict(spec)),
        capture_output=True,
        text=True,
        cwd=cwd or Path(__file__).resolve().parent.parent,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"load generator failed ({completed.returncode}): {completed.stderr[-2000:]}")
    return _from_json(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    spec = LoadSpec(**json.loads(sys.stdin.read()))
    _event_loop_policy()
    print(_to_json(asyncio.run(run_load(spec))), flush=True)


if __name__ == "__main__":
    main()
