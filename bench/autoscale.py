"""Benchmark: autoscaling shown, not only configured: a ramp from idle to twice one replica's saturation.

Claims, for our deployment (`serving.app:app`, its Serve config rendered by
`serving.deploy.serve_config` from the settings) autoscaled between 1 and 2
replicas with the settings' `target_ongoing_requests`: during the ramp a
second replica is added, after the load it is removed, no request is lost
(an admission 503 with `Retry-After` is an answer, not a loss; a timeout, a
broken connection or any other status is), and once two replicas run the
accepted requests' p99 is within the 100 ms budget of `bench.serve`'s
overload target.

One run, one Ray instance (`bench.serve.Server`, the local profile with
autoscaling switched on by its settings, short delays so that the whole
story fits in two minutes; the local Kafka broker beside it, as in
`bench.serve`, takes the prediction records):

1. one replica's saturation: `max_replicas` 1, a closed loop of as many
   clients as a replica admits at once (`runtime.max_in_flight`), a few seconds;
2. `max_replicas` 2 applied in place (Serve's REST API, as `serving.deploy`
   applies a config), once the saturation's in-flight counts have left the
   autoscaler's look-back window;
3. an open loop (latency from each request's due time, as `bench.loadgen`):
   a trickle, a linear ramp to twice the saturation, a hold, the trickle again.
   Meanwhile Serve's REST API is asked for the replicas every 0.5 s and the
   machine's CPU time is read.

Requests are attributed to windows by their due time; the windows are cut
where the replica count changed.

    python -m bench.autoscale [--quick] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.common import Stages, dataset_parser, markdown_table, quiet_warnings
from bench.loadgen import (
    LoadSpec,
    Mode,
    _connect,
    _Connection,
    _event_loop_policy,
    _percentile,
    _Run,
    run_in_process,
)
from bench.ports import free_port
from bench.results import write_result
from bench.serve import (
    BY_KEY,
    SERVE_SIZE,
    Server,
    _cpu_seconds,
    prediction_bus,
    prepare,
)

ROOT = Path(__file__).resolve().parent.parent
MODULE = "bench.autoscale"

BUDGET_MS = 100.0
"""Accepted p99 once the second replica runs: `bench.serve`'s overload target (docs/scaling.md)."""
PEAK_FACTOR = 2.0
"""The ramp's top, as a multiple of one replica's measured saturation."""
MIN_REPLICAS, MAX_REPLICAS = 1, 2
SAMPLE_S = 0.5
CONNECTIONS = 64
TIMEOUT_S = 5.0
ON_TIME, LATE, UNSENT, NO_ANSWER = "on time", "late", "unsent", "no answer"
"""A request's outcome: answered within the timeout of its due time; answered, but later (lost);
never sent, no connection having come free within the timeout (lost); or no answer within the
timeout of its send, or a broken connection (lost)."""


@dataclass(frozen=True)
class Plan:
    """How long each part of the run lasts, and the autoscaler's delays for it."""

    saturation_s: float
    idle_s: float
    ramp_s: float
    hold_s: float
    cool_s: float
    upscale_delay_s: int
    downscale_delay_s: int
    look_back_s: float
    metrics_interval_s: float
    bucket_s: float
    trickle_share: float = 0.05  # of one replica's saturation, during "idle": each window has answers


FULL = Plan(
    saturation_s=5.0,
    idle_s=10.0,
    ramp_s=20.0,
    hold_s=30.0,
    cool_s=40.0,
    upscale_delay_s=2,
    downscale_delay_s=15,
    look_back_s=5.0,
    metrics_interval_s=1.0,
    bucket_s=5.0,
)
QUICK = Plan(
    saturation_s=2.0,
    idle_s=2.0,
    ramp_s=4.0,
    hold_s=8.0,
    cool_s=10.0,
    upscale_delay_s=1,
    downscale_delay_s=3,
    look_back_s=2.0,
    metrics_interval_s=0.5,
    bucket_s=2.0,
)


