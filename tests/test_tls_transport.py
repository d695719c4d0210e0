"""Transport security by settings, against real TLS servers this module starts.

A CA and a server certificate for 127.0.0.1 are made per module (and a second CA,
which signed nothing). Redis: a `redis-server` with TLS on, its plaintext port
off; the Redis bus and the online store reach it over `rediss://` with the CA
setting, and a client without the CA, or with the other one, is refused by its
own certificate check: TLS is real and verified.

Kafka: librdkafka's mock cluster speaks plaintext only and no SASL (its request
handlers have no SaslHandshake/SaslAuthenticate), and no Kafka broker can be
fetched here. So `KafkaFront` stands in front of a one-broker mock cluster as a
TLS and SASL/PLAIN terminating proxy: it completes the TLS handshake with the
server certificate, answers SaslHandshake and SaslAuthenticate itself (checking
the user name and password), and passes the rest through. It also rewrites the
broker's port in Metadata and FindCoordinator responses to its own, so every
later connection of a client (to the partition leader, to the group
coordinator) comes back through it instead of going to the mock's plaintext
port. The TLS and the SASL exchange are thus real, on the wire, as librdkafka
does them with these settings; the broker behind is the mock, and the SASL
server is this module's (PLAIN only: SCRAM is checked as configuration only).
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import shutil
import ssl
import struct
import subprocess
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench.ports import free_port
from settings import Settings, load_settings
from streaming.bus import DeliveryError, Message
from streaming.bus_kafka import mock_kafka_cluster
from streaming.config import StreamConfig
from tests.conftest import needs_tool

REDIS_SERVER = shutil.which("redis-server")


@dataclass(frozen=True)
class Pki:
    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    ca: bool,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA and the server certificate it signed (127.0.0.1, localhost), and another CA."""
    root = tmp_path_factory.mktemp("pki")
    files = Pki(root / "ca.pem", root / "other_ca.pem", root / "server.pem", root / "server.key")
    ca_key, other_key, server_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    for path, name, key in ((files.ca, "test CA", ca_key), (files.other_ca, "another CA", other_key)):
        path.write_bytes(_certificate(name, key, name, key, ca=True).public_bytes(serialization.Encoding.PEM))
    server = _certificate("127.0.0.1", server_key, "test CA", ca_key, ca=False)
    files.server_cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    _write_key(server_key, files.server_key)
    return files


def settings_from_environment(monkeypatch: pytest.MonkeyPatch, data_dir: Path, **variables: str) -> Settings:
    """The settings a process started with these `FRAUDPIPE_*` variables reads: the real path to a
    `StreamConfig`, environment first."""
    for name, value in variables.items():
        monkeypatch.setenv(f"FRAUDPIPE_{name}", value)
    return load_settings(profile="local", data_dir=data_dir)


# --- Redis ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_tls_port(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A redis-server answering TLS only (its plaintext port off), clients not asked for certificates."""
    assert REDIS_SERVER is not None, "redis-server is not installed"
    port = free_port()
    options = {
        "bind": "127.0.0.1",
        "port": "0",
        "tls-port": str(port),
        "tls-cert-file": str(pki.server_cert),
        "tls-key-file": str(pki.server_key),
        "tls-ca-cert-file": str(pki.ca),
        "tls-auth-clients": "no",
        "save": "",
        "appendonly": "no",
        "dir": str(tmp_path_factory.mktemp("redis-tls")),
    }
    server = subprocess.Popen(
        [REDIS_SERVER, *(part for name, value in options.items() for part in (f"--{name}", value))],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        client = redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(pki.ca))
        deadline = time.monotonic() + 15
        while True:
            if server.poll() is not None:
                output = server.stdout.read() if server.stdout else ""
                pytest.fail(f"redis-server with TLS did not start (built without TLS?):\n{output}")
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()
        yield port
    finally:
        server.terminate()
        server.wait(10)


def redis_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, port: int, ca: Path | None) -> Settings:
    """Bus and online store on the TLS Redis, in a namespace of their own; the CA setting when given."""
    namespace = f"tls{uuid.uuid4().hex[:8]}."
    url = f"rediss://127.0.0.1:{port}/0"
    variables = {
        "BUS_URL": url,
        "ONLINE_URL": url,
        "STREAM__TOPIC_PREFIX": namespace,
        "STREAM__ONLINE_PREFIX": namespace,
    }
    if ca is not None:
        variables["STREAM__REDIS__CA_FILE"] = str(ca)
    return settings_from_environment(monkeypatch, tmp_path, **variables)


