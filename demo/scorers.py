"""Ways to send a day of traffic to serving: over HTTP to Ray Serve, or to the same service in process.

The live loop (`demo.live_loop`) replays traffic through either. Both
score with `ScoringService`, log predictions to the bus through
`PredictionLog`, and serve the versions the last deployment pinned; HTTP is
what apps and `make demo` use, in process is what the scenario tests use, to
keep Ray's start-up (most of a minute here) out of every scenario.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pandas as pd

from modeling.registry import ModelRegistry, recorded_deployment
from serving.metrics import PREDICTION_LOG, ServingMetrics, ray_metrics_url, series_samples
from serving.model import ModelStore
from serving.prediction_log import PredictionLog
from serving.schemas import Transaction
from serving.service import ScoringService
from settings import ServingConfig, load_settings
from streaming.config import StreamConfig


def _chunks(frame: pd.DataFrame, size: int) -> Iterator[pd.DataFrame]:
    for start in range(0, len(frame), size):
        yield frame.iloc[start : start + size]


def _bodies(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {
            "transaction_id": int(tx),
            "customer_id": int(customer),
            "terminal_id": int(terminal),
            "amount": float(amount),
            "timestamp": pd.Timestamp(at).isoformat(),
        }
        for tx, customer, terminal, amount, at in zip(
            frame["TRANSACTION_ID"],
            frame["CUSTOMER_ID"],
            frame["TERMINAL_ID"],
            frame["TX_AMOUNT"],
            frame["TX_DATETIME"],
            strict=True,
        )
    ]


def _wait(done: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout_s:.0f} s")
        time.sleep(0.2)


class InProcessScorer:
    """`ScoringService` in this process, over the profile's online store, registry and bus.

    It pins the versions the registry's deployment record names, as the
    `deployment` asset pins them into Ray Serve's replicas.
    """

    def __init__(self, stream: StreamConfig, models: ModelRegistry, config: ServingConfig) -> None:
        self.metrics = ServingMetrics()
        log = PredictionLog(lambda: stream.bus().producer(), stream.topics().predictions, self.metrics)
        self.service = ScoringService(stream.online(), ModelStore(models), self.metrics, log)
        self._models = models
        self.config = config
        self._configure()
        self._log = log
        self._expected = 0

    def _configure(self) -> None:
        deployment = recorded_deployment(self._models.client(), self._models.model_name)
        if deployment is not None:
            self.config = self.config.model_copy(
                update={"champion_version": deployment.champion, "challenger_version": deployment.challenger}
            )
        self.service.configure(self.config)

    def score(self, transactions: pd.DataFrame) -> int:
        scored = 0
        for chunk in _chunks(transactions, self.config.max_transactions_per_call):
            scored += len(self.service.score([Transaction(**body) for body in _bodies(chunk)]))
        return scored

    def _logged(self) -> float:
        exposition = self.metrics.exposition().decode()
        return sum(value for _, value in series_samples(exposition, f"{PREDICTION_LOG.exported}_total"))

    def wait_logged(self, expected: int, timeout_s: float) -> None:
        self._expected += expected
        _wait(
            lambda: self._logged() >= self._expected, timeout_s, f"{self._expected} prediction records sent"
        )

    def follow_deployment(self, version: str, timeout_s: float) -> None:
        self._configure()
        _wait(
            lambda: self.service.ready()[1] == f"champion v{version}",
            timeout_s,
            f"champion v{version} loaded",
        )

    def close(self) -> None:
        self._log.close()


class HttpScorer:
    """Ray Serve's HTTP endpoint, as an app calls it (`POST /v1/score/batch`).

    The prediction log's counter is read from Ray's metrics agent, `metrics_url`
    (by default this machine's, at the settings' `serving.ray_metrics_port`):
    summed over every replica, where the app's `/metrics` would reach one.
    """

    def __init__(self, base_url: str, batch_size: int = 2000, metrics_url: str | None = None) -> None:
        self.client = httpx.Client(base_url=base_url, timeout=120)
        self.metrics_url = metrics_url or ray_metrics_url(load_settings().serving.ray_metrics_port)
        self.batch_size = batch_size
        self._expected = 0.0

    def score(self, transactions: pd.DataFrame) -> int:
        scored = 0
        for chunk in _chunks(transactions, self.batch_size):
            response = self.client.post("/v1/score/batch", json={"transactions": _bodies(chunk)})
            response.raise_for_status()
            scored += len(response.json()["scores"])
        return scored

    def _logged(self) -> float:
        """Records sent or dropped by every replica; Ray exports them a few seconds late."""
        try:
            text = self.client.get(self.metrics_url).raise_for_status().text
        except httpx.HTTPError:  # the metrics agent starts after Serve's proxy: not yet
            return 0.0
        return sum(value for _, value in series_samples(text, f"{PREDICTION_LOG.exported}_total"))

    def wait_logged(self, expected: int, timeout_s: float) -> None:
        self._expected += expected
        _wait(
            lambda: self._logged() >= self._expected,
            timeout_s,
            f"{self._expected:.0f} prediction records sent",
        )

    def follow_deployment(self, version: str, timeout_s: float) -> None:
        def answers() -> bool:
            response = self.client.get("/readyz")
            return response.status_code == 200 and response.json()["detail"] == f"champion v{version}"

        _wait(answers, timeout_s, f"serving answers with champion v{version}")

    def close(self) -> None:
        self.client.close()