@dataclass(frozen=True)
class Ramp:
    """The open loop's rate: `trickle` for `idle_s`, linear to `peak` over `ramp_s`, `peak` for `hold_s`,
    `trickle` for `cool_s`; times in s from the load's start."""

    trickle: float
    peak: float
    idle_s: float
    ramp_s: float
    hold_s: float
    cool_s: float

    @property
    def ramp_start(self) -> float:
        return self.idle_s

    @property
    def hold_end(self) -> float:
        return self.idle_s + self.ramp_s + self.hold_s

    @property
    def end(self) -> float:
        return self.hold_end + self.cool_s

    def rate(self, t: float) -> float:
        if t < self.idle_s or t >= self.hold_end:
            return self.trickle
        if t < self.idle_s + self.ramp_s:
            return self.trickle + (self.peak - self.trickle) * (t - self.idle_s) / self.ramp_s
        return self.peak

    def dues(self) -> list[float]:
        """Each request's due time: the n-th where the rate's integral reaches n (exact per segment)."""
        segments = [
            (0.0, self.idle_s, self.trickle, self.trickle),
            (self.idle_s, self.ramp_s, self.trickle, self.peak),
            (self.idle_s + self.ramp_s, self.hold_s, self.peak, self.peak),
            (self.hold_end, self.cool_s, self.trickle, self.trickle),
        ]
        dues: list[float] = []
        done = 0.0  # the rate's integral over the segments before
        for start, length, a, b in segments:
            if length <= 0:
                continue
            slope = (b - a) / length
            total = a * length + slope * length**2 / 2
            k = math.ceil(done - 1e-9)  # request k is due where the integral reaches k
            while k - done < total - 1e-9:
                n = k - done
                # a*t + slope*t^2/2 = n, for t in [0, length)
                dues.append(start + (n / a if slope == 0 else (math.sqrt(a * a + 2 * slope * n) - a) / slope))
                k += 1
            done += total
        return dues


# ---------------------------------------------------------------------------------------------------
# The load: a child process, as bench.loadgen's, with a due time per request and each outcome kept.


class _Timeline(_Run):
    """`bench.loadgen`'s phase state with each request's due time, outcome and latency kept."""

    def __init__(self, spec: LoadSpec, dues: list[float]) -> None:
        super().__init__(spec)
        self.dues = dues
        self.due_s: list[float] = []
        self.outcome: list[str] = []
        self.status: list[int] = []
        self.latency_ms: list[float] = []

    def mark(self, due_s: float, outcome: str, status: int = 0, latency_s: float = math.inf) -> None:
        self.due_s.append(due_s)
        self.outcome.append(outcome)
        self.status.append(status)
        self.latency_ms.append(latency_s * 1e3)


async def _ramp_client(run: _Timeline, connection: _Connection, start: float) -> None:
    """As `bench.loadgen`'s open-loop client, with due times from the ramp instead of a fixed rate."""
    timeout = run.spec.timeout_s
    while run.next < len(run.dues):
        due = start + run.dues[run.next]
        data = run.take()
        now = time.perf_counter()
        if due > now:
            await asyncio.sleep(due - now)
            now = time.perf_counter()
        run.lags.append((now - due) * 1e3)
        if now - due >= timeout:  # no connection was free in time
            run.timed_out()
            run.mark(due - start, UNSENT)
            continue
        connection, status, done = await run.exchange(connection, data)
        if not status:  # exchange counted it: a timeout after the send, or a broken connection
            run.mark(due - start, NO_ANSWER)
        elif done - due > timeout:
            run.timed_out()
            run.mark(due - start, LATE, status, done - due)
        else:
            run.answered(status, done - due)
            run.mark(due - start, ON_TIME, status, done - due)
    connection.close()


async def _run_ramp(spec: LoadSpec, ramp: Ramp) -> dict[str, Any]:
    run = _Timeline(spec, ramp.dues())
    cpu = time.process_time()
    connections = await asyncio.gather(*(_connect(spec.port) for _ in range(spec.connections)))
    start = time.perf_counter()
    await asyncio.gather(*(_ramp_client(run, c, start) for c in connections))
    order = sorted(range(len(run.due_s)), key=run.due_s.__getitem__)
    return {
        "start": start,
        "wall_s": time.perf_counter() - start,
        "cpu_s": time.process_time() - cpu,
        "taken": run.next,
        "errors": run.errors,
        "send_lag_p99_ms": _percentile(sorted(run.lags), 0.99) if run.lags else 0.0,
        "due_s": [run.due_s[i] for i in order],
        "outcome": [run.outcome[i] for i in order],
        "status": [run.status[i] for i in order],
        # json writes inf as Infinity and reads it back
        "latency_ms": [run.latency_ms[i] for i in order],
    }


