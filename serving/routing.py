"""Champion / challenger traffic split: sticky per customer, so one card never flips between models."""

from __future__ import annotations

import numpy as np

from settings import Rollout

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def customer_buckets(customer_ids: np.ndarray) -> np.ndarray:
    """A stable, uniform number in [0, 1) per customer (splitmix64): the same on every replica and restart."""
    with np.errstate(over="ignore"):
        z = np.asarray(customer_ids, dtype=np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


class Router:
    """Decides per request which model answers, from the rollout config and when it was applied."""

    def __init__(self, rollout: Rollout, applied_at: float) -> None:
        self.rollout = rollout
        self._applied_at = applied_at

    def challenger_share(self, now: float) -> float:
        """The share of customers the challenger answers for at `now` (0 in champion and shadow modes)."""
        rollout = self.rollout
        if rollout.mode == "ab":
            return rollout.challenger_share
        if rollout.mode == "canary":
            steps = int(max(0.0, now - self._applied_at) // rollout.canary_every_s)
            return min(rollout.canary_max, rollout.canary_start + steps * rollout.canary_step)
        return 0.0

    @property
    def shadow(self) -> bool:
        return self.rollout.mode == "shadow"

    def to_challenger(self, customer_ids: np.ndarray, now: float) -> np.ndarray:
        share = self.challenger_share(now)
        if share <= 0.0:
            return np.zeros(len(customer_ids), dtype=bool)
        return customer_buckets(customer_ids) < share
