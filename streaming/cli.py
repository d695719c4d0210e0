"""`python -m streaming consume | produce | replay | push | broker`: the streaming side's processes.

Every command reads the settings (`FRAUDPIPE_*`, `settings/`): the bus, the
online store and the consumer's knobs are set there, once, for every process.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from feature_repo.windows import FEATURE_GROUPS
from settings import Settings, load_settings_or_exit
from settings.logs import configure_logging

if TYPE_CHECKING:  # the commands import them: `--help` and a bad setting need no Kafka, pandas or FastAPI
    from streaming.bus import EventBus
    from streaming.config import StreamConfig
    from streaming.consumer import ConsumerSettings, Totals

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
log = logging.getLogger("streaming")

Predictions = Annotated[
    bool,
    typer.Option(
        "--predictions/--no-predictions",
        help="Land serving's prediction log (the predictions topic) too; it never feeds the features.",
    ),
]
REPLAY_LOOKBACK = timedelta(days=max(group.horizon_days for group in FEATURE_GROUPS))
"""How far before a replay's first day the online features need events."""
START_A_BROKER = "start one with `make broker` or `make consume`"


def _fail(message: str, code: int = 1) -> NoReturn:
    """End the command with `message` on stderr (red on a terminal), no traceback."""
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _settings_and_stream(**changes: Any) -> tuple[Settings, StreamConfig]:
    """The settings and the profile's stream configuration; a bad setting ends the command, saying why."""
    from streaming.config import StreamConfig

    settings = load_settings_or_exit()
    return settings, StreamConfig.from_settings(settings, **changes)


def stream_config(**changes: Any) -> StreamConfig:
    """The profile's stream configuration; a bad setting ends the command with its message."""
    return _settings_and_stream(**changes)[1]


def _local_broker_down(stream: StreamConfig) -> str | None:
    """Why the local profile's broker is not running (None: it runs, or the bus is not the local one)."""
    file = stream.local_broker_file
    if file is None:
        return None
    try:
        pid = int(json.loads(file.read_text())["pid"])
    except FileNotFoundError:
        return f"{file} is missing"
    except (OSError, ValueError, KeyError, TypeError):
        return f"{file} is unreadable"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"{file} names process {pid}, which has exited"
    except PermissionError:  # alive, another user's
        return None
    return None


def _broker_alive(stream: StreamConfig) -> bool:
    return stream.local_broker_file is not None and _local_broker_down(stream) is None


def _bus(stream: StreamConfig) -> EventBus:
    """The bus of a command that does not host the local broker: where that broker is not running,
    the command ends in one line saying so (librdkafka would retry a dead address for 15 s, then raise)."""
    down = _local_broker_down(stream)
    if down is not None:
        _fail(f"no local Kafka broker is running ({down}): {START_A_BROKER}")
    return stream.bus()


def _bus_with_topics(stream: StreamConfig) -> EventBus:
    """`_bus`, its topics created: the first contact, where a bus that does not answer ends the command."""
    bus = _bus(stream)
    try:
        bus.ensure_topics(stream.topics().names())
    except Exception as err:  # Kafka's or Redis's own error; its text names the server, never the URL
        _fail(f"the bus does not answer ({type(err).__name__}: {err}): is it running? (FRAUDPIPE_BUS_URL)")
    return bus


@contextmanager
def _local_broker(stream: StreamConfig) -> Iterator[None]:
    """Host the local profile's mock Kafka cluster in this process unless another process does."""
    if stream.local_broker_file is None or _broker_alive(stream):
        yield
        return
    from streaming.bus_kafka import mock_kafka_cluster

    with mock_kafka_cluster() as servers:
        stream.publish_local_broker(servers)
        log.info("hosting the local Kafka broker at %s (its data lives as long as this process)", servers)
        try:
            yield
        finally:
            stream.local_broker_file.unlink(missing_ok=True)


def _stop_on_signals() -> threading.Event:
    """SIGTERM and Ctrl-C finish the current batch and commit it, then exit."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _progress_logger(every_s: float = 5.0) -> Callable[[str, Totals], None]:
    """Log events/s and totals every `every_s` seconds, so a long consume shows it is alive."""
    state = {"last": time.monotonic(), "events": 0.0}

    def on_batch(table: str, batch: Totals) -> None:
        state["events"] += batch.messages
        now = time.monotonic()
        if now - state["last"] >= every_s:
            rate = state["events"] / (now - state["last"])
            log.info(
                "%.0f events/s; last %s batch: %d landed, %d already landed, %d dead letters, up to %s",
                rate,
                table,
                batch.landed,
                batch.duplicates,
                batch.dead_letters,
                batch.watermark,
            )
            state.update(last=now, events=0.0)

    return on_batch


def _run(
    stream: StreamConfig,
    bus: EventBus,
    settings: ConsumerSettings,
    idle_exit: float | None,
    clear: bool,
    predictions: bool,
) -> None:
    from streaming.consumer import EVENT_KINDS, LANDED_KINDS, StreamConsumer

    online = stream.online()
    kinds = LANDED_KINDS if predictions else EVENT_KINDS
    with StreamConsumer(bus, stream.topics(), stream.landing(), online, settings, kinds=kinds) as consumer:
        if clear:  # only now that the bus answered: a failed start must not leave the store empty
            online.clear()
        if stream.metrics_port:
            consumer.metrics.serve(stream.metrics_port)
            log.info("metrics on http://127.0.0.1:%d/metrics", stream.metrics_port)
        totals = consumer.run(_stop_on_signals(), idle_exit, on_batch=_progress_logger())
    for table, total in totals.items():
        typer.echo(
            f"{table}: {total.messages} read, {total.landed} landed, {total.duplicates} already landed, "
            f"{total.dead_letters} dead letters, {total.skipped} outside the window, lag {total.lag}"
        )


@app.command()
def consume(
    name: str = typer.Option("consumer-0", help="This member of the consumer group."),
    idle_exit: float | None = typer.Option(
        None, help="Exit once the group has committed everything and nothing came for this many seconds."
    ),
    predictions: Predictions = True,
) -> None:
    """Land events and serving's predictions from the bus, keep the online features fresh, until stopped."""
    from streaming.consumer import ConsumerSettings

    stream = stream_config()
    settings = ConsumerSettings(group=stream.group, name=name, batch_size=stream.batch_size)
    with _local_broker(stream):
        _run(stream, stream.bus(), settings, idle_exit, clear=False, predictions=predictions)


