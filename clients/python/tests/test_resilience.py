"""Retries and the circuit breaker against a server that stops and comes back."""

from __future__ import annotations

import threading
import time
from typing import Iterator

import pytest

from dnd_cache import CacheClient, CacheConnectionError, CircuitOpenError, ClientConfig
from dnd_cache.breaker import CLOSED, OPEN
from server import Server, require_binary


@pytest.fixture
def own_server() -> Iterator[Server]:
    srv = Server(require_binary()).start()
    yield srv
    srv.stop()


def test_breaker_opens_fails_fast_and_recovers(own_server: Server) -> None:
    cfg = ClientConfig(
        retries=1, backoff_base=0.01, backoff_max=0.02, connect_timeout=1.0,
        breaker_min_requests=6, breaker_cooldown=1.0,
    )
    with CacheClient("breaker", address=own_server.address, config=cfg) as client:
        client.set("br:key", "v")
        own_server.stop()

        failures = 0
        with pytest.raises(CircuitOpenError) as info:
            while True:
                try:
                    client.get("br:key")
                except CacheConnectionError:
                    failures += 1
                    assert failures <= 6, "the breaker should have opened"
        assert info.value.code == "CLIENT_002"
        assert client.breaker.state == OPEN

        started = time.monotonic()
        for _ in range(20):
            with pytest.raises(CircuitOpenError):
                client.get("br:key")
        assert time.monotonic() - started < 0.1, "an open breaker fails without network I/O"

        own_server.start()  # same public port, new shard ports and seed
        time.sleep(cfg.breaker_cooldown + 0.1)
        assert client.get("br:key") is None  # the new server starts empty
        assert client.breaker.state == CLOSED
        client.set("br:key", "back")
        assert client.get("br:key") == b"back"


def test_retries_ride_over_a_restart(own_server: Server) -> None:
    cfg = ClientConfig(retries=6, backoff_base=0.2, backoff_max=0.5, connect_timeout=1.0)
    with CacheClient("retries", address=own_server.address, config=cfg) as client:
        client.set("rt:key", "v")
        own_server.stop()
        restarter = threading.Timer(0.3, own_server.start)
        restarter.start()
        try:
            assert client.get("rt:key") is None  # succeeded after retries, on the new server
        finally:
            restarter.join()
        assert client.breaker.state == CLOSED


def test_no_retries_fails_at_once() -> None:
    cfg = ClientConfig(retries=0, connect_timeout=0.5)
    srv = Server(require_binary()).start()
    address = srv.address
    srv.stop()
    with CacheClient("down", address=address, config=cfg) as client:
        with pytest.raises(CacheConnectionError) as info:
            client.get("k")
        assert info.value.code == "CLIENT_001"
