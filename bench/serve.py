"""Benchmark: online scoring under load, our Ray Serve app beside two baselines, in one run.

Claims, for our deployment (`serving.app:app` deployed by `serving.deploy`):
saturation throughput at least 5x a naive Ray Serve deployment over the Feast
SDK and at least 1.5x a single-process FastAPI/uvicorn app doing the same work;
p50 at most 5 ms with one client; p99 at most 20 ms at 500 requests/s open
loop; `/v1/score/batch` at least 30,000 transactions/s; dynamic batching at
least 2x the same deployment unbatched at 16 concurrent clients; offered 2x and
5x its own saturation rate, goodput (answered 200 per second) at least 90 % of
saturation with the accepted requests' p99 at most 100 ms (admission control
refuses the excess at once, `settings/serving.py`).

Every server runs in its own child process (each Ray variant with its own Ray
instance) and the load comes from `bench.loadgen` processes on the same
machine. Servers run at niceness 15, the load generator at 0: Ray starts its
workers at 15 anyway, and this way the generator gets its CPU first, as a
separate client machine would, whichever server it loads. The local profile's
Kafka broker (`python -m streaming broker`, what `make broker` starts) runs
beside them, so our variants and (b) send every answer's prediction record,
as they do in production; the footer counts the records sent and dropped.

    python -m bench.serve [--quick] [--duration S] [--rates 100,300,500] [--clients 16]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import math
import os
import queue
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Literal

from bench.common import (
    Stages,
    dataset_parser,
    describe,
    markdown_table,
    quiet_warnings,
    simulator_config,
)
from bench.loadgen import LoadResult, LoadSpec, run_in_process
from bench.ports import free_port
from bench.results import write_result

ROOT = Path(__file__).resolve().parent.parent
MODULE = "bench.serve"

SERVE_SIZE = {"customers": 1_000, "terminals": 2_000, "days": 140}
"""Small enough to train in seconds; 140 days so that the handbook split's test week exists."""

FAST_MODEL = {"ops": {"fraud_model": {"config": {"n_folds": 2, "max_depth": [3], "learning_rate": [0.3]}}}}
"""The test suite's quick training config: what is served matters here, not how good it is."""

REQUEST_DAYS = 14
"""Requests are the transactions of the dataset's last days, as live traffic at its end would be."""

N_REQUESTS = 100_000
"""Distinct single-score bodies: real transactions first, then copies under fresh ids with the
amount moved by a cent per pass, so the result cache never answers a request it saw before."""

BATCH_SIZES = (100, 1_000)
SERVER_NICENESS = 15
TARGET_RATE = 500.0
RAY_EXPORT_WAIT_S = 2.5
"""Seconds after a phase before the Ray variants' counters are read: two of the agents' export periods."""
READY_TIMEOUT_S = 300.0
IDLE_CORES = 0.3
"""Below this a server counts as idle; an idle Ray instance stays under it here."""
IDLE_WINDOW_S = 0.5
DRAIN_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
MARKER = "@@bench "

OVERLOADS = (2.0, 5.0)
"""Open-loop rates, as multiples of the variant's own saturation throughput, that our variants are
offered to show they degrade gracefully: goodput >= 90 % of saturation, accepted p99 <= 100 ms."""

DISTURBED_RATE = 100.0
"""Open-loop rate of the phases run while a model swap or a retraining happens (our variants)."""
SWAP_TIMEOUT_S = 60.0

Kind = Literal["naive", "uvicorn", "ours"]
PhaseKind = Literal["one", "open", "saturation", "overload", "swap", "retraining", "batch", "unbatched"]


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    kind: Kind
    env: dict[str, str] = field(default_factory=dict)


VARIANTS = (
    Variant("naive", "(a) naive Ray Serve + Feast SDK", "naive"),
    Variant("uvicorn", "(b) FastAPI/uvicorn, 1 worker", "uvicorn"),
    Variant("ours", "(c) ours: Ray Serve", "ours"),
    Variant("ours-haproxy", "(c) ours: Ray Serve, HAProxy", "ours", {"RAY_SERVE_ENABLE_HA_PROXY": "1"}),
)
BY_KEY = {v.key: v for v in VARIANTS}


@dataclass(frozen=True)
class Settings:
    """How hard and how long each variant is loaded."""

    warmup_s: float
    duration_s: float
    rates: tuple[float, ...]
    clients: int
    open_connections: int
    batch_sizes: tuple[int, ...]
    batch_clients: int
    timeout_s: float


FULL = Settings(
    warmup_s=3.0,
    duration_s=6.0,
    rates=(100.0, 300.0, 500.0),
    clients=16,  # what one replica of ours admits at once (runtime max_in_flight): no 503 yet
    open_connections=64,
    batch_sizes=(100, 1_000),
    batch_clients=2,
    timeout_s=5.0,
)
QUICK = Settings(
    warmup_s=1.0,
    duration_s=2.0,
    rates=(100.0, 500.0),
    clients=16,
    open_connections=32,
    batch_sizes=(1_000,),
    batch_clients=2,
    timeout_s=5.0,
)


@dataclass(frozen=True)
class Phase:
    kind: PhaseKind
    clients: int
    rate: float = 0.0
    batch_size: int = 1
    factor: float = 0.0  # overload: the rate as a multiple of the variant's saturation throughput

    @property
    def label(self) -> str:
        if self.kind == "one":
            return "1 client"
        if self.kind == "open":
            return f"open loop {self.rate:,.0f}/s"
        if self.kind == "overload":
            return f"overload {self.factor:g}x saturation"
        if self.kind == "swap":
            return f"open loop {self.rate:,.0f}/s, 2 model swaps"
        if self.kind == "retraining":
            return f"open loop {self.rate:,.0f}/s, retraining beside"
        if self.kind == "batch":
            return f"batch of {self.batch_size:,}, {self.clients} clients"
        suffix = ", unbatched" if self.kind == "unbatched" else ""
        return f"{self.clients} clients{suffix}"