def load_child() -> None:
    """`python -m bench.autoscale load`: a `LoadSpec`, a `Ramp` and a file as JSON on stdin; the
    timeline goes to the file (megabytes of JSON: a file, not a pipe)."""
    raw = json.loads(sys.stdin.read())
    _event_loop_policy()
    result = asyncio.run(_run_ramp(LoadSpec(**raw["spec"]), Ramp(**raw["ramp"])))
    Path(raw["out"]).write_text(json.dumps(result))


@dataclass
class Timeline:
    """What the load child measured: per request (in due order), the due time (s from `start`, a
    `time.perf_counter()` of this machine), the outcome (`ON_TIME`...), the status (0: none) and
    the latency from the due time (inf: none)."""

    start: float
    wall_s: float
    cpu_s: float
    errors: dict[str, int]
    send_lag_p99_ms: float
    due_s: list[float]
    outcome: list[str]
    status: list[int]
    latency_ms: list[float]


def run_ramp(spec: LoadSpec, ramp: Ramp, out: Path) -> Timeline:
    """Run the ramp in a `python -m bench.autoscale load` process; its timeline lands in `out`."""
    completed = subprocess.run(
        [sys.executable, "-m", MODULE, "load"],
        input=json.dumps({"spec": asdict(spec), "ramp": asdict(ramp), "out": str(out)}),
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if completed.returncode != 0 or not out.exists():
        raise RuntimeError(f"load generator failed ({completed.returncode}): {completed.stderr[-2000:]}")
    raw = json.loads(out.read_text())
    raw.pop("taken")
    return Timeline(**raw)


# ---------------------------------------------------------------------------------------------------
# The replicas, as Serve's controller reports them, and the machine's CPU.


@dataclass(frozen=True)
class Sample:
    t: float  # time.perf_counter()
    target: int  # Serve's target_num_replicas: the autoscaler's decision
    running: int  # replicas RUNNING
    states: str  # every replica's state, e.g. "RUNNING, STARTING"
    busy_s: float  # the machine's busy CPU seconds so far
    server_s: float  # the server's processes' CPU seconds so far


class Sampler:
    """Asks Serve's REST API for the deployment's replicas every `SAMPLE_S`, in a thread."""

    def __init__(self, api: Any, server_pid: int) -> None:
        self.api = api
        self.server_pid = server_pid
        self.samples: list[Sample] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> Sample | None:
        from serving.deploy import DEPLOYMENT

        try:
            app = self.api.status()
        except Exception:  # a slow or failed answer is a missing sample, counted
            self.failures += 1
            return None
        now = time.perf_counter()
        busy, server = _cpu_seconds(self.server_pid)
        deployment = (app or {}).get("deployments", {}).get(DEPLOYMENT, {})
        states = [str(r.get("state")) for r in deployment.get("replicas", [])]
        return Sample(
            now,
            int(deployment.get("target_num_replicas", 0)),
            states.count("RUNNING"),
            ", ".join(sorted(states)),
            busy,
            server,
        )

    def _loop(self) -> None:
        next_at = time.perf_counter()
        while not self._stop.is_set():
            sample = self.sample()
            if sample is not None:
                self.samples.append(sample)
            next_at = max(next_at + SAMPLE_S, time.perf_counter())
            self._stop.wait(next_at - time.perf_counter())

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


# ---------------------------------------------------------------------------------------------------
# Reading the run: events, windows, checks.


@dataclass(frozen=True)
class Events:
    """When the replica count changed, in s from the load's start (None: it did not)."""

    up_decided: float | None = None
    up_running: float | None = None
    down_decided: float | None = None
    down_done: float | None = None
    before_ramp: bool = False  # a second replica was wanted before the ramp began


def events(samples: Sequence[Sample], start: float, ramp: Ramp) -> Events:
    found: dict[str, float | None] = dict.fromkeys(("up_decided", "up_running", "down_decided", "down_done"))
    before = False
    for s in samples:
        t = s.t - start
        if t < ramp.ramp_start:
            before = before or s.target >= MAX_REPLICAS or s.running >= MAX_REPLICAS
            continue
        if found["up_decided"] is None and s.target >= MAX_REPLICAS:
            found["up_decided"] = t
        if found["up_running"] is None and s.running >= MAX_REPLICAS:
            found["up_running"] = t
        if found["up_running"] is not None and found["down_decided"] is None and s.target <= MIN_REPLICAS:
            found["down_decided"] = t
        if found["down_decided"] is not None and found["down_done"] is None and s.running <= MIN_REPLICAS:
            found["down_done"] = t
    return Events(**found, before_ramp=before)


@dataclass(frozen=True)
class Window:
    name: str
    begin: float  # s from the load's start
    end: float
    loaded: bool = False  # within the ramp or the hold
    replicas: int = 1  # running, by the scale-up and scale-down seen


def windows(found: Events, ramp: Ramp) -> list[Window]:
    """The run cut where the load changed (ramp start, hold end) and where the replicas did."""
    up, down = found.up_running, found.down_done
    two_from, two_until = (
        (up, down if down is not None else ramp.end) if up is not None else (ramp.end, ramp.end)
    )
    cuts = sorted({0.0, ramp.ramp_start, ramp.hold_end, ramp.end, two_from, two_until})
    out = []
    for begin, end in itertools.pairwise(cuts):
        if end <= begin or begin >= ramp.end:
            continue
        loaded = ramp.ramp_start <= begin < ramp.hold_end
        replicas = 2 if two_from <= begin < two_until else 1
        if begin < ramp.ramp_start:
            name = "idle (trickle)"
        elif loaded:
            name = "ramp and hold, " + ("after the scale-up" if replicas == 2 else "before the scale-up")
        else:
            name = "after the load" + (", after the scale-down" if down is not None and begin >= down else "")
        out.append(Window(name, begin, end, loaded, replicas))
    return out


@dataclass(frozen=True)
class WindowStats:
    window: Window
    offered: int
    ok: int  # 200 within the timeout
    refused: int  # 503 within the timeout: admission, an answer
    late: int  # answered (any status) after the timeout: lost
    unsent: int  # no connection free within the timeout: lost
    other: int  # no answer, a broken connection, or another status: lost
    answered: int  # answers (any status, late ones too) that arrived within the window: the server's pace
    p50_ms: float  # of the 200s within the timeout
    p99_ms: float
    in_flight: float  # requests between due time and answer, on average (Little's law)
    replicas: str  # running replicas seen (min-max)
    server_cores: float
    busy_cores: float

    @property
    def seconds(self) -> float:
        return self.window.end - self.window.begin

    @property
    def lost(self) -> int:
        return self.late + self.unsent + self.other

    def per_s(self, count: int) -> str:
        return _num(count / self.seconds)


def _between(samples: Sequence[Sample], start: float, window: Window) -> list[Sample]:
    return [s for s in samples if window.begin <= s.t - start < window.end]


def _cores(samples: Sequence[Sample], field_name: str) -> float:
    """CPU seconds per second between the samples; a step where a process exited (its CPU time
    leaves the sum: a replica stopped) counts as nothing rather than as negative."""
    if len(samples) < 2:
        return math.nan
    used = sum(
        max(0.0, getattr(b, field_name) - getattr(a, field_name)) for a, b in itertools.pairwise(samples)
    )
    return used / (samples[-1].t - samples[0].t)


def window_stats(timeline: Timeline, samples: Sequence[Sample], window: Window) -> WindowStats:
    ok_latencies: list[float] = []
    waited_s = 0.0
    counts = dict.fromkeys(("refused", "late", "unsent", "other"), 0)
    offered = answered = 0
    for due, outcome, status, latency in zip(
        timeline.due_s, timeline.outcome, timeline.status, timeline.latency_ms, strict=True
    ):
        if status and window.begin <= due + latency / 1e3 < window.end:
            answered += 1
        if not window.begin <= due < window.end:
            continue
        offered += 1
        waited_s += latency / 1e3 if math.isfinite(latency) else TIMEOUT_S
        if outcome == ON_TIME and status == 200:
            ok_latencies.append(latency)
        elif outcome == ON_TIME and status == 503:
            counts["refused"] += 1
        elif outcome in (LATE, UNSENT):
            counts["late" if outcome == LATE else "unsent"] += 1
        else:
            counts["other"] += 1
    ok_latencies.sort()
    seen = _between(samples, timeline.start, window)
    running = sorted({s.running for s in seen})
    return WindowStats(
        window,
        offered,
        len(ok_latencies),
        **counts,
        answered=answered,
        p50_ms=_percentile(ok_latencies, 0.50),
        p99_ms=_percentile(ok_latencies, 0.99),
        in_flight=waited_s / (window.end - window.begin),
        replicas="-" if not running else "-".join(str(r) for r in sorted({running[0], running[-1]})),
        server_cores=_cores(seen, "server_s"),
        busy_cores=_cores(seen, "busy_s"),
    )


def _ms(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def _num(value: float, digits: int = 0) -> str:
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"


LOSS_HEADERS = ["lost: late", "lost: unsent", "lost: other"]


def window_table(stats: Sequence[WindowStats]) -> str:
    rows = [
        [
            s.window.name,
            f"{s.window.begin:.1f}-{s.window.end:.1f}",
            s.replicas,
            s.per_s(s.offered),
            s.per_s(s.ok),
            s.per_s(s.refused),
            s.per_s(s.answered),
            f"{s.late:,}",
            f"{s.unsent:,}",
            f"{s.other:,}",
            _ms(s.p50_ms),
            _ms(s.p99_ms),
            _num(s.in_flight, 1),
            _num(s.server_cores, 2),
            _num(s.busy_cores, 2),
        ]
        for s in stats
    ]
    headers = [
        "window",
        "s from start",
        "replicas",
        "offered req/s",
        "200/s",
        "503/s",
        "answered/s",
        *LOSS_HEADERS,
        "p50 ms (200)",
        "p99 ms (200)",
        "in flight",
        "server cores",
        "busy cores",
    ]
    return markdown_table(headers, rows, text_columns=3)


def timeline_table(timeline: Timeline, samples: Sequence[Sample], ramp: Ramp, bucket_s: float) -> str:
    """The run in buckets of `bucket_s`: what was offered and answered, and the replicas at the end."""
    rows = []
    begin = 0.0
    while begin < ramp.end - 1e-9:
        end = min(begin + bucket_s, ramp.end)
        stats = window_stats(timeline, samples, Window("", begin, end))
        last = [s for s in samples if s.t - timeline.start <= end]
        rows.append(
            [
                f"{begin:.1f}-{end:.1f}",
                stats.per_s(stats.offered),
                stats.per_s(stats.ok),
                stats.per_s(stats.refused),
                f"{stats.late:,}",
                f"{stats.unsent:,}",
                f"{stats.other:,}",
                _ms(stats.p99_ms),
                _num(stats.in_flight, 1),
                str(last[-1].target) if last else "-",
                last[-1].states if last else "-",
            ]
        )
        begin = end
    headers = [
        "s from start",
        "offered req/s",
        "200/s",
        "503/s",
        *LOSS_HEADERS,
        "p99 ms (200)",
        "in flight",
        "target",
        "replicas at the end",
    ]
    return markdown_table(headers, rows)


@dataclass(frozen=True)
class Check:
    passed: bool | None  # None: shown, no target
    text: str

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'MISS' if self.passed is False else '----'}  {self.text}"


def _after(t: float | None, origin: float) -> str:
    return "never" if t is None else f"+{t - origin:.1f} s"


def checks(
    found: Events, stats: Sequence[WindowStats], timeline: Timeline, ramp: Ramp, saturation: float, plan: Plan
) -> list[Check]:
    out = []
    load_s = ramp.hold_end - ramp.ramp_start
    if found.up_running is None or found.up_decided is None:
        out.append(
            Check(
                False,
                "replicas 1 -> 2 under the load: no second replica ran (decided: "
                f"{_after(found.up_decided, ramp.ramp_start)} after the ramp began)",
            )
        )
    else:
        out.append(
            Check(
                not found.before_ramp and found.up_running < ramp.hold_end,
                f"replicas 1 -> 2 under the load: decided {_after(found.up_decided, ramp.ramp_start)} after "
                f"the ramp began (offered {ramp.rate(found.up_decided):,.0f} req/s then), the second replica "
                f"running at {_after(found.up_running, ramp.ramp_start)}"
                + ("; but a second replica was wanted before the ramp" if found.before_ramp else "")
                + f" (target: running before the load ends at +{load_s:g} s; upscale_delay_s "
                f"{plan.upscale_delay_s})",
            )
        )
    if found.down_done is None:
        out.append(
            Check(
                False,
                f"replicas 2 -> 1 after the load: not within the {ramp.cool_s:.0f} s after it "
                f"(decided: {_after(found.down_decided, ramp.hold_end)})",
            )
        )
    else:
        assert found.down_decided is not None
        out.append(
            Check(
                found.down_decided >= ramp.hold_end,
                f"replicas 2 -> 1 after the load: decided {_after(found.down_decided, ramp.hold_end)} after "
                f"it ended, one replica at {_after(found.down_done, ramp.hold_end)} "
                f"(downscale_delay_s {plan.downscale_delay_s})",
            )
        )
    total = window_stats(timeline, [], Window("run", 0.0, ramp.end))
    others = Counter(
        "no answer" if outcome == NO_ANSWER else f"http {status}"
        for outcome, status in zip(timeline.outcome, timeline.status, strict=True)
        if outcome in (ON_TIME, NO_ANSWER) and status not in (200, 503)
    )
    other_kinds = ", ".join(f"{kind} {n:,}" for kind, n in sorted(others.items()))
    out.append(
        Check(
            total.lost == 0,
            f"no request lost: {total.offered:,} offered; within {TIMEOUT_S:g} s of their due time "
            f"{total.ok:,} answered 200 and {total.refused:,} refused 503 (admission, with Retry-After); "
            f"lost {total.lost:,}: {total.late:,} answered later, {total.unsent:,} never sent (no "
            f"connection free in time), {total.other:,} other{f' ({other_kinds})' if other_kinds else ''} "
            "(target: 0 lost)",
        )
    )
    after = next((s for s in stats if s.window.loaded and s.window.replicas == 2), None)
    before = next((s for s in stats if s.window.loaded and s.window.replicas == 1), None)
    before_text = f"; before it {_ms(before.p99_ms)} ms" if before else ""
    if after is None:
        out.append(Check(False, f"accepted p99 after the scale-up: no scale-up under load{before_text}"))
        return out
    out.append(
        Check(
            after.p99_ms <= BUDGET_MS,
            f"accepted p99 after the scale-up {_ms(after.p99_ms)} ms over {after.seconds:.0f} s at "
            f"{ramp.peak:,.0f} req/s offered{before_text} (target <= {BUDGET_MS:.0f} ms)",
        )
    )
    if before is not None:
        out.append(
            Check(
                None,
                f"answers per second arriving under load (any status, on time or late): 2 replicas "
                f"{after.per_s(after.answered)}, 1 replica before the scale-up "
                f"{before.per_s(before.answered)}; "
                f"200/s {after.per_s(after.ok)} vs "
                f"{before.per_s(before.ok)}; one replica's saturation {saturation:,.0f} req/s; the machine's "
                f"cores busy {_num(after.busy_cores, 2)} and {_num(before.busy_cores, 2)} of "
                f"{os.cpu_count()} (shown, no target)",
            )
        )
    return out


# ---------------------------------------------------------------------------------------------------


@dataclass
class AutoscaleBench:
    saturation: float
    ramp: Ramp
    found: Events
    stats: list[WindowStats]
    checks: list[Check]
    samples: list[Sample] = field(default_factory=list)
    report: str = ""


def _parser() -> argparse.ArgumentParser:
    parser = dataset_parser(
        (__doc__ or "").splitlines()[0],
        SERVE_SIZE,
        quick_help="the small dataset, a shorter ramp and shorter delays: a smoke run",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="keep (or reuse) the dataset, model and stores here"
    )
    parser.add_argument(
        "--haproxy",
        action="store_true",
        help="Serve's HAProxy ingress (RAY_SERVE_ENABLE_HA_PROXY=1) instead of its Python proxy",
    )
    return parser


def serving_overrides(plan: Plan, target: float, max_replicas: int) -> dict[str, Any]:
    """The settings that switch autoscaling on in the local profile, with this run's delays."""
    return {
        "autoscale": True,
        "min_replicas": MIN_REPLICAS,
        "max_replicas": max_replicas,
        "target_ongoing_requests": target,
        "upscale_delay_s": plan.upscale_delay_s,
        "downscale_delay_s": plan.downscale_delay_s,
        "autoscaling_look_back_s": plan.look_back_s,
        "autoscaling_metrics_interval_s": plan.metrics_interval_s,
    }


def _env(overrides: dict[str, Any]) -> dict[str, str]:
    return {
        f"FRAUDPIPE_SERVING__{name.upper()}": json.dumps(value) if isinstance(value, bool) else str(value)
        for name, value in overrides.items()
    }


def measure(
    data_dir: Path, requests: Any, plan: Plan, target: float, stages: Stages, haproxy: bool = False
) -> AutoscaleBench:
    """Start the app (1 replica at most), measure its saturation, allow 2, run the ramp, stop it."""
    from serving.deploy import ServeApi, serve_config
    from settings import load_settings

    dashboard = free_port()
    api: Any = None
    overrides = serving_overrides(plan, target, max_replicas=1)
    base = BY_KEY["ours-haproxy" if haproxy else "ours"]
    variant = replace(
        base,
        label=f"{base.label}, autoscaled",
        env={**base.env, **_env(overrides), "FRAUDPIPE_SERVING__RAY_DASHBOARD_PORT": str(dashboard)},
    )
    with stages.stage(f"start {variant.label}, at most 1 replica"):
        server = Server.start(variant, data_dir, requests)
    try:
        # The server's own settings (Server sets the ports), with max_replicas raised later.
        settings = load_settings(
            profile="local",
            data_dir=data_dir,
            serving={**overrides, "port": server.port, "ray_dashboard_port": dashboard},
        )
        api = ServeApi(settings)

        def spec(mode: Mode, connections: int, seconds: float, offset: int) -> LoadSpec:
            return LoadSpec(
                port=server.port,
                path="/v1/score",
                bodies=str(requests.single),
                mode=mode,
                connections=connections,
                duration_s=seconds,
                offset=offset,
                timeout_s=TIMEOUT_S,
            )

        clients = settings.serving.runtime.max_in_flight
        with stages.stage(f"one replica's saturation: {clients} clients, closed loop"):
            warm = run_in_process(spec("closed", 8, plan.saturation_s / 2, 0), ROOT)
            sat = run_in_process(spec("closed", clients, plan.saturation_s, warm.taken), ROOT)
        saturation = sat.requests_per_s
        print(
            f"[autoscale] saturation {saturation:,.0f} req/s, p99 {sat.p99_ms:,.1f} ms, errors {sat.errors}",
            flush=True,
        )
        if saturation <= 0:
            raise RuntimeError(f"one replica answered nothing at saturation: {sat.errors}")
        with stages.stage(f"max_replicas {MAX_REPLICAS}, once the saturation left the look-back window"):
            time.sleep(plan.look_back_s + 2 * plan.metrics_interval_s)
            wider = settings.model_copy(
                update={"serving": settings.serving.model_copy(update={"max_replicas": MAX_REPLICAS})}
            )
            pinned = api.running()
            if pinned is None:
                raise RuntimeError("the application runs no pinned model version")
            # The same config but the bound: Serve applies it in place, the replica stays.
            api.deploy(serve_config(wider, pinned))
        ramp = Ramp(
            trickle=max(1.0, round(plan.trickle_share * saturation)),
            peak=PEAK_FACTOR * saturation,
            idle_s=plan.idle_s,
            ramp_s=plan.ramp_s,
            hold_s=plan.hold_s,
            cool_s=plan.cool_s,
        )
        load = replace(
            spec("open", CONNECTIONS, ramp.end, warm.taken + sat.taken), rate=ramp.peak, duration_s=ramp.end
        )
        with (
            stages.stage(
                f"ramp: {ramp.trickle:,.0f}/s for {ramp.idle_s:g} s, to {ramp.peak:,.0f}/s over "
                f"{ramp.ramp_s:g} s, held {ramp.hold_s:g} s, {ramp.trickle:,.0f}/s for {ramp.cool_s:g} s"
            ),
            Sampler(api, server.process.pid) as sampler,
        ):
            timeline = run_ramp(load, ramp, data_dir / "autoscale-timeline.json")
            # The last bucket's replicas, sampled after the load's last answers.
            time.sleep(SAMPLE_S)
    finally:
        if api is not None:
            api.close()
        with stages.stage("stop"):
            server.stop()
    found = events(sampler.samples, timeline.start, ramp)
    stats = [window_stats(timeline, sampler.samples, w) for w in windows(found, ramp)]
    bench = AutoscaleBench(
        saturation, ramp, found, stats, checks(found, stats, timeline, ramp, saturation, plan)
    )
    bench.samples = sampler.samples
    bench.report = "\n".join(
        [
            window_table(stats),
            "",
            *(check.line() for check in bench.checks),
            "",
            timeline_table(timeline, sampler.samples, ramp, plan.bucket_s),
            "",
            f"server: {variant.label}",
            f"one replica's saturation: {saturation:,.0f} req/s at {clients} clients, closed loop, "
            f"{plan.saturation_s:g} s (p99 {_ms(sat.p99_ms)} ms)",
            f"autoscaling: min {MIN_REPLICAS}, max {MAX_REPLICAS}, target_ongoing_requests {target:g} "
            f"(the settings'), upscale_delay_s {plan.upscale_delay_s}, downscale_delay_s "
            f"{plan.downscale_delay_s}, look_back_period_s {plan.look_back_s:g}, metrics_interval_s "
            f"{plan.metrics_interval_s:g} (this run's)",
            f"load: open loop on {CONNECTIONS} connections, latency from each request's due time, "
            f"timeout {TIMEOUT_S:g} s; send lag p99 {timeline.send_lag_p99_ms:,.1f} ms; generator "
            f"{timeline.cpu_s / timeline.wall_s:.2f} cores; replicas sampled every {SAMPLE_S:g} s "
            f"({len(sampler.samples)} samples, {sampler.failures} unanswered)",
            "in flight: the window's summed latencies (from the due time; no answer: the timeout) / its "
            "length, Little's law",
        ]
    )
    return bench


def main(argv: list[str] | None = None) -> AutoscaleBench:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["load"]:
        load_child()
        sys.exit(0)
    args = _parser().parse_args(argv)
    if not args.quick:
        for name, default in SERVE_SIZE.items():
            if getattr(args, name) is None:
                setattr(args, name, default)
    plan = QUICK if args.quick else FULL
    quiet_warnings()
    from settings import load_settings

    target = load_settings().serving.target_ongoing_requests
    load_before = os.getloadavg()[0]
    print(f"[autoscale] {os.cpu_count()} cores, load average {load_before:.2f}", flush=True)
    stages = Stages("autoscale")
    with tempfile.TemporaryDirectory(prefix="bench-autoscale-") as tmp:
        data_dir = (args.data_dir or Path(tmp)).resolve()
        requests = prepare(data_dir, args, stages)
        try:
            with prediction_bus(data_dir):
                bench = measure(data_dir, requests, plan, target, stages, args.haproxy)
        except (TimeoutError, RuntimeError) as exc:
            log = data_dir / "ours.log"
            tail = log.read_text()[-3000:] if log.exists() else ""
            print(f"[autoscale] FAILED: {exc}\n--- {log} (tail)\n{tail}", flush=True)
            raise
    bench.report += f"\nload average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    body = (
        f"## Autoscaling from idle to {PEAK_FACTOR:g}x one replica's saturation"
        f"{', HAProxy ingress' if args.haproxy else ''}: {requests.dataset}; "
        f"{os.cpu_count()} cores, load generator on the same machine\n\n```\n{bench.report}\n```"
    )
    print(f"\n{body}\n", flush=True)
    write_result("autoscale", body, argv, args.quick, args.results)
    return bench


if __name__ == "__main__":
    main()
