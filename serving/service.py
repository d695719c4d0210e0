"""Scoring a batch of transactions: online features, cache, routing, model, prediction log.

This is the whole request path, free of any web framework, so the Ray Serve
deployment, the single-process baseline of the benchmark and the tests all run
the same code. Features come from the stream's online event buffers through
`EventBuffers.features`, the function the parity tests hold equal to the
offline training set, at each request's own timestamp.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from feature_repo.online import EventBuffers, StaleReadError
from feature_repo.windows import MODEL_FEATURES
from modeling.registry import ModelRegistry
from serving.cache import ResultCache
from serving.metrics import ServingMetrics
from serving.model import LoadedModel, ModelStore
from serving.prediction_log import PredictionLog
from serving.routing import Router
from serving.schemas import ColdStart, Latency, ModelRef, Score, Transaction
from settings import ServingConfig, Settings

logger = logging.getLogger(__name__)


class NotReadyError(RuntimeError):
    """No champion is loaded yet: no deployment pinned one, or it failed to load."""


class RequestError(ValueError):
    """A request the features cannot be read for; answered 422, naming the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class _Serving:
    """What a batch scores with; replaced whole on reconfigure, so a batch never mixes two swaps."""

    config: ServingConfig
    champion: LoadedModel
    challenger: LoadedModel | None
    router: Router
    cache: ResultCache


