"""Knobs of the event bus, the stream consumer and the online event buffers."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class StreamSettings(BaseModel):
    """`FRAUDPIPE_STREAM__<FIELD>`.

    The bus and the online store themselves are named by `FRAUDPIPE_BUS_URL`
    and `FRAUDPIPE_ONLINE_URL` (prod, cluster); the local profile derives both
    from the data directory.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    topic_prefix: str = Field("fraudpipe.", description="put before every topic / stream name")
    online_prefix: str | None = Field(
        None,
        description="put before every online key (Redis) or table (SQLite); "
        "default `fraudpipe:online:` on Redis, none on SQLite",
    )
    group: str = Field(
        "fraudpipe-landing", min_length=1, description="consumer group of the landing consumers"
    )
    batch_size: int = Field(
        2_000, ge=1, le=100_000, description="messages per micro-batch: the bound in flight"
    )
    session_timeout_ms: int = Field(
        10_000, ge=1_000, description="ms a dead Kafka consumer keeps its partitions"
    )
    metrics_port: int = Field(
        9464, ge=0, le=65535, description="consumer's Prometheus port on 127.0.0.1; 0: off"
    )
    push_port: int = Field(8090, ge=1, le=65535, description="HTTP push endpoint's port on 127.0.0.1")
    online_grace_hours: float = Field(
        24.0, ge=0, description="hours a read may lag the newest applied event after a trim"
    )
    complete_after_minutes: int = Field(
        60, ge=0, description="minutes after a day's end before the stream sensor lands it"
    )

    def online_prefix_for(self, online_url: str) -> str:
        if self.online_prefix is not None:
            return self.online_prefix
        return "fraudpipe:online:" if online_url.startswith(("redis://", "rediss://")) else ""