@dataclass
class Measurement:
    """One phase against one variant, with what the server's own metrics said meanwhile."""

    variant: Variant
    phase: Phase
    result: LoadResult
    mean_batch: float | None = None
    cache_hit_share: float | None = None
    server_cores: float = math.nan
    other_cores: float = math.nan
    note: str = ""  # what happened meanwhile (swaps, retraining), as evidence
    records: dict[str, float] = field(default_factory=dict)  # prediction records by outcome (sent, dropped)


@dataclass(frozen=True)
class Check:
    passed: bool | None  # None: not measured
    text: str

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'MISS' if self.passed is False else '----'}  {self.text}"


@dataclass
class ServeBench:
    measurements: list[Measurement]
    checks: list[Check]
    failures: dict[str, str]
    report: str


@dataclass(frozen=True)
class Requests:
    """The request bodies on disk, one JSON body a line."""

    single: Path
    batches: dict[int, Path]
    dataset: str


def prepare(data_dir: Path, args: argparse.Namespace, stages: Stages) -> Requests:
    """Simulate, run the pipeline (features, Feast, champion model), fill the online event buffers.

    A `data_dir` that already holds a trained pipeline (`--data-dir` of an
    earlier run, or a test's) is reused as it is; its online buffers are
    (re)filled, which is idempotent.
    """
    import dagster as dg

    from orchestration.profiles import build_resources
    from orchestration.runner import run_pipeline
    from settings import load_settings
    from simulator import read_dataset, simulate, write_dataset

    quiet_warnings()
    resources = build_resources(load_settings(profile="local", data_dir=data_dir))
    source = data_dir / "source"
    if (data_dir / "mlflow" / "mlflow.db").exists() and source.exists():
        dataset = f"the dataset in {data_dir}"
        with stages.stage("read the existing dataset"):
            data = read_dataset(source)
    else:
        config = simulator_config(args)
        dataset = describe(config)
        print(f"[serve] dataset: {dataset}", flush=True)
        with stages.stage("simulate"):
            data = simulate(config)
            write_dataset(data, source)
        with (
            stages.stage("pipeline: features, Feast registry, champion, deployment"),
            dg.instance_for_test() as instance,
        ):
            run_pipeline(resources, instance, FAST_MODEL, log_level="WARNING")
        with stages.stage("Feast online store, for the naive baseline alone"):
            materialize_feast(resources["feast"])
    models = resources["mlflow"]
    models.activate()
    if len(models.client().search_model_versions(f"name = '{models.model_name}'")) < 2:
        with stages.stage("a second model version, for the swap phase"):
            register_second_version(models)
    events = data.events()
    with stages.stage("online event buffers"):
        online = resources["stream"].online()
        try:
            online.clear()
            kept = events[events["TX_DATETIME"] > trimmed_before(events)]
            online.add_transactions(
                kept[["TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT"]]
            )
            online.add_reports(data.fraud_reports)
        finally:
            online.close()
    with stages.stage("request bodies"):
        return write_requests(events, data_dir / "bench", dataset)


def trimmed_before(events: Any) -> Any:
    """The time before which a running consumer's trims have dropped every event by the first request.

    A live store holds the longest feature horizon plus the grace (`EventBuffers.trim`),
    not the dataset's months: the bench reads what production would, no more.
    """
    import pandas as pd

    from feature_repo.online import DEFAULT_GRACE
    from feature_repo.windows import FEATURE_GROUPS

    first_request = events["TX_DATETIME"].max() - pd.Timedelta(days=REQUEST_DAYS)
    horizon = pd.Timedelta(days=max(group.horizon_days for group in FEATURE_GROUPS))
    return first_request - horizon - DEFAULT_GRACE


def register_second_version(mlflow: Any) -> str:
    """The deployed champion registered again: a swap to it loads a registry version like any other."""
    import pandas as pd

    from feature_repo.windows import MODEL_FEATURES
    from modeling.registry import load_model, recorded_deployment, register_model

    experiment = mlflow.activate()
    deployment = recorded_deployment(mlflow.client(), mlflow.model_name)
    if deployment is None:
        raise RuntimeError("the pipeline deployed no model")
    model = load_model(mlflow.model_name, deployment.champion)
    example = pd.DataFrame([[0.0] * len(MODEL_FEATURES)], columns=list(MODEL_FEATURES))
    return register_model(model, example, mlflow.model_name, experiment, {}, {}, {"bench": "swap"})


def _other_version(models: Any, champion: str) -> str:
    versions = models.client().search_model_versions(f"name = '{models.model_name}'")
    others = sorted((v.version for v in versions if v.version != champion), key=int)
    if not others:
        raise RuntimeError("no second model version to swap to: remove --data-dir's mlflow/ and re-run")
    return str(others[-1])


def materialize_feast(feast: Any) -> None:
    """Feast's online store with each entity's latest values: what the naive baseline (a) reads.

    The pipeline materialises nothing online (serving reads the online event buffers), so the
    bench does it for the baseline alone, views switched to online first.
    """
    import pandas as pd
    from feast import FeatureView

    from feature_repo.definitions import feast_objects

    store = feast.store()
    objects, _ = feast_objects(feast.tables())
    for view in objects:
        if isinstance(view, FeatureView):
            view.online = True
    store.apply(objects)
    latest = max(
        pd.read_parquet(path, columns=["event_timestamp"])["event_timestamp"].max()
        for path in feast.tables().values()
    )
    store.materialize(
        start_date=(latest - pd.Timedelta(days=40)).to_pydatetime(),
        end_date=(latest + pd.Timedelta(seconds=1)).to_pydatetime(),
    )


