"""The commands' errors say what to do, in a line or two, and Ctrl-C stops what `make` starts.

Each runs the command as a newcomer does, in a process of its own, and reads
its exit status and the first line it prints: a missing prod variable, a
local broker that is not running, a prediction log without a bus, and a
Ctrl-C through `python -m settings exec` (what `make dev` runs).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench.ports import free_port
from settings import PROJECT_ROOT

NO_DOT_ENV = pytest.mark.skipif(
    (PROJECT_ROOT / ".env").exists(), reason=".env sets variables these tests need unset"
)


def _environment(**variables: str) -> dict[str, str]:
    """This process's environment without its FRAUDPIPE_* variables, plus `variables`."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("FRAUDPIPE_")}
    return {**env, **variables}


def _run(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@NO_DOT_ENV
@pytest.mark.parametrize(
    "command",
    [
        ["-m", "demo"],
        ["-m", "serving", "run"],
        ["-m", "streaming", "produce"],
        ["-m", "monitoring", "export"],
        ["-m", "settings", "show"],
        ["-m", "settings", "exec", "--", "true"],
    ],
    ids=" ".join,
)
def test_the_prod_profile_without_its_variables_names_them_and_the_example(
    command: list[str], tmp_path: Path
) -> None:
    result = _run(command, _environment(FRAUDPIPE_PROFILE="prod", FRAUDPIPE_DATA_DIR=str(tmp_path)))

    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) <= 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    first = lines[0]
    assert "FRAUDPIPE_BUS_URL" in first and "FRAUDPIPE_DAGSTER_PG_URL" in first, first
    assert "copy .env.prod.example to .env" in first, first


def _stale_broker_file(data_dir: Path) -> Path:
    """A broker.json as a `make consume` killed with SIGKILL leaves it: its process has exited."""
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    file = data_dir / "stream" / "broker.json"
    file.parent.mkdir(parents=True)
    file.write_text(f'{{"bootstrap_servers": "127.0.0.1:{free_port()}", "pid": {exited.pid}}}')
    return file


@NO_DOT_ENV
@pytest.mark.parametrize(
    "command",
    [
        ["produce"],
        ["replay", "--from", "2018-04-01", "--to", "2018-04-02"],
        ["push"],
    ],
    ids=lambda c: c[0],
)
@pytest.mark.parametrize("broker_file", ["stale", "missing"])
def test_a_command_needing_the_local_broker_says_to_start_one(
    command: list[str], broker_file: str, tmp_path: Path
) -> None:
    if broker_file == "stale":
        _stale_broker_file(tmp_path)
    env = _environment(FRAUDPIPE_PROFILE="local", FRAUDPIPE_DATA_DIR=str(tmp_path))

    result = _run(["-m", "streaming", *command], env)

    assert result.returncode == 1, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("no local Kafka broker is running"), lines[0]
    assert "`make broker` or `make consume`" in lines[0], lines[0]


PREDICTION_LOG_WITHOUT_A_BUS = """
import logging, sys, time
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout)
from serving.metrics import ServingMetrics
from serving.prediction_log import PredictionLog
from streaming.bus_kafka import KafkaBus

class Batch:
    def __len__(self):
        return 5
    def records(self):
        return [{"transaction_id": i} for i in range(5)]

metrics = ServingMetrics()
log = PredictionLog(KafkaBus("127.0.0.1:PORT").producer, "predictions", metrics, flush_timeout_s=1.0)
end = time.monotonic() + 4
while time.monotonic() < end:
    log.submit(Batch())
    time.sleep(0.05)
log.close(timeout_s=5)
print("dropped", int(metrics.registry.get_sample_value(
    "ray_fraudpipe_serve_prediction_log_total", {"outcome": "dropped"}) or 0))
"""


def test_the_prediction_log_without_a_bus_warns_once_naming_the_command(tmp_path: Path) -> None:
    """Four seconds of answers with nothing listening: several failed flushes, one warning line
    that names the command to start a bus, and none of librdkafka's per-attempt lines."""
    script = textwrap.dedent(PREDICTION_LOG_WITHOUT_A_BUS).replace("PORT", str(free_port()))
    result = _run(["-c", script], _environment(FRAUDPIPE_DATA_DIR=str(tmp_path)))

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    warnings = [line for line in lines if line.startswith("WARNING serving.prediction_log")]
    assert len(warnings) == 1, lines
    assert "`make consume`" in warnings[0] and "records dropped" in warnings[0], warnings[0]
    assert sum("Connection refused" in line for line in lines) <= 1, lines
    assert not [line for line in lines if " streaming.kafka:" in line], lines
    assert int(lines[-1].split()[-1]) > 0, lines[-1]  # every record was dropped, and counted


SLEEPER = """
import os, sys, time
try:  # the pid inside: a SIGINT right after it is printed is still caught
    print(os.getpid(), flush=True)
    time.sleep(120)
except KeyboardInterrupt:  # Python's default SIGINT handling, as in `dg dev`
    print("interrupted", flush=True)
    sys.exit(0)
sys.exit(3)
"""


@pytest.mark.parametrize("sigint_at_start", ["default", "ignored"])
def test_settings_exec_hands_one_ctrl_c_to_the_command(sigint_at_start: str, tmp_path: Path) -> None:
    """`make dev` runs `python -m settings exec -- ... dg dev`: one SIGINT must reach the command.

    `exec` replaces the process (the command has its pid: nothing sits between), and gives the
    command SIGINT at its default even when started with it ignored, as a non-interactive shell
    starts a background job: a Python command then never installs its KeyboardInterrupt handler.
    """
    disposition = signal.SIG_DFL if sigint_at_start == "default" else signal.SIG_IGN

    def start_as_launched() -> None:
        signal.signal(signal.SIGINT, disposition)

    env = _environment(FRAUDPIPE_PROFILE="local", FRAUDPIPE_DATA_DIR=str(tmp_path))
    process = subprocess.Popen(
        [sys.executable, "-m", "settings", "exec", "--", sys.executable, "-c", SLEEPER],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=start_as_launched,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline().strip()
        assert first == str(process.pid), first  # replaced, not a child
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
        assert "interrupted" in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_settings_exec_of_an_unknown_command_says_so(tmp_path: Path) -> None:
    env = _environment(FRAUDPIPE_PROFILE="local", FRAUDPIPE_DATA_DIR=str(tmp_path))
    result = _run(["-m", "settings", "exec", "--", "no-such-command-fraudpipe"], env)
    assert result.returncode == 127
    assert result.stderr.strip() == "settings exec: no-such-command-fraudpipe: No such file or directory"