def _day(text: str) -> datetime:
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a day like 2018-04-01") from None


@app.command()
def replay(
    start: str = typer.Option(..., "--from", help="First day to re-land (YYYY-MM-DD)."),
    end: str = typer.Option(..., "--to", help="Last day to re-land, included."),
    rebuild_online: bool = typer.Option(
        True,
        help="Empty the online store first and rebuild it from the bus (stop the live consumer, "
        "or point FRAUDPIPE_STREAM__ONLINE_PREFIX at a fresh store and switch serving to it).",
    ),
    idle_exit: float = typer.Option(5.0, help="Seconds without a message, once caught up, before exiting."),
    predictions: Predictions = True,
) -> None:
    """Re-land a period from the bus and rebuild the online features; idempotent.

    A consumer group of its own reads the bus from its start: events and
    predictions of [FROM, TO] are landed again (ids already landed are
    skipped), and the online store gets every event from the features'
    horizon before FROM on,
    so reads from the store's floor (its latest event less a day) are exact.
    The bus must still hold that span. It exits once the bus is read to its
    end; under continuous traffic it follows the live events until stopped.
    """
    first, last = _day(start), _day(end)
    if last < first:
        raise typer.BadParameter(f"--to {end} is before --from {start}")
    from streaming.consumer import ConsumerSettings, TimeWindow

    stream = stream_config()
    bus = _bus(stream)
    settings = ConsumerSettings(
        group=f"{stream.group}-replay-{uuid.uuid4().hex[:8]}",
        name=f"replay-{start}-{end}",
        batch_size=stream.batch_size,
        land_window=TimeWindow(first, last + timedelta(days=1)),
        online_window=TimeWindow(first - REPLAY_LOOKBACK),
        live=False,
    )
    _run(
        replace(stream, metrics_port=0),
        bus,
        settings,
        idle_exit,
        clear=rebuild_online,
        predictions=predictions,
    )


@app.command()
def produce(
    source: Annotated[
        Path | None,
        typer.Option(help="Simulated data (python -m simulator generate); default: the profile's source."),
    ] = None,
    start: str | None = typer.Option(None, "--from", help="First day to send (YYYY-MM-DD); default: all."),
    end: str | None = typer.Option(None, "--to", help="Last day to send, included."),
    rate: float = typer.Option(0.0, help="Events per second; 0 sends as fast as the bus takes them."),
) -> None:
    """Send simulated transactions and fraud reports to the bus, in event-time order."""
    first = _day(start) if start else None
    after = _day(end) + timedelta(days=1) if end else None
    settings, stream = _settings_and_stream()
    bus = _bus_with_topics(stream)  # before reading the data: a missing bus says so at once
    from simulator import read_dataset
    from streaming.traffic import in_window, send_events

    data = read_dataset(source or settings.source_path)
    transactions = in_window(data.events(), "TX_DATETIME", first, after)
    reports = in_window(data.fraud_reports, "REPORT_DATETIME", first, after)
    sent = send_events(bus.producer(), stream.topics(), transactions, reports, rate=rate, progress=True)
    typer.echo(f"sent {sent} events ({len(transactions)} transactions, {len(reports)} fraud reports)")


@app.command()
def push(
    host: str = typer.Option("127.0.0.1", help="Interface to bind; loopback unless exposed on purpose."),
) -> None:
    """Serve the HTTP push endpoint (port: FRAUDPIPE_STREAM__PUSH_PORT): apps POST events to the bus."""
    settings, stream = _settings_and_stream()
    bus = _bus_with_topics(stream)
    from streaming.http_push import create_app, serve

    try:
        api_keys = settings.auth.keys()
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    serve(create_app(bus, stream.topics(), api_keys=api_keys), host=host, port=settings.stream.push_port)


@app.command()
def broker() -> None:
    """Host the local profile's Kafka broker (librdkafka's mock cluster) until stopped."""
    stream = stream_config()
    if stream.local_broker_file is None:
        raise typer.BadParameter("the bus (FRAUDPIPE_BUS_URL) is not the local broker")
    if _broker_alive(stream):
        typer.echo(f"a local broker already runs at {stream.local_broker_address()}")
        return
    stop = _stop_on_signals()
    with _local_broker(stream):
        typer.echo(f"local broker at {stream.local_broker_address()}; Ctrl-C stops it")
        stop.wait()


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at DEBUG.")) -> None:
    configure_logging(logging.DEBUG if verbose else logging.INFO, "%(asctime)s %(levelname)s %(message)s")
