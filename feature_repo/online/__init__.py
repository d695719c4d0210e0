"""The online event buffers: per-entity recent events, read at each request's own time.

Streaming writes them (`streaming.consumer`), serving reads them
(`serving.service`), both through `EventBuffers`; the read evaluates the
feature declarations with the offline engine, so online equals offline.
"""

from __future__ import annotations

from datetime import timedelta

from feature_repo.online.buffers import (
    DEFAULT_GRACE,
    REPORT_COLUMNS,
    TRANSACTION_COLUMNS,
    BufferState,
    EventBuffers,
    OnlineFeatures,
    OnlineStoreUnavailableError,
    StaleReadError,
)
from feature_repo.online.redis_store import RedisEventBuffers
from feature_repo.online.sqlite_store import SqliteEventBuffers
from settings.stream import SYSTEM_REDIS_TLS, RedisTls

__all__ = [
    "DEFAULT_GRACE",
    "REPORT_COLUMNS",
    "TRANSACTION_COLUMNS",
    "BufferState",
    "EventBuffers",
    "OnlineFeatures",
    "OnlineStoreUnavailableError",
    "RedisEventBuffers",
    "SqliteEventBuffers",
    "StaleReadError",
    "open_event_buffers",
]


def open_event_buffers(
    url: str, prefix: str = "", grace: timedelta = DEFAULT_GRACE, tls: RedisTls = SYSTEM_REDIS_TLS
) -> EventBuffers:
    """The store a profile names: `sqlite:///relative.db`, `sqlite:////absolute.db`, `redis://...` or
    `rediss://...` (TLS).

    Args:
        url: where the buffers live.
        prefix: the namespace (a table prefix for SQLite, a key prefix for Redis).
        grace: see `EventBuffers`.
        tls: the CA and client certificate of a `rediss://` URL; SQLite ignores it.

    Raises:
        ValueError: for any other kind of URL, or TLS files for a Redis URL that is not `rediss://`.
    """
    if url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
        return SqliteEventBuffers(url[len("sqlite:///") :], prefix, grace)
    scheme = url.partition("://")[0] if "://" in url else ""
    if scheme in ("redis", "rediss", "unix"):
        return RedisEventBuffers(url, prefix, grace, tls)
    # Only the scheme is echoed: a URL may carry a password.
    raise ValueError(
        f"unsupported online store URL scheme {scheme!r}: expected sqlite:///path/to.db or redis://host:port/db"
    )