@needs_tool(REDIS_SERVER is not None, "redis-server")
def test_the_redis_bus_over_tls_produces_consumes_and_commits(
    pki: Pki, redis_tls_port: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = redis_settings(monkeypatch, tmp_path, redis_tls_port, pki.ca)
    stream = StreamConfig.from_settings(settings)
    bus, topic = stream.bus(), stream.topics().transactions
    bus.ensure_topics([topic])
    producer = bus.producer()
    sent = [(f"card{n}".encode(), f'{{"n": {n}}}'.encode()) for n in range(5)]
    for key, value in sent:
        producer.send(topic, value, key)
    producer.flush()

    consumer = bus.consumer(topic, stream.group, "tls-member")
    messages = consumer.poll(100, timeout_s=2)
    assert [(m.key, m.value) for m in messages] == sent
    assert consumer.lag() == len(sent)  # read, not yet committed: still pending
    consumer.commit(messages)
    assert consumer.lag() == 0
    consumer.close()

    again = bus.consumer(topic, stream.group, "tls-member")  # the same member, restarted
    assert again.poll(100, timeout_s=0.2) == []  # the commit held: nothing comes back
    again.close()


@needs_tool(REDIS_SERVER is not None, "redis-server")
def test_the_online_store_over_tls_writes_and_reads(
    pki: Pki, redis_tls_port: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = redis_settings(monkeypatch, tmp_path, redis_tls_port, pki.ca)
    at = pd.Timestamp("2024-05-01 12:00", tz="UTC")
    earlier = pd.DataFrame(
        {
            "TRANSACTION_ID": [1],
            "TX_DATETIME": pd.DatetimeIndex([at - pd.Timedelta(hours=2)]).as_unit("ns"),
            "CUSTOMER_ID": [7],
            "TERMINAL_ID": [3],
            "TX_AMOUNT": [10.0],
        }
    )
    request = earlier.assign(
        TRANSACTION_ID=[2], TX_DATETIME=pd.DatetimeIndex([at]).as_unit("ns"), TX_AMOUNT=[30.0]
    )
    with StreamConfig.from_settings(settings).online() as online:
        online.add_transactions(earlier)
        features = online.features(request).values.iloc[0]
        online.clear()
    assert features["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 2
    assert features["CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"] == 20.0


def _with_causes(error: BaseException) -> str:
    """An error and its causes, as text: a wrapper may say what failed, its cause why."""
    texts = []
    cause: BaseException | None = error
    while cause is not None:
        texts.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    return "\n".join(texts)


@needs_tool(REDIS_SERVER is not None, "redis-server")
@pytest.mark.parametrize("ca", ["none", "another CA"])
def test_a_redis_client_without_the_ca_is_refused(
    ca: str, pki: Pki, redis_tls_port: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The server's certificate is checked: against the system's CAs, or a CA that did not sign it."""
    settings = redis_settings(monkeypatch, tmp_path, redis_tls_port, None if ca == "none" else pki.other_ca)
    stream = StreamConfig.from_settings(settings)
    producer = stream.bus().producer()
    producer.send(stream.topics().transactions, b"{}")
    with pytest.raises(DeliveryError) as undelivered:
        producer.flush()
    assert "certificate verify failed" in _with_causes(undelivered.value)
    # The store may report an unreachable server as an error of its own, the reason as its cause.
    with pytest.raises((redis.ConnectionError, RuntimeError)) as unread, stream.online() as online:
        online.dump()
    assert "certificate verify failed" in _with_causes(unread.value)


def test_redis_tls_files_with_a_plaintext_url_are_refused_without_echoing_it(
    pki: Pki, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """TLS files next to a redis:// URL mean someone expects TLS and would get plaintext."""
    url = "redis://:hunter2@127.0.0.1:6379/0"
    settings = settings_from_environment(
        monkeypatch, tmp_path, BUS_URL=url, ONLINE_URL=url, STREAM__REDIS__CA_FILE=str(pki.ca)
    )
    stream = StreamConfig.from_settings(settings)
    for open_it in (stream.bus, stream.online):
        with pytest.raises(ValueError, match="use rediss://") as refused:
            open_it()
        assert "hunter2" not in str(refused.value)


# --- Kafka ------------------------------------------------------------------------------------------

API_VERSIONS, METADATA, FIND_COORDINATOR, SASL_HANDSHAKE, SASL_AUTHENTICATE = 18, 3, 10, 17, 36
CAPPED = {METADATA: 8, FIND_COORDINATOR: 2}
"""The last versions before these responses became flexible (compact strings): simple to rewrite."""
UNSUPPORTED_SASL_MECHANISM, SASL_AUTHENTICATION_FAILED = 33, 58


def _string(value: str | None) -> bytes:
    if value is None:
        return struct.pack(">h", -1)
    raw = value.encode()
    return struct.pack(">h", len(raw)) + raw


def _skip_string(payload: bytes | bytearray, at: int) -> int:
    (length,) = struct.unpack_from(">h", payload, at)
    return at + 2 + max(length, 0)


class KafkaFront:
    """A TLS (and, with `users`, SASL/PLAIN) terminating proxy before a one-broker Kafka cluster.

    See the module docstring. Counts the connections that authenticated and those refused.
    """

    def __init__(self, upstream: str, pki: Pki, users: dict[str, str] | None = None) -> None:
        host, _, port = upstream.rpartition(":")
        self._upstream = (host, int(port))
        self._users = users
        self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._tls.load_cert_chain(pki.server_cert, pki.server_key)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        self.authenticated = 0
        self.refused = 0

    def __enter__(self) -> KafkaFront:
        self._thread.start()
        start = asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._tls)
        self._server = asyncio.run_coroutine_threadsafe(start, self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *_exc: object) -> None:
        async def stop() -> None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            tasks = asyncio.all_tasks() - {asyncio.current_task()}
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _serve(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        broker_in, broker_out = await asyncio.open_connection(*self._upstream)
        self._writers |= {client_out, broker_out}
        pending: deque[tuple[int, int, int]] = deque()  # forwarded requests: key, version, correlation id
        try:
            if self._users is None or await self._authenticate(client_in, client_out, broker_in, broker_out):
                await asyncio.gather(
                    self._requests(client_in, broker_out, pending),
                    self._responses(broker_in, client_out, pending),
                )
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass  # a client or the broker hung up
        finally:
            for writer in (client_out, broker_out):
                writer.close()
                self._writers.discard(writer)

    async def _authenticate(
        self,
        client_in: asyncio.StreamReader,
        client_out: asyncio.StreamWriter,
        broker_in: asyncio.StreamReader,
        broker_out: asyncio.StreamWriter,
    ) -> bool:
        """A broker's SASL exchange: ApiVersions (passed on), SaslHandshake, SaslAuthenticate."""
        assert self._users is not None
        while True:
            request = await _frame(client_in)
            key, version, correlation = struct.unpack_from(">hhi", request)
            body = _skip_string(request, 8)  # past the client id: request header v1
            if key == API_VERSIONS:
                broker_out.write(_framed(request))
                response = await _frame(broker_in)
                client_out.write(_framed(self._rewrite(key, version, response)))
            elif key == SASL_HANDSHAKE:
                length = struct.unpack_from(">h", request, body)[0]
                mechanism = request[body + 2 : body + 2 + length].decode()
                error = 0 if mechanism == "PLAIN" else UNSUPPORTED_SASL_MECHANISM
                reply = struct.pack(">hi", error, 1) + _string("PLAIN")
                client_out.write(_framed(struct.pack(">i", correlation) + reply))
                if error:
                    return False
            elif key == SASL_AUTHENTICATE:
                length = struct.unpack_from(">i", request, body)[0]
                _authzid, user, password = request[body + 4 : body + 4 + length].decode().split("\0")
                accepted = self._users.get(user) == password
                error = 0 if accepted else SASL_AUTHENTICATION_FAILED
                reply = struct.pack(">h", error) + _string(
                    None if accepted else "invalid user name or password"
                )
                reply += struct.pack(">i", 0) + (struct.pack(">q", 0) if version >= 1 else b"")
                client_out.write(_framed(struct.pack(">i", correlation) + reply))
                await client_out.drain()
                if accepted:
                    self.authenticated += 1
                else:
                    self.refused += 1
                return accepted
            else:
                return False  # a request before authenticating: a broker hangs up
            await client_out.drain()

    async def _requests(
        self,
        client_in: asyncio.StreamReader,
        broker_out: asyncio.StreamWriter,
        pending: deque[tuple[int, int, int]],
    ) -> None:
        while True:
            request = await _frame(client_in)
            pending.append(struct.unpack_from(">hhi", request))
            broker_out.write(_framed(request))
            await broker_out.drain()

    async def _responses(
        self,
        broker_in: asyncio.StreamReader,
        client_out: asyncio.StreamWriter,
        pending: deque[tuple[int, int, int]],
    ) -> None:
        while True:
            response = await _frame(broker_in)
            key, version, correlation = pending.popleft()
            assert struct.unpack_from(">i", response)[0] == correlation, "responses out of order"
            client_out.write(_framed(self._rewrite(key, version, response)))
            await client_out.drain()

    def _rewrite(self, key: int, version: int, response: bytes) -> bytes:
        """Cap Metadata and FindCoordinator at their last non-flexible versions and add the SASL
        requests (ApiVersions), and point each broker address at this proxy (Metadata,
        FindCoordinator). Responses here have header v0: the correlation id, 4 bytes."""
        out = bytearray(response)
        if key == API_VERSIONS and version <= 2:
            (count,) = struct.unpack_from(">i", out, 6)
            entries = []
            for n in range(count):
                api, low, high = struct.unpack_from(">hhh", out, 10 + 6 * n)
                entries.append((api, low, min(high, CAPPED.get(api, high))))
            if self._users is not None:
                entries += [(SASL_HANDSHAKE, 0, 1), (SASL_AUTHENTICATE, 0, 1)]
            rest = bytes(out[10 + 6 * count :])
            packed = b"".join(struct.pack(">hhh", *entry) for entry in entries)
            return bytes(out[:6]) + struct.pack(">i", len(entries)) + packed + rest
        if key == METADATA:
            at = 4 + (4 if version >= 3 else 0)  # throttle time
            (brokers,) = struct.unpack_from(">i", out, at)
            at += 4
            for _ in range(brokers):
                at = _skip_string(out, at + 4)  # node id, host
                struct.pack_into(">i", out, at, self.port)
                at += 4
                if version >= 1:
                    at = _skip_string(out, at)  # rack
        elif key == FIND_COORDINATOR:
            at = 4 + (4 if version >= 1 else 0)  # throttle time
            (error,) = struct.unpack_from(">h", out, at)
            at += 2
            if version >= 1:
                at = _skip_string(out, at)  # error message
            if error == 0:
                at = _skip_string(out, at + 4)  # node id, host
                struct.pack_into(">i", out, at, self.port)
        return bytes(out)


async def _frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = struct.unpack(">i", await reader.readexactly(4))
    return await reader.readexactly(size)


def _framed(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


@pytest.fixture(scope="module")
def one_broker() -> Iterator[str]:
    """A one-broker mock cluster: the proxy maps its single broker onto itself."""
    with mock_kafka_cluster(num_brokers=1) as servers:
        yield servers


USERS = {"fraudpipe": "correct horse battery staple"}


def kafka_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, front: KafkaFront, **security: str
) -> Settings:
    """A `kafka://` bus at the front, topics in a namespace of their own, `security` as its settings."""
    variables = {f"STREAM__KAFKA__{name.upper()}": value for name, value in security.items()}
    return settings_from_environment(
        monkeypatch,
        tmp_path,
        BUS_URL=f"kafka://{front.bootstrap}",
        STREAM__TOPIC_PREFIX=f"tls{uuid.uuid4().hex[:8]}.",
        STREAM__SESSION_TIMEOUT_MS="6000",
        **variables,
    )


def test_a_kafka_bus_over_sasl_ssl_produces_consumes_and_commits(
    pki: Pki, one_broker: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Admin (topics), producer, consumer group and commits all through TLS and SASL/PLAIN."""
    with KafkaFront(one_broker, pki, USERS) as front:
        settings = kafka_settings(
            monkeypatch,
            tmp_path,
            front,
            security_protocol="SASL_SSL",
            sasl_mechanism="PLAIN",
            sasl_username="fraudpipe",
            sasl_password=USERS["fraudpipe"],
            ssl_ca_location=str(pki.ca),
        )
        stream = StreamConfig.from_settings(settings)
        bus, topic = stream.bus(), stream.topics().transactions
        bus.ensure_topics([topic])
        producer = bus.producer()
        sent = [(f"card{n}".encode(), f'{{"n": {n}}}'.encode()) for n in range(5)]
        for key, value in sent:
            producer.send(topic, value, key)
        producer.flush(10)

        consumer = bus.consumer(topic, stream.group, "tls-member")
        received: list[Message] = []
        deadline = time.monotonic() + 30
        while len(received) < len(sent) and time.monotonic() < deadline:
            received += consumer.poll(100, timeout_s=0.5)
        assert sorted((m.key, m.value) for m in received) == sent
        consumer.commit(received)
        assert consumer.lag() == 0
        consumer.close()
        # Each client logs in on its bootstrap connection, then on the broker it learnt of.
        assert front.authenticated >= 2 and front.refused == 0


@pytest.mark.parametrize("ca", ["none", "another CA"])
def test_a_kafka_client_without_the_ca_is_refused(
    ca: str,
    pki: Pki,
    one_broker: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """librdkafka checks the broker's certificate: against the system's CAs, or a CA that did not sign it."""
    with KafkaFront(one_broker, pki) as front:
        security = {"security_protocol": "SSL"}
        if ca != "none":
            security["ssl_ca_location"] = str(pki.other_ca)
        settings = kafka_settings(monkeypatch, tmp_path, front, **security)
        stream = StreamConfig.from_settings(settings)
        producer = stream.bus().producer()
        producer.send(stream.topics().transactions, b"{}")
        with caplog.at_level(logging.ERROR, logger="streaming.kafka"), pytest.raises(DeliveryError):
            producer.flush(3)
    assert "certificate verify failed" in caplog.text


def test_a_wrong_sasl_password_is_refused(
    pki: Pki,
    one_broker: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The password setting is what goes on the wire: a wrong one is refused by the SASL server."""
    with KafkaFront(one_broker, pki, USERS) as front:
        settings = kafka_settings(
            monkeypatch,
            tmp_path,
            front,
            security_protocol="SASL_SSL",
            sasl_mechanism="PLAIN",
            sasl_username="fraudpipe",
            sasl_password="guess",
            ssl_ca_location=str(pki.ca),
        )
        stream = StreamConfig.from_settings(settings)
        producer = stream.bus().producer()
        producer.send(stream.topics().transactions, b"{}")
        with caplog.at_level(logging.ERROR, logger="streaming.kafka"), pytest.raises(DeliveryError):
            producer.flush(3)
        assert front.refused >= 1 and front.authenticated == 0
    assert "invalid user name or password" in caplog.text
    assert "guess" not in caplog.text


def test_every_kafka_security_setting_reaches_librdkafka_by_its_name(
    pki: Pki, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """SCRAM and client certificates are not served by `KafkaFront`: they are checked as every
    client's configuration, which librdkafka accepts (it refuses unknown properties and values)."""
    settings = settings_from_environment(
        monkeypatch,
        tmp_path,
        BUS_URL="kafka://127.0.0.1:1",
        STREAM__KAFKA__SECURITY_PROTOCOL="SASL_SSL",
        STREAM__KAFKA__SASL_MECHANISM="SCRAM-SHA-256",
        STREAM__KAFKA__SASL_USERNAME="fraudpipe",
        STREAM__KAFKA__SASL_PASSWORD="hunter2",
        STREAM__KAFKA__SSL_CA_LOCATION=str(pki.ca),
        STREAM__KAFKA__SSL_CERTIFICATE_LOCATION=str(pki.server_cert),
        STREAM__KAFKA__SSL_KEY_LOCATION=str(pki.server_key),
        STREAM__KAFKA__SSL_KEY_PASSWORD="unused: the key is not encrypted",
    )
    assert settings.stream.kafka.client_config() == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "SCRAM-SHA-256",
        "sasl.username": "fraudpipe",
        "sasl.password": "hunter2",
        "ssl.ca.location": str(pki.ca),
        "ssl.certificate.location": str(pki.server_cert),
        "ssl.key.location": str(pki.server_key),
        "ssl.key.password": "unused: the key is not encrypted",
    }
    assert "hunter2" not in repr(settings)
    StreamConfig.from_settings(settings).bus().producer()  # librdkafka takes the configuration