def write_requests(events: Any, out: Path, dataset: str, n: int = N_REQUESTS) -> Requests:
    """Bodies from the transactions of the last `REQUEST_DAYS` days, in time order.

    Single scores and each batch size draw from streams of their own (their
    own fresh ids, amounts a few tenths of a cent apart), so no phase meets
    a feature vector another phase left in the result cache.
    """
    import pandas as pd

    recent = events[events["TX_DATETIME"] > events["TX_DATETIME"].max() - pd.Timedelta(days=REQUEST_DAYS)]
    base = [
        (int(r.TRANSACTION_ID), int(r.CUSTOMER_ID), int(r.TERMINAL_ID), float(r.TX_AMOUNT))
        for r in recent.itertuples(index=False)
    ]
    stamps = [t.strftime("%Y-%m-%dT%H:%M:%S.%fZ") for t in recent["TX_DATETIME"]]
    id_span = int(events["TRANSACTION_ID"].max()) + 1

    def stream(number: int) -> list[dict[str, Any]]:
        bodies = []
        for i in range(n):
            cycle, j = divmod(i, len(base))
            tx, customer, terminal, amount = base[j]
            bodies.append(
                {
                    "transaction_id": tx + (number * 1_000 + cycle) * id_span,
                    "customer_id": customer,
                    "terminal_id": terminal,
                    "amount": round(amount + 0.01 * cycle + 0.003 * number, 3),
                    "timestamp": stamps[j],
                }
            )
        return bodies

    out.mkdir(parents=True, exist_ok=True)
    single = out / "score.jsonl"
    single.write_text("".join(json.dumps(b, separators=(",", ":")) + "\n" for b in stream(0)))
    batches = {}
    for number, size in enumerate(BATCH_SIZES, start=1):
        bodies = stream(number)
        path = out / f"batch_{size}.jsonl"
        path.write_text(
            "".join(
                json.dumps({"transactions": bodies[i : i + size]}, separators=(",", ":")) + "\n"
                for i in range(0, n - size + 1, size)
            )
        )
        batches[size] = path
    return Requests(single, batches, dataset)


class NaiveScoring:
    """Baseline (a): a first Ray Serve deployment over the Feast SDK, written the straightforward way.

    Default deployment settings, no batching; per request the Feast SDK reads
    the feature service from the materialised online store and the champion
    XGBoost classifier predicts on a one-row frame.
    """

    def __init__(self) -> None:
        from feature_repo.store import FeastStore
        from feature_repo.windows import FEATURE_SERVICE_NAME
        from modeling import registry
        from modeling.registry import ModelRegistry
        from settings import load_settings

        settings = load_settings()
        self.store = FeastStore.from_settings(settings).store()
        self.feature_service = self.store.get_feature_service(FEATURE_SERVICE_NAME)
        models = ModelRegistry.from_settings(settings)
        models.activate()
        version = registry.alias_version(models.client(), models.model_name, registry.CHAMPION)
        if version is None:
            raise RuntimeError("no champion in the registry")
        self.model = registry.load_model(models.model_name, version)

    async def __call__(self, request: Any) -> dict[str, Any]:
        import pandas as pd

        from feature_repo.windows import MODEL_FEATURES

        body = await request.json()
        row = {
            "CUSTOMER_ID": body["customer_id"],
            "TERMINAL_ID": body["terminal_id"],
            "TX_AMOUNT": body["amount"],
            "TX_DATETIME": pd.Timestamp(body["timestamp"]).to_pydatetime(),
        }
        values = self.store.get_online_features(features=self.feature_service, entity_rows=[row]).to_dict()
        values["TX_AMOUNT"] = [body["amount"]]
        probability = float(
            self.model.predict_proba(pd.DataFrame({n: values[n] for n in MODEL_FEATURES}))[0, 1]
        )
        return {
            "transaction_id": body["transaction_id"],
            "probability": probability,
            "fraud": probability >= 0.5,
        }


def _say(word: str) -> None:
    print(f"{MARKER}{word}", flush=True)


def _post(port: int, path: str, body: bytes, timeout_s: float = 10.0) -> tuple[int, bytes]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _wait_scoring(port: int, probe: bytes, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Until a real request is scored: a deployment can be RUNNING before its route answers."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            status, body = _post(port, "/v1/score", probe)
            if status == 200 and b"probability" in body:
                return
            last = (status, body[:200])
        except OSError as exc:
            last = exc
        time.sleep(0.5)
    raise TimeoutError(f"port {port} scored nothing in {timeout_s:.0f} s; last answer: {last}")


def _serve_uvicorn(port: int, probe: bytes) -> None:
    import uvicorn

    from modeling.registry import ModelRegistry, recorded_deployment
    from serving.api import build_api
    from serving.service import ScoringService
    from settings import load_settings

    settings = load_settings()
    service = ScoringService.from_settings(settings)
    models = ModelRegistry.from_settings(settings)
    deployment = recorded_deployment(models.client(), models.model_name)
    if deployment is None:
        raise RuntimeError("no deployment recorded in the registry")
    service.configure(settings.serving.runtime.model_copy(update={"champion_version": deployment.champion}))
    server = uvicorn.Server(
        uvicorn.Config(build_api(service), host="127.0.0.1", port=port, workers=1, log_level="warning")
    )

    def announce() -> None:
        _wait_scoring(port, probe)
        _say("ready")

    def follow_commands() -> None:
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        server.should_exit = True

    threading.Thread(target=announce, daemon=True).start()
    threading.Thread(target=follow_commands, daemon=True).start()
    server.run()
    service.close()


def _serve_ray(kind: Kind, port: int, probe: bytes) -> None:
    import ray
    from ray import serve

    from modeling.registry import ModelRegistry, recorded_deployment
    from serving.deploy import ServeApi, serve_config, start_local
    from settings import load_settings

    settings = load_settings()  # the port and the dashboard's: this run's own (Server sets them)
    start_local(settings)
    api = ServeApi(settings)
    if kind == "naive":
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(serve.deployment()(NaiveScoring).bind(), name="naive", route_prefix="/")
        applied, versions = None, ("", "")
    else:
        models = ModelRegistry.from_settings(settings)
        deployed = recorded_deployment(models.client(), models.model_name)
        if deployed is None:
            raise RuntimeError("no deployment recorded in the registry")
        applied = serve_config(settings, deployed)
        api.deploy(applied)
        versions = (deployed.champion, _other_version(models, deployed.champion))
    _wait_scoring(port, probe)
    _say("ready")
    for line in sys.stdin:
        command = line.strip()
        if command == "stop":
            break
        if applied is None:
            continue
        deployment = applied["applications"][0]["deployments"][0]
        if command == "unbatched":
            deployment["user_config"] = {**deployment["user_config"], "max_batch_size": 1}
        elif command == "swap":
            # In place (Serve's reconfigure), as the `deployment` asset moves the champion.
            current = deployment["user_config"]["champion_version"]
            target = versions[1] if current == versions[0] else versions[0]
            deployment["user_config"] = {**deployment["user_config"], "champion_version": target}
        else:
            continue
        api.deploy(applied)
        _say("ok")
    # No serve.shutdown(): its graceful drain takes tens of seconds and nothing here needs it.
    ray.shutdown()


def retrain_child(argv: Sequence[str]) -> None:
    """`python -m bench.serve retrain DATA_DIR`: fit the champion's kind of model on the training set
    over and over, on every core, until killed: a retraining run's CPU load beside the server."""
    import pandas as pd

    from modeling.train import fit_xgboost

    train = pd.read_parquet(Path(argv[0]) / "lake" / "training_set.parquet")
    _say("ready")
    while True:
        fit_xgboost(train, {"n_estimators": 100, "max_depth": 6}, n_jobs=os.cpu_count() or 1)
        _say("fitted")


def serve_child(argv: Sequence[str]) -> None:
    """`python -m bench.serve server VARIANT --port P --probe FILE`: one server, driven over stdin."""
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE} server")
    parser.add_argument("variant", choices=list(BY_KEY))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--probe", type=Path, required=True, help="a file whose first line is a request body")
    args = parser.parse_args(argv)
    quiet_warnings()
    probe = args.probe.read_bytes().splitlines()[0]
    variant = BY_KEY[args.variant]
    if variant.kind == "uvicorn":
        os.nice(SERVER_NICENESS)  # as Ray's workers: see the module docstring
        _serve_uvicorn(args.port, probe)
    else:
        _serve_ray(variant.kind, args.port, probe)


