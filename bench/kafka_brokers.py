"""A librdkafka mock cluster whose brokers can go down and come back, as in a restart (tests, `make chaos`).

`streaming.bus_kafka.mock_kafka_cluster` hosts its cluster inside a Python producer, which
exposes no handle to the cluster. librdkafka's own mock API does (`rdkafka_mock.h`), and
confluent-kafka's wheel ships the library with those symbols exported, so ctypes reaches it:
`rd_kafka_mock_broker_set_down` closes a broker's connections and refuses new ones, keeping
its logs, which is what clients see while a broker restarts.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import confluent_kafka

_LIBRARY = next(
    (Path(confluent_kafka.__file__).parent.parent / "confluent_kafka.libs").glob("librdkafka*.so*")
)
_PRODUCER = 0  # RD_KAFKA_PRODUCER


def _librdkafka() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(_LIBRARY))
    lib.rd_kafka_conf_new.restype = ctypes.c_void_p
    lib.rd_kafka_new.restype = ctypes.c_void_p
    lib.rd_kafka_new.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_mock_cluster_new.restype = ctypes.c_void_p
    lib.rd_kafka_mock_cluster_new.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.rd_kafka_mock_cluster_bootstraps.restype = ctypes.c_char_p
    lib.rd_kafka_mock_cluster_bootstraps.argtypes = [ctypes.c_void_p]
    for name in ("rd_kafka_mock_broker_set_down", "rd_kafka_mock_broker_set_up"):
        getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_int32]
        getattr(lib, name).restype = ctypes.c_int
    lib.rd_kafka_mock_cluster_destroy.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_destroy.argtypes = [ctypes.c_void_p]
    return lib


@dataclass
class MockBrokers:
    """A running mock cluster: its bootstrap servers, and its brokers' power switch."""

    bootstrap: str
    count: int
    _lib: ctypes.CDLL
    _cluster: int

    def down(self) -> None:
        """Every broker stops answering (connections closed, new ones refused); data is kept."""
        self._switch("rd_kafka_mock_broker_set_down")

    def up(self) -> None:
        self._switch("rd_kafka_mock_broker_set_up")

    def _switch(self, function: str) -> None:
        for broker in range(1, self.count + 1):
            if (error := getattr(self._lib, function)(self._cluster, broker)) != 0:
                raise RuntimeError(f"{function}({broker}) failed: librdkafka error {error}")


@contextmanager
def mock_brokers(count: int = 3) -> Iterator[MockBrokers]:
    lib = _librdkafka()
    error = ctypes.create_string_buffer(512)
    handle = lib.rd_kafka_new(_PRODUCER, lib.rd_kafka_conf_new(), error, len(error))
    if not handle:
        raise RuntimeError(f"rd_kafka_new: {error.value.decode()}")
    cluster = lib.rd_kafka_mock_cluster_new(handle, count)
    try:
        yield MockBrokers(lib.rd_kafka_mock_cluster_bootstraps(cluster).decode(), count, lib, cluster)
    finally:
        lib.rd_kafka_mock_cluster_destroy(cluster)
        lib.rd_kafka_destroy(handle)
