"""Scoring a batch of transactions: online features, cache, routing, model, prediction log.

This is the whole request path, free of any web framework, so the Ray Serve
deployment, the single-process baseline of the benchmark and the tests all run
the same code. Features come from the stream's online event buffers through
`EventBuffers.features`, the function the parity tests hold equal to the
offline training set, at each request's own timestamp.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pydantic_core

from feature_repo.online import EventBuffers, StaleReadError
from feature_repo.windows import MODEL_FEATURES
from modeling.registry import ModelRegistry
from serving.cache import ResultCache
from serving.columns import TransactionColumns
from serving.metrics import ServingMetrics
from serving.model import LoadedModel, ModelStore
from serving.prediction_log import PredictionLog
from serving.routing import Router
from serving.schemas import ColdStart, Latency, ModelRef, Score, Transaction
from settings import ServingConfig, Settings

logger = logging.getLogger(__name__)


def error_reference() -> str:
    """A short random id that ties an answer to its logged detail, which the client never sees."""
    return os.urandom(6).hex()


class NotReadyError(RuntimeError):
    """No champion is loaded yet: no deployment pinned one, or it failed to load."""


class RequestError(ValueError):
    """Requests the features cannot be read for; answered 422, naming the field and which items.

    Attributes:
        field: the request field at fault.
        positions: the failing items of the batch (0-based); every item when empty.
    """

    def __init__(self, field: str, message: str, positions: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.field = field
        self.positions = tuple(positions)


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
            self._online.features(TransactionColumns.of([_PROBE]).frame())
        except Exception:
            # The exception names hosts and paths: the log keeps it, the answer only points to it.
            error_id = error_reference()
            logger.exception("readiness: online store unreachable (error %s)", error_id)
            return False, f"online store unreachable (error {error_id} in the replica's log)"
        return True, f"champion v{serving.champion.version}"

    def score(self, transactions: TransactionColumns | Sequence[Transaction]) -> ScoredBatch:
        """Score transactions together: one feature read, one model call per model.

        Raises:
            NotReadyError: no champion is loaded.
            RequestError: transactions before the online store's floor, named by position.
        """
        serving = self._serving
        if serving is None:
            raise NotReadyError("no champion loaded")
        started = time.perf_counter()
        if not isinstance(transactions, TransactionColumns):
            transactions = TransactionColumns.of(transactions)
        try:
            online = self._online.features(transactions.frame())
        except StaleReadError as exc:
            raise RequestError("timestamp", str(exc), exc.positions.tolist()) from exc
        features = online.values.to_numpy(np.float64)
        features_done = time.perf_counter()

        to_challenger = serving.router.to_challenger(transactions.customer_id, time.time())
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
        # One draw of random bytes for the batch: a uuid4 per answer cost more than the model.
        ids = os.urandom(16 * len(transactions)).hex()
        scored = ScoredBatch(
            transactions=transactions,
            request_ids=[ids[i : i + 32] for i in range(0, len(ids), 32)],
            probabilities=probabilities,
            versions=versions,
            to_challenger=to_challenger,
            cached=cached,
            unknown_customer=online.unknown_customer,
            unknown_terminal=online.unknown_terminal,
            features=features,
            model_name=serving.champion.name,
            threshold=serving.config.threshold,
            features_ms=(features_done - started) * 1e3,
            model_ms=(done - features_done) * 1e3,
        )
        if self._log is not None and serving.config.prediction_log:
            shadow_version = serving.challenger.version if shadow is not None and serving.challenger else None
            self._log.submit(_Answered(scored, shadow, shadow_version))
        return scored

    def score_each(self, transactions: Sequence[Transaction]) -> list[Score | Exception]:
        """Score a dynamic batch of independent requests: one bad request fails only itself.

        The store names the requests it cannot read (before its floor): they
        fail alone and the rest is scored together again, so a bad request
        costs its batch one more read, not a read per request.

        Raises:
            NotReadyError: no champion is loaded (every request fails alike).
        """
        results: list[Score | Exception | None] = [None] * len(transactions)
        pending = list(range(len(transactions)))
        while pending:
            try:
                scores = self.score([transactions[i] for i in pending])
            except RequestError as exc:
                failed = {pending[p] for p in exc.positions} if exc.positions else set(pending)
                for i in failed:
                    results[i] = RequestError(
                        exc.field,
                        f"timestamp {transactions[i].timestamp.isoformat()} is before the online "
                        "store's floor: its windows may reach events already trimmed",
                    )
                pending = [i for i in pending if i not in failed]
                continue
            for i, score in zip(pending, scores.scores(), strict=True):
                results[i] = score
            break
        return [result for result in results if result is not None]

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


@dataclass(frozen=True)
class ScoredBatch:
    """A scored batch as columns; answers are built in the form each caller needs, only then.

    Scores as pydantic objects cost about 13 µs each (four models per answer):
    the batch endpoint writes its JSON straight from the columns instead.
    """

    transactions: TransactionColumns
    request_ids: list[str]
    probabilities: np.ndarray
    versions: np.ndarray
    to_challenger: np.ndarray
    cached: np.ndarray
    unknown_customer: np.ndarray
    unknown_terminal: np.ndarray
    features: np.ndarray
    model_name: str
    threshold: float
    features_ms: float
    model_ms: float

    def __len__(self) -> int:
        return len(self.transactions)

    def rows(self, total_ms: float = 0.0) -> list[dict[str, Any]]:
        """The answers as `Score`-shaped dicts."""
        latency = {"features_ms": self.features_ms, "model_ms": self.model_ms, "total_ms": total_ms}
        threshold = self.threshold
        return [
            {
                "transaction_id": tx,
                "request_id": request_id,
                "probability": probability,
                "fraud": probability >= threshold,
                "threshold": threshold,
                "model": {"name": self.model_name, "version": version},
                "route": "challenger" if challenger else "champion",
                "cached": cached,
                "cold_start": {"customer": customer, "terminal": terminal},
                "latency": latency,
            }
            for tx, request_id, probability, version, challenger, cached, customer, terminal in zip(
                self.transactions.transaction_id.tolist(),
                self.request_ids,
                self.probabilities.tolist(),
                self.versions.tolist(),
                self.to_challenger.tolist(),
                self.cached.tolist(),
                self.unknown_customer.tolist(),
                self.unknown_terminal.tolist(),
                strict=True,
            )
        ]

    def json(self, total_ms: float) -> bytes:
        """`BatchScores` as JSON, in one pass over the columns."""
        return pydantic_core.to_json({"scores": self.rows(total_ms)})

    def scores(self) -> list[Score]:
        """The answers as `Score` objects (a dynamic batch answers each request with its own)."""
        return [
            Score.model_construct(
                **{
                    **row,
                    "model": ModelRef.model_construct(**row["model"]),
                    "cold_start": ColdStart.model_construct(**row["cold_start"]),
                    "latency": Latency.model_construct(**row["latency"]),
                }
            )
            for row in self.rows()
        ]


@dataclass(frozen=True)
class _Answered:
    """A scored batch, turned into prediction records on the log's thread."""

    scored: ScoredBatch
    shadow: np.ndarray | None
    shadow_version: str | None

    def __len__(self) -> int:
        return len(self.scored)

    def records(self) -> list[dict[str, Any]]:
        """One record per answer, from the columns as lists: numpy calls per row took 8 ms of the
        replica's GIL per 1,000 answers, now 2 ms, beside a scoring of 1,000 in about 12 ms."""
        served_at = time.time()
        scored = self.scored
        columns = scored.transactions
        shadow = self.shadow.tolist() if self.shadow is not None else [None] * len(scored)
        routes = np.where(scored.to_challenger, "challenger", "champion").tolist()
        answers = zip(
            scored.request_ids,
            columns.transaction_id.tolist(),
            columns.customer_id.tolist(),
            columns.terminal_id.tolist(),
            columns.isoformat(),
            scored.features.tolist(),
            scored.probabilities.tolist(),
            scored.versions.tolist(),
            routes,
            scored.cached.tolist(),
            shadow,
            strict=True,
        )
        records = []
        for request_id, tx, customer, terminal, at, values, score, version, route, hit, other in answers:
            record: dict[str, Any] = {
                "request_id": request_id,
                "transaction_id": tx,
                "customer_id": customer,
                "terminal_id": terminal,
                "timestamp": at,
                "features": dict(zip(MODEL_FEATURES, values, strict=True)),
                "probability": score,
                "model_version": version,
                "route": route,
                "cached": hit,
                "features_ms": scored.features_ms,
                "model_ms": scored.model_ms,
                "served_at": served_at,
            }
            if other is not None:
                record["shadow"] = {"model_version": self.shadow_version, "probability": other}
            records.append(record)
        return records