class ScoringService:
    """The replica's state: online store, models, cache and prediction log.

    Args:
        online: the online event buffers of the profile.
        models: the registry the versions are loaded from.
        metrics: this replica's metrics.
        log: where answers are sent; None sends nothing.
    """

    def __init__(
        self,
        online: EventBuffers,
        models: ModelStore,
        metrics: ServingMetrics,
        log: PredictionLog | None = None,
    ) -> None:
        self._online = online
        self._models = models
        self.metrics = metrics
        self._log = log
        self._serving: _Serving | None = None
        self._configure_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, metrics: ServingMetrics | None = None) -> ScoringService:
        """The service over the profile's online store, registry and bus."""
        from streaming.config import StreamConfig

        stream = StreamConfig.from_settings(settings)
        metrics = metrics or ServingMetrics()
        log = PredictionLog(lambda: stream.bus().producer(), stream.topics().predictions, metrics)
        return cls(stream.online(), ModelStore(ModelRegistry.from_settings(settings)), metrics, log)

    @property
    def config(self) -> ServingConfig | None:
        serving = self._serving
        return serving.config if serving else None

    def configure(self, config: ServingConfig) -> None:
        """Load what `config` names, then switch to it in one assignment.

        Models are loaded before the switch, so requests keep being answered by
        the old ones meanwhile: a swap fails no request. A version already held
        is reused, and the cache survives only if neither model changed.

        Raises:
            NotReadyError: when the config pins no champion (or no challenger its rollout needs).
        """
        with self._configure_lock:
            current = self._serving
            champion_version = config.champion_version
            if champion_version is None:
                raise NotReadyError(
                    f"no {self._models.model_name} version is deployed yet: the `deployment` asset pins one"
                )
            challenger_version = config.challenger_version if config.rollout.mode != "champion" else None
            if config.rollout.mode != "champion" and challenger_version is None:
                raise NotReadyError(
                    f"rollout mode {config.rollout.mode!r} needs a challenger and the deployment pins none"
                )
            champion = self._load(champion_version, config, current)
            challenger = self._load(challenger_version, config, current) if challenger_version else None
            same_models = (
                current is not None
                and current.champion is champion
                and current.challenger is challenger
                and current.config.cache_size == config.cache_size
                and current.config.cache_ttl_s == config.cache_ttl_s
            )
            cache = (
                current.cache
                if same_models and current
                else ResultCache(config.cache_size, config.cache_ttl_s)
            )
            if current is not None and (
                current.champion is not champion or current.challenger is not challenger
            ):
                self.metrics.swaps.inc()
                logger.info(
                    "swapped models: champion v%s -> v%s, challenger %s -> %s",
                    current.champion.version,
                    champion.version,
                    current.challenger.version if current.challenger else None,
                    challenger.version if challenger else None,
                )
            same_rollout = current is not None and current.config.rollout == config.rollout
            router = current.router if same_rollout and current else Router(config.rollout, time.time())
            self._serving = _Serving(config, champion, challenger, router, cache)

    def _load(self, version: str, config: ServingConfig, current: _Serving | None) -> LoadedModel:
        if current is not None and current.config.device == config.device:
            for held in (current.champion, current.challenger):
                if held is not None and held.version == version:
                    return held
        return self._models.load(version, config.device)

    def ready(self) -> tuple[bool, str]:
        """Whether this replica can answer: a champion loaded and the online store reachable."""
        serving = self._serving
        if serving is None:
            return False, "no champion loaded"
        try:
            self._online.features(_frame([_PROBE]))
        except Exception as exc:
            return False, f"online store unreachable: {exc}"
        return True, f"champion v{serving.champion.version}"

    def score(self, transactions: Sequence[Transaction]) -> list[Score]:
        """Score transactions together: one feature read, one model call per model.

        Raises:
            NotReadyError: no champion is loaded.
            RequestError: a transaction is before the online store's floor.
        """
        serving = self._serving
        if serving is None:
            raise NotReadyError("no champion loaded")
        started = time.perf_counter()
        try:
            online = self._online.features(_frame(transactions))
        except StaleReadError as exc:
            raise RequestError("timestamp", str(exc)) from exc
        features = online.values.to_numpy(np.float64)
        features_done = time.perf_counter()

        customers = np.fromiter((t.customer_id for t in transactions), np.int64, len(transactions))
        to_challenger = serving.router.to_challenger(customers, time.time())
        probabilities = np.empty(len(transactions))
        versions = np.full(len(transactions), serving.champion.version, dtype=object)
        cached = np.zeros(len(transactions), dtype=bool)
        groups: list[tuple[LoadedModel, np.ndarray]] = [(serving.champion, ~to_challenger)]
        if serving.challenger is not None and to_challenger.any():
            groups.append((serving.challenger, to_challenger))
        for model, mask in groups:
            group_scores, hits = self._predict(serving, model, features[mask])
            probabilities[mask] = group_scores
            cached[mask] = hits
            versions[mask] = model.version
            self.metrics.scores.labels(
                "challenger" if model is serving.challenger else "champion", model.version
            ).inc(int(mask.sum()))
        shadow = None
        if serving.router.shadow and serving.challenger is not None:
            shadow, _ = self._predict(serving, serving.challenger, features)
            self.metrics.scores.labels("shadow", serving.challenger.version).inc(len(transactions))
        done = time.perf_counter()

        self.metrics.batch_size.observe(len(transactions))
        self.metrics.stage_seconds.labels("features").observe(features_done - started)
        self.metrics.stage_seconds.labels("model").observe(done - features_done)
        features_ms, model_ms = (features_done - started) * 1e3, (done - features_done) * 1e3
        config = serving.config
        # model_construct: every value is computed here, validating it again would cost
        # more than the model call on a large batch.
        scores = [
            Score.model_construct(
                transaction_id=t.transaction_id,
                request_id=uuid.uuid4().hex,
                probability=float(probabilities[i]),
                fraud=bool(probabilities[i] >= config.threshold),
                threshold=config.threshold,
                model=ModelRef.model_construct(name=serving.champion.name, version=str(versions[i])),
                route="challenger" if to_challenger[i] else "champion",
                cached=bool(cached[i]),
                cold_start=ColdStart.model_construct(
                    customer=bool(online.unknown_customer[i]), terminal=bool(online.unknown_terminal[i])
                ),
                latency=Latency.model_construct(features_ms=features_ms, model_ms=model_ms, total_ms=0.0),
            )
            for i, t in enumerate(transactions)
        ]
        if self._log is not None and config.prediction_log:
            shadow_version = serving.challenger.version if shadow is not None and serving.challenger else None
            self._log.submit(_Answered(transactions, scores, features, shadow, shadow_version))
        return scores

    def score_each(self, transactions: Sequence[Transaction]) -> list[Score | Exception]:
        """Score a dynamic batch of independent requests: one bad request fails only itself.

        The batch is scored together; only when a request in it cannot be read
        (before the store's floor) are they scored one by one, to find which.
        """
        try:
            return list(self.score(transactions))
        except RequestError:
            pass
        results: list[Score | Exception] = []
        for transaction in transactions:
            try:
                results.extend(self.score([transaction]))
            except (RequestError, NotReadyError) as exc:
                results.append(exc)
        return results

    def _predict(
        self, serving: _Serving, model: LoadedModel, features: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scores, and which came from the cache."""
        keys = ResultCache.keys(model.version, features)
        scores = serving.cache.get(keys)
        missing = np.isnan(scores)
        hits = int(len(scores) - missing.sum())
        self.metrics.cache.labels("hit").inc(hits)
        self.metrics.cache.labels("miss").inc(int(missing.sum()))
        if missing.any():
            fresh = model.predict(features[missing])
            scores[missing] = fresh
            serving.cache.put([key for key, miss in zip(keys, missing, strict=True) if miss], fresh)
        return scores, ~missing

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
        self._online.close()


_PROBE = Transaction(
    transaction_id=2**63 - 1,
    customer_id=2**63 - 1,
    terminal_id=2**63 - 1,
    amount=0.0,
    timestamp=pd.Timestamp("2100-01-01", tz="UTC").to_pydatetime(),
)
"""A read of an entity that never exists: it touches the store without matching anything."""


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _frame(transactions: Sequence[Transaction]) -> pd.DataFrame:
    # Integer microseconds from the epoch: pandas parses a list of datetimes one by one, slowly.
    n = len(transactions)
    return pd.DataFrame(
        {
            "TRANSACTION_ID": np.fromiter(
                (t.transaction_id for t in transactions), np.int64, len(transactions)
            ),
            "TX_DATETIME": pd.DatetimeIndex(
                (
                    np.fromiter(((t.timestamp - _EPOCH) // _MICROSECOND for t in transactions), np.int64, n)
                    * 1_000
                ).view("M8[ns]"),
                tz="UTC",
            ),
            "CUSTOMER_ID": np.fromiter((t.customer_id for t in transactions), np.int64, n),
            "TERMINAL_ID": np.fromiter((t.terminal_id for t in transactions), np.int64, n),
            "TX_AMOUNT": np.fromiter((t.amount for t in transactions), np.float64, n),
        }
    )


@dataclass(frozen=True)
class _Answered:
    """A scored batch, turned into prediction records on the log's thread."""

    transactions: Sequence[Transaction]
    scores: Sequence[Score]
    features: np.ndarray
    shadow: np.ndarray | None
    shadow_version: str | None

    def __len__(self) -> int:
        return len(self.scores)

    def records(self) -> list[dict[str, Any]]:
        served_at = time.time()
        records = []
        for i, (t, score) in enumerate(zip(self.transactions, self.scores, strict=True)):
            record: dict[str, Any] = {
                "request_id": score.request_id,
                "transaction_id": t.transaction_id,
                "customer_id": t.customer_id,
                "terminal_id": t.terminal_id,
                "timestamp": t.timestamp.isoformat(),
                "features": dict(zip(MODEL_FEATURES, self.features[i].tolist(), strict=True)),
                "probability": score.probability,
                "model_version": score.model.version,
                "route": score.route,
                "cached": score.cached,
                "features_ms": score.latency.features_ms,
                "model_ms": score.latency.model_ms,
                "served_at": served_at,
            }
            if self.shadow is not None:
                record["shadow"] = {
                    "model_version": self.shadow_version,
                    "probability": float(self.shadow[i]),
                }
            records.append(record)
        return records
