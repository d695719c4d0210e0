"""Scores already computed, keyed by (model version, exact feature vector).

A retried or duplicated transaction reads the same features at the same
timestamp, so it gets the same score without a model call. The version is in
the key and a swap starts an empty cache, so a stale score can never outlive its model.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

import numpy as np


class ResultCache:
    """A bounded LRU with a time-to-live; thread-safe, as batches are scored off the event loop."""

    def __init__(self, size: int, ttl_s: float) -> None:
        self._size = size
        self._ttl_s = ttl_s
        self._entries: OrderedDict[tuple[str, bytes], tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def keys(version: str, features: np.ndarray) -> list[tuple[str, bytes]]:
        rows = np.ascontiguousarray(features, dtype=np.float64)
        return [(version, row.tobytes()) for row in rows]

    def get(self, keys: list[tuple[str, bytes]]) -> np.ndarray:
        """Cached scores aligned with `keys`; NaN where missing or expired."""
        found = np.full(len(keys), np.nan)
        if not self._size:
            return found
        now = time.monotonic()
        with self._lock:
            for i, key in enumerate(keys):
                entry = self._entries.get(key)
                if entry is None:
                    continue
                score, expires = entry
                if expires <= now:
                    del self._entries[key]
                    continue
                self._entries.move_to_end(key)
                found[i] = score
        return found

    def put(self, keys: list[tuple[str, bytes]], scores: np.ndarray) -> None:
        if not self._size:
            return
        expires = time.monotonic() + self._ttl_s
        with self._lock:
            for key, score in zip(keys, scores, strict=True):
                self._entries[key] = (float(score), expires)
                self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