def _haproxy_env(scratch: Path) -> dict[str, str]:
    """HAProxy's files and side ports of this run only: its defaults (/tmp/haproxy-serve, 8404, 9101)
    are shared by every Serve instance on the machine, a test run's included."""
    return {
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(scratch / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(scratch / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(scratch),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(scratch / "server-state"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
    }


class Server:
    """A server child process: started, waited for, commanded, stopped with everything it started."""

    def __init__(self, variant: Variant, data_dir: Path, requests: Requests) -> None:
        self.variant = variant
        self.port = free_port()
        self.ray_metrics_port = free_port()
        self.metrics_url = (
            f"http://127.0.0.1:{self.port}/metrics"
            if variant.kind == "uvicorn"
            else f"http://127.0.0.1:{self.ray_metrics_port}/metrics"
        )
        self.log_path = data_dir / f"{variant.key}.log"
        self.log: IO[str] = self.log_path.open("w")
        env = {
            **{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
            "FRAUDPIPE_PROFILE": "local",
            "FRAUDPIPE_DATA_DIR": str(data_dir),
            "FRAUDPIPE_SERVING__PORT": str(self.port),
            "FRAUDPIPE_SERVING__RAY_DASHBOARD_PORT": str(free_port()),
            "FRAUDPIPE_SERVING__RAY_METRICS_PORT": str(self.ray_metrics_port),
            # Ray's metrics agents export every second instead of every 10: phases are a few seconds.
            "RAY_metrics_report_interval_ms": "1000",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            **variant.env,
        }
        # Short: HAProxy's admin socket path, under a hash folder Ray adds, must stay under 97 characters.
        self.scratch = Path(tempfile.mkdtemp(prefix="bsh", dir="/tmp"))
        if variant.env.get("RAY_SERVE_ENABLE_HA_PROXY") == "1":
            env.update(_haproxy_env(self.scratch))
        command = [sys.executable, "-m", MODULE, "server", variant.key, "--port", str(self.port)]
        self.process = subprocess.Popen(
            [*command, "--probe", str(requests.single)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            cwd=ROOT,
            env=env,
            start_new_session=True,  # its own process group: Ray's processes go with it on stop
        )
        self._said: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    @classmethod
    def start(cls, variant: Variant, data_dir: Path, requests: Requests) -> Server:
        """A started server that has scored a request."""
        server = cls(variant, data_dir, requests)
        try:
            server.expect("ready", READY_TIMEOUT_S)
        except BaseException:
            server.stop()
            raise
        return server

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(MARKER):
                self._said.put(line[len(MARKER) :].strip())
            else:
                self.log.write(line)
        self._said.put(None)

    def expect(self, word: str, timeout_s: float) -> None:
        try:
            said = self._said.get(timeout=timeout_s)
        except queue.Empty:
            raise TimeoutError(f"{self.variant.key}: no {word!r} in {timeout_s:.0f} s") from None
        if said != word:
            what = "exited" if said is None else f"said {said!r}"
            raise RuntimeError(f"{self.variant.key}: expected {word!r}, the server {what}")

    def command(self, command: str, timeout_s: float = 120.0) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        self.expect("ok", timeout_s)

    def stop(self) -> None:
        try:
            assert self.process.stdin is not None
            self.process.stdin.write("stop\n")
            self.process.stdin.close()
        except OSError:
            pass
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(STOP_TIMEOUT_S)
        # Whatever it left behind (Ray's agents outlive their driver), by its process group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.log.close()
        shutil.rmtree(self.scratch, ignore_errors=True)


BROKER_START_TIMEOUT_S = 60.0


@contextlib.contextmanager
def prediction_bus(data_dir: Path) -> Iterator[None]:
    """The local profile's Kafka broker for the servers' prediction logs: `python -m streaming broker`."""
    from settings import load_settings
    from streaming.config import StreamConfig

    stream = StreamConfig.from_settings(load_settings(profile="local", data_dir=data_dir))
    published = stream.local_broker_file
    assert published is not None, "the local profile's bus is its own broker"
    env = {**os.environ, "FRAUDPIPE_PROFILE": "local", "FRAUDPIPE_DATA_DIR": str(data_dir)}
    with (data_dir / "broker.log").open("w") as log:
        broker = subprocess.Popen(
            [sys.executable, "-m", "streaming", "broker"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + BROKER_START_TIMEOUT_S
            while not published.exists():
                if broker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the local Kafka broker did not start: see {data_dir / 'broker.log'}")
                time.sleep(0.2)
            yield
        finally:
            broker.terminate()
            try:
                broker.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                broker.kill()
                broker.wait()


def records_lines(measurements: Sequence[Measurement]) -> list[str]:
    """Per variant that logs: the prediction records its phases sent to the bus and dropped.

    Counted from the server's counters read around each phase: records of a phase's last
    half second are sent (every 0.5 s) after the read, and counted in no phase.
    """
    lines = []
    for variant in VARIANTS:
        counted = [m.records for m in measurements if m.variant is variant and m.records]
        if counted:
            sent = sum(r.get("sent", 0.0) for r in counted)
            dropped = sum(r.get("dropped", 0.0) for r in counted)
            lines.append(f"{variant.label}: prediction log {sent:,.0f} records sent, {dropped:,.0f} dropped")
    return lines


def _scrape(url: str) -> dict[str, float]:
    """Batch-size and cache counters summed over every replica the endpoint exports (empty if none).

    The Ray variants' endpoint is the node's metrics agent, the uvicorn one the app's own /metrics.
    """
    from serving.metrics import BATCH_SIZE, CACHE, PREDICTION_LOG, series_samples

    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
    except (OSError, urllib.error.HTTPError):
        return {}
    totals = {
        "batch_sum": sum(v for _, v in series_samples(text, f"{BATCH_SIZE.exported}_sum")),
        "batch_count": sum(v for _, v in series_samples(text, f"{BATCH_SIZE.exported}_count")),
    }
    for labels, value in series_samples(text, f"{CACHE.exported}_total"):
        key = f"cache_{labels.get('result')}"
        totals[key] = totals.get(key, 0.0) + value
    for labels, value in series_samples(text, f"{PREDICTION_LOG.exported}_total"):
        key = f"records_{labels.get('outcome')}"
        totals[key] = totals.get(key, 0.0) + value
    return totals


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_seconds(session: int) -> tuple[float, float]:
    """CPU seconds used so far by the whole machine and by the processes of `session` (NaN off Linux).

    A server child leads its own session, and Ray's processes stay in it, so
    the session is the server, however many processes it runs.
    """
    try:
        fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except OSError:
        return math.nan, math.nan
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    busy = user + nice + system + irq + softirq + steal
    server = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # exited meanwhile
            continue
        after_name = text[text.rindex(")") + 2 :].split()
        if int(after_name[3]) == session:
            server += int(after_name[11]) + int(after_name[12])
    return busy / _TICKS, server / _TICKS


def _own_and_children_cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _measure(server: Server, phase: Phase, spec: LoadSpec) -> Measurement:
    """One phase, with the server's own counters and who used the CPU meanwhile.

    `other_cores` is the machine's busy time less the server's, the
    generator's and this process's: load from outside the benchmark.
    """
    before = _scrape(server.metrics_url) if server.variant.kind != "naive" else {}
    cpu_before, started = (*_cpu_seconds(server.process.pid), _own_and_children_cpu()), time.perf_counter()
    result = run_in_process(spec, ROOT)
    cpu_after, elapsed = (
        (*_cpu_seconds(server.process.pid), _own_and_children_cpu()),
        time.perf_counter() - started,
    )
    if before and server.variant.kind != "uvicorn":
        time.sleep(RAY_EXPORT_WAIT_S)  # Ray's metrics agents export what the replicas counted every second
    after = _scrape(server.metrics_url) if before else {}
    busy, server_s, ours = (b - a for a, b in zip(cpu_before, cpu_after, strict=True))
    measurement = Measurement(
        server.variant,
        phase,
        result,
        server_cores=server_s / elapsed,
        other_cores=max(0.0, busy - server_s - ours) / elapsed,
    )
    if before and after:

        def delta(name: str) -> float:
            return after.get(name, 0.0) - before.get(name, 0.0)

        batches = delta("batch_count")
        hits = delta("cache_hit")
        lookups = hits + delta("cache_miss")
        measurement.mean_batch = delta("batch_sum") / batches if batches else None
        measurement.cache_hit_share = hits / lookups if lookups else None
        measurement.records = {outcome: delta(f"records_{outcome}") for outcome in ("sent", "dropped")}
    return measurement


def _served_version(port: int, probe: bytes) -> str:
    """The version answering a score now; a probe refused under load (503) is asked again."""
    deadline = time.monotonic() + SWAP_TIMEOUT_S
    while True:
        status, body = _post(port, "/v1/score", probe)
        if status == 200:
            return str(json.loads(body)["model"]["version"])
        if time.monotonic() > deadline:
            raise RuntimeError(f"the probe was answered {status} for {SWAP_TIMEOUT_S:.0f} s")
        time.sleep(0.05)


def _measure_swaps(server: Server, phase: Phase, spec: LoadSpec, requests: Requests) -> Measurement:
    """The load, with the champion swapped a third of the way in and swapped back at two thirds;
    each swap is confirmed by a scored request answered by the new version."""
    probe = requests.single.read_text().splitlines()[0].encode()
    took: list[tuple[str, str]] = []
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        began = time.perf_counter()
        measuring = pool.submit(_measure, server, phase, spec)
        for at in (1 / 3, 2 / 3):
            time.sleep(max(0.0, began + at * spec.duration_s - time.perf_counter()))
            before, started = _served_version(server.port, probe), time.perf_counter()
            server.command("swap")
            while (now := _served_version(server.port, probe)) == before:
                if time.perf_counter() - started > SWAP_TIMEOUT_S:
                    raise RuntimeError(f"a swap from v{before} took no effect in {SWAP_TIMEOUT_S:.0f} s")
                time.sleep(0.05)
            took.append((f"v{before} -> v{now}", f"{time.perf_counter() - started:.2f}"))
        measurement = measuring.result()
    measurement.note = "; ".join(f"{what} in {seconds} s" for what, seconds in took)
    return measurement


def _measure_retraining(server: Server, phase: Phase, spec: LoadSpec, data_dir: Path) -> Measurement:
    """The load, while a process fits XGBoost on the training set with every core (as a retraining
    run's training step would, unniced)."""
    trainer = subprocess.Popen(
        [sys.executable, "-m", MODULE, "retrain", str(data_dir)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert trainer.stdout is not None
        if trainer.stdout.readline().strip() != f"{MARKER}ready":
            raise RuntimeError("the retraining process did not start")
        measurement = _measure(server, phase, spec)
    finally:
        trainer.kill()
        fits = (trainer.communicate()[0] or "").count(f"{MARKER}fitted")
    measurement.note = f"{fits} XGBoost fits finished beside the load"
    return measurement


def _phases(variant: Variant, settings: Settings) -> list[Phase]:
    """One client, then saturation, then the open-loop rates from low to high: a rate the server
    cannot keep up with leaves a backlog, and the closed-loop phases should not meet one."""
    phases = [Phase("one", 1), Phase("saturation", settings.clients)]
    phases += [Phase("open", settings.open_connections, rate=rate) for rate in sorted(settings.rates)]
    if variant.kind == "ours":
        phases += [Phase("overload", settings.open_connections, factor=factor) for factor in OVERLOADS]
        phases += [
            Phase(kind, settings.open_connections, rate=DISTURBED_RATE) for kind in ("swap", "retraining")
        ]
        phases += [Phase("batch", settings.batch_clients, batch_size=size) for size in settings.batch_sizes]
        phases.append(Phase("unbatched", settings.clients))
    return phases


def _wait_idle(server: Server, timeout_s: float = DRAIN_TIMEOUT_S) -> float:
    """Wait until the server's processes use less than `IDLE_CORES`; returns the seconds waited.

    A server that fell behind goes on working through requests its clients
    gave up on (uvicorn does not cancel them); the next phase must not pay for them.
    """
    started = time.perf_counter()
    _, before = _cpu_seconds(server.process.pid)
    if math.isnan(before):
        return 0.0
    while time.perf_counter() - started < timeout_s:
        time.sleep(IDLE_WINDOW_S)
        _, after = _cpu_seconds(server.process.pid)
        if after - before < IDLE_CORES * IDLE_WINDOW_S:
            break
        before = after
    return time.perf_counter() - started


def measure_variant(
    variant: Variant, data_dir: Path, requests: Requests, settings: Settings, stages: Stages
) -> list[Measurement]:
    """Start the variant's server, run every phase against it, stop it."""
    measurements: list[Measurement] = []
    offset = 0  # each phase takes the bodies after the previous one's: no request is repeated

    def spec(phase: Phase, duration_s: float) -> LoadSpec:
        batch = phase.kind == "batch"
        return LoadSpec(
            port=server.port,
            path="/v1/score/batch" if batch else "/v1/score",
            bodies=str(requests.batches[phase.batch_size] if batch else requests.single),
            mode="open" if phase.kind in ("open", "overload", "swap", "retraining") else "closed",
            connections=phase.clients,
            duration_s=duration_s,
            rate=phase.rate,
            offset=0 if batch else offset,
            items_per_request=phase.batch_size,
            timeout_s=settings.timeout_s * (6 if batch else 1),
        )

    with stages.stage(f"{variant.label}: start"):
        server = Server.start(variant, data_dir, requests)
    try:
        warmup = run_in_process(spec(Phase("saturation", 8), settings.warmup_s), ROOT)
        offset += warmup.taken
        for planned in _phases(variant, settings):
            phase = planned
            if phase.kind == "overload":
                saturation = _find(measurements, variant.key, "saturation")
                assert saturation is not None, "saturation is measured before overload"
                phase = replace(phase, rate=phase.factor * saturation.result.requests_per_s)
            if phase.kind == "unbatched":
                with stages.stage(f"{variant.label}: reconfigure max_batch_size=1"):
                    server.command("unbatched")
                offset += run_in_process(spec(Phase("saturation", 8), settings.warmup_s), ROOT).taken
            waited = _wait_idle(server)
            if waited > 2 * IDLE_WINDOW_S:
                print(f"[serve] {variant.label}: waited {waited:.1f} s for the server to go idle", flush=True)
            load = spec(phase, settings.duration_s)
            if phase.kind == "swap":
                measurements.append(_measure_swaps(server, phase, load, requests))
            elif phase.kind == "retraining":
                measurements.append(_measure_retraining(server, phase, load, data_dir))
            else:
                measurements.append(_measure(server, phase, load))
            offset += 0 if phase.kind == "batch" else measurements[-1].result.taken
            print(f"[serve] {variant.label}: {phase.label}: {_summary(measurements[-1])}", flush=True)
    finally:
        with stages.stage(f"{variant.label}: stop"):
            server.stop()
    return measurements


def _summary(m: Measurement) -> str:
    r = m.result
    parts = [f"{r.requests_per_s:,.0f} req/s"]
    if m.phase.kind == "batch":
        parts.append(f"{r.items_per_s:,.0f} tx/s")
    parts.append(f"p50 {_in_ms(r.p50_ms)}, p99 {_in_ms(r.p99_ms)}")
    parts.append(f"errors {_errors(r)}")
    if m.mean_batch is not None:
        parts.append(f"mean batch {m.mean_batch:.1f}")
    if m.cache_hit_share:
        parts.append(f"cache hits {m.cache_hit_share:.0%}")
    parts.append(f"cores: server {_cores(m.server_cores)}, generator {_cores(_generator_cores(r))}")
    parts.append(f"other {_cores(m.other_cores)}")
    return ", ".join(parts)


def _ms(value: float) -> str:
    if math.isnan(value):
        return "-"
    if math.isinf(value):
        return "timeout"
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def _in_ms(value: float) -> str:
    text = _ms(value)
    return text if text in ("-", "timeout") else f"{text} ms"


def _errors(r: LoadResult) -> str:
    if not r.failed:
        return "0"
    kinds = ", ".join(f"{k} {v:,}" for k, v in sorted(r.errors.items()))
    return f"{r.error_rate:.1%} ({kinds})"


def _generator_cores(r: LoadResult) -> float:
    return r.cpu_s / r.wall_s if r.wall_s else math.nan


def _cores(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def _times(ratio: float) -> str:
    return f"{ratio:.2f}x" if math.isfinite(ratio) else "unbounded (the baseline answered nothing)"


def _find(
    measurements: Sequence[Measurement], key: str, kind: PhaseKind, rate: float | None = None
) -> Measurement | None:
    return next(
        (
            m
            for m in measurements
            if m.variant.key == key and m.phase.kind == kind and (rate is None or m.phase.rate == rate)
        ),
        None,
    )


def table(measurements: Sequence[Measurement]) -> str:
    """Every phase of every variant; saturation rows carry their ratio to the baselines'."""
    naive, uvicorn = (_find(measurements, key, "saturation") for key in ("naive", "uvicorn"))
    rows = []
    for m in measurements:
        r = m.result
        ratios = ["", ""]
        if m.phase.kind == "saturation":
            ratios = [
                f"{r.requests_per_s / base.result.requests_per_s:.2f}x"
                if base and base.result.requests_per_s
                else "-"
                for base in (naive, uvicorn)
            ]
        rows.append(
            [
                m.variant.label,
                m.phase.label,
                f"{m.phase.rate:,.0f}" if m.phase.kind in ("open", "overload", "swap", "retraining") else "",
                f"{r.requests_per_s:,.0f}",
                f"{r.items_per_s:,.0f}",
                _ms(r.p50_ms),
                _ms(r.p95_ms),
                _ms(r.p99_ms),
                _ms(r.p999_ms),
                _ms(r.ok_p99_ms),
                _errors(r),
                f"{m.mean_batch:.1f}" if m.mean_batch is not None else "-",
                _cores(m.server_cores),
                _cores(_generator_cores(r)),
                _cores(m.other_cores),
                *ratios,
            ]
        )
    headers = [
        "variant",
        "load",
        "offered req/s",
        "req/s",
        "tx/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "p99.9 ms",
        "accepted p99 ms",
        "errors",
        "mean batch",
        "server cores",
        "generator cores",
        "other cores",
        "vs (a)",
        "vs (b)",
    ]
    return markdown_table(headers, rows, text_columns=2)


def checks(measurements: Sequence[Measurement], settings: Settings) -> list[Check]:
    """The claims, for each of our variants measured; a target is never lowered, a miss prints its number."""
    out: list[Check] = []
    naive, uvicorn = (_find(measurements, key, "saturation") for key in ("naive", "uvicorn"))
    for variant in (v for v in VARIANTS if v.kind == "ours"):
        sat = _find(measurements, variant.key, "saturation")
        if sat is None:
            continue
        name, rps = variant.label, sat.result.requests_per_s
        for key, target in (("naive", 5.0), ("uvicorn", 1.5)):
            base = naive if key == "naive" else uvicorn
            if base is None:
                out.append(Check(None, f"{name}: saturation vs {BY_KEY[key].label}: not measured"))
                continue
            ratio = rps / base.result.requests_per_s if base.result.requests_per_s else math.inf
            # A baseline that does worse loaded than alone is shown with its best, so the ratio reads right.
            alone = _find(measurements, key, "one")
            note = f"; with 1 client it did {alone.result.requests_per_s:,.0f}" if alone else ""
            out.append(
                Check(
                    ratio >= target,
                    f"{name}: saturation {rps:,.0f} req/s at {sat.phase.clients} clients = {_times(ratio)} "
                    f"{base.variant.label}'s {base.result.requests_per_s:,.0f}{note} (target >= {target:g}x)",
                )
            )
        one = _find(measurements, variant.key, "one")
        if one is not None:
            out.append(
                Check(
                    one.result.p50_ms <= 5.0,
                    f"{name}: p50 {_in_ms(one.result.p50_ms)} with one client (target <= 5 ms)",
                )
            )
        opened = _find(measurements, variant.key, "open", TARGET_RATE)
        if opened is None:
            out.append(Check(None, f"{name}: p99 at {TARGET_RATE:,.0f} req/s not measured (not in --rates)"))
        else:
            r = opened.result
            out.append(
                Check(
                    r.p99_ms <= 20.0 and not r.failed,
                    f"{name}: p99 {_in_ms(r.p99_ms)} at {TARGET_RATE:,.0f} req/s open loop, "
                    f"errors {_errors(r)} "
                    "(target <= 20 ms, no errors)",
                )
            )
        for over in (m for m in measurements if m.variant.key == variant.key and m.phase.kind == "overload"):
            r = over.result
            goodput = r.requests_per_s / rps if rps else math.nan
            other = {k: v for k, v in r.errors.items() if k != "http 503"}
            out.append(
                Check(
                    goodput >= 0.9 and r.ok_p99_ms <= 100.0 and not other,
                    f"{name}: offered {over.phase.rate:,.0f} req/s ({over.phase.factor:g}x saturation): "
                    f"goodput {r.requests_per_s:,.0f} req/s = {goodput:.0%} of saturation, accepted p99 "
                    f"{_in_ms(r.ok_p99_ms)}, refused 503 {r.errors.get('http 503', 0):,}, other errors "
                    f"{sum(other.values()):,} (target >= 90 %, <= 100 ms, only 503s)",
                )
            )
        swap = _find(measurements, variant.key, "swap")
        if swap is not None:
            r = swap.result
            out.append(
                Check(
                    not r.failed,
                    f"{name}: {swap.phase.label}: p99 {_in_ms(r.p99_ms)}, p99.9 {_in_ms(r.p999_ms)}, "
                    f"errors {_errors(r)}; {swap.note} (target: no request fails)",
                )
            )
        retraining = _find(measurements, variant.key, "retraining")
        if retraining is not None:
            r = retraining.result
            out.append(
                Check(
                    None,
                    f"{name}: {retraining.phase.label}: p99 {_in_ms(r.p99_ms)}, p99.9 {_in_ms(r.p999_ms)}, "
                    f"errors {_errors(r)}; {retraining.note} (shown, no target)",
                )
            )
        batch = [m for m in measurements if m.variant.key == variant.key and m.phase.kind == "batch"]
        if batch:
            fastest = max(batch, key=lambda m: m.result.items_per_s)
            out.append(
                Check(
                    fastest.result.items_per_s >= 30_000 and not fastest.result.failed,
                    f"{name}: /v1/score/batch {fastest.result.items_per_s:,.0f} transactions/s "
                    f"({fastest.phase.label}; target >= 30,000)",
                )
            )
        unbatched = _find(measurements, variant.key, "unbatched")
        if unbatched is not None:
            base_rps = unbatched.result.requests_per_s
            ratio = rps / base_rps if base_rps else math.inf
            out.append(
                Check(
                    ratio >= 2.0,
                    f"{name}: dynamic batching {rps:,.0f} req/s vs {base_rps:,.0f} unbatched "
                    "(max_batch_size=1) "
                    f"at {settings.clients} clients = {_times(ratio)} (target >= 2x)",
                )
            )
    return out


def _parser() -> argparse.ArgumentParser:
    parser = dataset_parser(
        (__doc__ or "").splitlines()[0],
        SERVE_SIZE,
        quick_help="small dataset, short phases, fewer rates: a smoke run",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help=f"seconds per measured phase (default {FULL.duration_s:g}; {QUICK.duration_s:g} with --quick)",
    )
    parser.add_argument(
        "--warmup", type=float, default=None, help="seconds of unmeasured load before the phases"
    )
    parser.add_argument(
        "--rates", default=None, help="open-loop rates, comma-separated (default 100,300,500)"
    )
    parser.add_argument(
        "--clients", type=int, default=None, help="closed-loop clients at saturation (default 16)"
    )
    parser.add_argument(
        "--batch-sizes", default=None, help="transactions per /v1/score/batch call: 1000 and/or 5000"
    )
    parser.add_argument(
        "--variants",
        default=",".join(BY_KEY),
        help=f"which to run, comma-separated, of {', '.join(BY_KEY)} (default: all)",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="keep (or reuse) the dataset, model and stores here"
    )
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    base = QUICK if args.quick else FULL
    return Settings(
        warmup_s=args.warmup if args.warmup is not None else base.warmup_s,
        duration_s=args.duration if args.duration is not None else base.duration_s,
        rates=tuple(float(r) for r in args.rates.split(",")) if args.rates else base.rates,
        clients=args.clients or base.clients,
        open_connections=base.open_connections,
        batch_sizes=tuple(int(s) for s in args.batch_sizes.split(","))
        if args.batch_sizes
        else base.batch_sizes,
        batch_clients=base.batch_clients,
        timeout_s=base.timeout_s,
    )


def main(argv: list[str] | None = None) -> ServeBench:
    """Measure every variant asked for, one after the other, and print the table and the claims."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["server"]:
        serve_child(argv[1:])
        sys.exit(0)
    if argv[:1] == ["retrain"]:
        retrain_child(argv[1:])
    args = _parser().parse_args(argv)
    if not args.quick:
        for name, default in SERVE_SIZE.items():
            if getattr(args, name) is None:
                setattr(args, name, default)
    settings = _settings(args)
    unknown = set(args.variants.split(",")) - set(BY_KEY)
    if unknown or any(size not in BATCH_SIZES for size in settings.batch_sizes):
        raise SystemExit(f"unknown variants {sorted(unknown)} or batch sizes {settings.batch_sizes}")
    chosen = [v for v in VARIANTS if v.key in args.variants.split(",")]
    load_before = os.getloadavg()[0]
    print(
        f"[serve] {os.cpu_count()} cores, load average {load_before:.2f}; "
        f"variants: {', '.join(v.key for v in chosen)}",
        flush=True,
    )
    stages = Stages("serve")
    measurements: list[Measurement] = []
    failures: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        data_dir = (args.data_dir or Path(tmp)).resolve()
        requests = prepare(data_dir, args, stages)
        dataset = requests.dataset
        with prediction_bus(data_dir):
            for variant in chosen:
                try:
                    measurements += measure_variant(variant, data_dir, requests, settings, stages)
                except (TimeoutError, RuntimeError) as exc:
                    failures[variant.key] = str(exc)
                    log = data_dir / f"{variant.key}.log"
                    tail = log.read_text()[-3000:] if log.exists() else ""
                    print(f"[serve] {variant.label} FAILED: {exc}\n--- {log} (tail)\n{tail}", flush=True)
    found = checks(measurements, settings)
    report = "\n".join(
        [
            table(measurements),
            "",
            *(check.line() for check in found),
            *(f"FAILED  {key}: {why}" for key, why in failures.items()),
            "",
            *records_lines(measurements),
            f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; "
            f"{settings.duration_s:g} s per phase, requests time out after {settings.timeout_s:g} s "
            "(batch calls after 6x that)",
        ]
    )
    body = (
        f"## Serving under load: {dataset}; {os.cpu_count()} cores, "
        f"load generator on the same machine\n\n```\n{report}\n```"
    )
    print(f"\n{body}\n", flush=True)
    write_result("serve", body, argv, args.quick, args.results)
    return ServeBench(measurements, found, failures, report)


if __name__ == "__main__":
    main()
