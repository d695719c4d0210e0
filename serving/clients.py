"""Ways to send a day of traffic to serving: over HTTP to Ray Serve, or to the same service in process.

The live loop (`orchestration.live_loop`) replays traffic through either. Both
score with `ScoringService`, log predictions to the bus through
`PredictionLog`, and follow the registry's champion alias; HTTP is what apps
and `make demo` use, in process is what the scenario tests use, to keep Ray's
start-up (most of a minute here) out of every scenario.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pandas as pd
from prometheus_client.parser import text_string_to_metric_families

from orchestration.resources import MLflowResource
from serving.config import ServingConfig
from serving.metrics import ServingMetrics
from serving.model import ModelStore
from serving.prediction_log import PredictionLog
from serving.schemas import Transaction
from serving.service import ScoringService
from streaming.resources import StreamResource


def _chunks(frame: pd.DataFrame, size: int) -> Iterator[pd.DataFrame]:
    for start in range(0, len(frame), size):
        yield frame.iloc[start : start + size]


def _bodies(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {
            "transaction_id": int(row.TRANSACTION_ID),
            "customer_id": int(row.CUSTOMER_ID),
            "terminal_id": int(row.TERMINAL_ID),
            "amount": float(row.TX_AMOUNT),
            "timestamp": row.TX_DATETIME.isoformat(),
        }
        for row in frame.itertuples(index=False)
    ]


def _wait(done: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout_s:.0f} s")
        time.sleep(0.2)


class InProcessScorer:
    """`ScoringService` in this process, over the profile's online store, registry and bus."""

    def __init__(self, stream: StreamResource, mlflow: MLflowResource, config: ServingConfig) -> None:
        self.metrics = ServingMetrics()
        log = PredictionLog(lambda: stream.bus().producer(), stream.topics().predictions, self.metrics)
        self.service = ScoringService(stream.online(), ModelStore(mlflow), self.metrics, log)
        self.config = config
        self.service.configure(config)
        self._log = log
        self._expected = 0

    def score(self, transactions: pd.DataFrame) -> int:
        scored = 0
        for chunk in _chunks(transactions, self.config.max_transactions_per_call):
            scored += len(self.service.score([Transaction(**body) for body in _bodies(chunk)]))
        return scored

    def _logged(self) -> float:
        sample = self.metrics.registry.get_sample_value
        return sum(
            sample("fraudpipe_serve_prediction_log_total", {"outcome": outcome}) or 0.0
            for outcome in ("sent", "dropped")
        )

    def wait_logged(self, expected: int, timeout_s: float) -> None:
        self._expected += expected
        _wait(
            lambda: self._logged() >= self._expected, timeout_s, f"{self._expected} prediction records sent"
        )

    def follow_registry(self, version: str, timeout_s: float) -> None:
        self.service.configure(self.config)
        _wait(
            lambda: self.service.ready()[1] == f"champion v{version}",
            timeout_s,
            f"champion v{version} loaded",
        )

    def close(self) -> None:
        self._log.close()


class HttpScorer:
    """Ray Serve's HTTP endpoint, as an app calls it (`POST /v1/score/batch`)."""

    def __init__(self, base_url: str, batch_size: int = 2000) -> None:
        self.client = httpx.Client(base_url=base_url, timeout=120)
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
        text = self.client.get("/metrics").text
        total = 0.0
        for family in text_string_to_metric_families(text):
            if family.name == "fraudpipe_serve_prediction_log":
                total += sum(s.value for s in family.samples if s.name.endswith("_total"))
        return total

    def wait_logged(self, expected: int, timeout_s: float) -> None:
        self._expected += expected
        _wait(
            lambda: self._logged() >= self._expected,
            timeout_s,
            f"{self._expected:.0f} prediction records sent",
        )

    def follow_registry(self, version: str, timeout_s: float) -> None:
        def answers() -> bool:
            response = self.client.get("/readyz")
            return response.status_code == 200 and response.json()["detail"] == f"champion v{version}"

        _wait(answers, timeout_s, f"serving answers with champion v{version}")

    def close(self) -> None:
        self.client.close()
