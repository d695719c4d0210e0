"""Knobs of the event bus, the stream consumer and the online event buffers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, TypedDict

from pydantic import BaseModel, ConfigDict, Field, FilePath, SecretStr, model_validator

KafkaSecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
KAFKA_SECURITY = "FRAUDPIPE_STREAM__KAFKA__"
REDIS_TLS = "FRAUDPIPE_STREAM__REDIS__"


class KafkaSecurity(BaseModel):
    """`FRAUDPIPE_STREAM__KAFKA__<FIELD>`: how every Kafka client (producer, consumer, admin) reaches a
    `kafka://` bus; each field is the librdkafka property of the same name.

    The default, PLAINTEXT, is what a plain broker and the local profile's in-process one speak (that
    one speaks nothing else, so these settings apply to `kafka://` buses only).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    security_protocol: KafkaSecurityProtocol = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (librdkafka's security.protocol)"
    )
    sasl_mechanism: SaslMechanism | None = Field(
        None, description="SASL_*: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (sasl.mechanisms)"
    )
    sasl_username: str | None = Field(None, description="SASL_*: the client's user name (sasl.username)")
    sasl_password: SecretStr | None = Field(None, description="SASL_*: its password (sasl.password)")
    ssl_ca_location: FilePath | None = Field(
        None,
        description="SSL, SASL_SSL: CA certificates (PEM) the brokers' certificates are checked "
        "against; default: the system's (ssl.ca.location)",
    )
    ssl_certificate_location: FilePath | None = Field(
        None, description="SSL, SASL_SSL: client certificate (PEM), for mutual TLS (ssl.certificate.location)"
    )
    ssl_key_location: FilePath | None = Field(
        None, description="SSL, SASL_SSL: the client certificate's private key (PEM) (ssl.key.location)"
    )
    ssl_key_password: SecretStr | None = Field(
        None, description="SSL, SASL_SSL: the private key's password, if encrypted (ssl.key.password)"
    )

    @model_validator(mode="after")
    def _complete_for_the_protocol(self) -> KafkaSecurity:
        sasl = {
            "sasl_mechanism": self.sasl_mechanism,
            "sasl_username": self.sasl_username,
            "sasl_password": self.sasl_password,
        }
        ssl = {
            "ssl_ca_location": self.ssl_ca_location,
            "ssl_certificate_location": self.ssl_certificate_location,
            "ssl_key_location": self.ssl_key_location,
            "ssl_key_password": self.ssl_key_password,
        }
        protocol = self.security_protocol
        if protocol.startswith("SASL_"):
            _require(protocol, [name for name, value in sasl.items() if value is None])
        else:
            _refuse(protocol, "SASL_PLAINTEXT or SASL_SSL", sasl)
        if not protocol.endswith("SSL"):
            _refuse(protocol, "SSL or SASL_SSL", ssl)
        if (self.ssl_certificate_location is None) != (self.ssl_key_location is None):
            raise ValueError(
                f"{KAFKA_SECURITY}SSL_CERTIFICATE_LOCATION and {KAFKA_SECURITY}SSL_KEY_LOCATION go together"
            )
        if self.ssl_key_password is not None and self.ssl_key_location is None:
            raise ValueError(f"{KAFKA_SECURITY}SSL_KEY_PASSWORD needs {KAFKA_SECURITY}SSL_KEY_LOCATION")
        return self

    def client_config(self) -> dict[str, str]:
        """These settings as librdkafka properties, secrets in clear: for a client's config, never a log."""
        config: dict[str, str] = {"security.protocol": self.security_protocol}
        for name, value in (
            ("sasl.mechanisms", self.sasl_mechanism),
            ("sasl.username", self.sasl_username),
            ("sasl.password", self.sasl_password),
            ("ssl.ca.location", self.ssl_ca_location),
            ("ssl.certificate.location", self.ssl_certificate_location),
            ("ssl.key.location", self.ssl_key_location),
            ("ssl.key.password", self.ssl_key_password),
        ):
            if value is not None:
                config[name] = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        return config


def _require(protocol: str, missing: list[str]) -> None:
    if missing:
        names = ", ".join(f"{KAFKA_SECURITY}{name.upper()}" for name in missing)
        raise ValueError(f"security protocol {protocol} needs {names}")


def _refuse(protocol: str, needed: str, values: Mapping[str, object]) -> None:
    """A setting the protocol would ignore is a mistake: the operator meant a protocol that uses it."""
    given = [f"{KAFKA_SECURITY}{name.upper()}" for name, value in values.items() if value is not None]
    if given:
        raise ValueError(f"{', '.join(given)}: only for security protocol {needed}, not {protocol}")


class RedisTlsOptions(TypedDict, total=False):
    """The TLS files as redis-py's client keywords."""

    ssl_ca_certs: str
    ssl_certfile: str
    ssl_keyfile: str


class RedisTls(BaseModel):
    """`FRAUDPIPE_STREAM__REDIS__<FIELD>`: TLS of `rediss://` URLs, for the Redis bus and the online store.

    redis-py reads no certificate file from a URL's query, so these are handed to its client as
    keywords (`client_options`). Unset, a `rediss://` server is checked against the system's CAs.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_file: FilePath | None = Field(
        None, description="rediss://: CA certificates (PEM) the server's certificate is checked against"
    )
    cert_file: FilePath | None = Field(
        None, description="rediss://: client certificate (PEM), for a server that asks for one"
    )
    key_file: FilePath | None = Field(
        None, description="rediss://: the client certificate's private key (PEM)"
    )

    @model_validator(mode="after")
    def _certificate_with_its_key(self) -> RedisTls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError(f"{REDIS_TLS}CERT_FILE and {REDIS_TLS}KEY_FILE go together")
        return self

    def client_options(self, url: str) -> RedisTlsOptions:
        """redis-py keywords for a client of `url`: the TLS files, for `rediss://` only.

        Raises:
            ValueError: TLS files are set but `url` is not `rediss://`: the operator meant TLS and
                would get plaintext (only the scheme is named: a URL may carry a password).
        """
        options = RedisTlsOptions()
        if self.ca_file is not None:
            options["ssl_ca_certs"] = str(self.ca_file)
        if self.cert_file is not None and self.key_file is not None:
            options["ssl_certfile"], options["ssl_keyfile"] = str(self.cert_file), str(self.key_file)
        scheme = url.partition("://")[0]
        if options and scheme != "rediss":
            raise ValueError(f"{REDIS_TLS}* are set but the Redis URL's scheme is {scheme!r}: use rediss://")
        return options


PLAINTEXT_KAFKA = KafkaSecurity()
"""The default: no TLS, no SASL, as before these settings existed."""
SYSTEM_REDIS_TLS = RedisTls()
"""The default: no TLS files; a `rediss://` server is checked against the system's CAs."""


class StreamSettings(BaseModel):
    """`FRAUDPIPE_STREAM__<FIELD>`.

    The bus and the online store themselves are named by `FRAUDPIPE_BUS_URL`
    and `FRAUDPIPE_ONLINE_URL` (prod, cluster); the local profile derives both
    from the data directory. How they are reached securely: `kafka` (TLS, SASL)
    and `redis` (the TLS files of `rediss://`).
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
    kafka: KafkaSecurity = PLAINTEXT_KAFKA
    redis: RedisTls = SYSTEM_REDIS_TLS

    def online_prefix_for(self, online_url: str) -> str:
        if self.online_prefix is not None:
            return self.online_prefix
        return "fraudpipe:online:" if online_url.startswith(("redis://", "rediss://")) else ""
