"""Seed lists (docs/cluster.md, "Routing"): both clients given several seed
addresses, against real cache-server processes, with seeds that refuse the
connection (a port just closed) or never answer the handshake (a socket
that listens but never accepts)."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Iterator, List

import pytest

from dnd_cache import (
    AsyncCacheClient,
    CacheClient,
    CacheConnectionError,
    ClientConfig,
    InvalidCredentialsError,
)
from server import REPO, Server, require_binary


def closed_port() -> int:
    """A port nothing listens on: bound, then closed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that completes the TCP connect (the kernel's backlog) but
    never answers the handshake."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield int(s.getsockname()[1])


@pytest.fixture
def two_servers() -> Iterator[List[Server]]:
    servers = [Server(require_binary()).start() for _ in range(2)]
    yield servers
    for srv in servers:
        srv.stop()


def test_a_closed_first_seed_is_skipped(server: Server) -> None:
    address = f"127.0.0.1:{closed_port()}, {server.address}"
    with CacheClient("seeds", address=address, config=ClientConfig(retries=0)) as client:
        client.set("seeds:sync", "v")
        assert client.get("seeds:sync") == b"v"
        assert client.get_many(["seeds:sync", "seeds:none"]) == {"seeds:sync": b"v"}


def test_the_async_client_skips_a_closed_first_seed(server: Server) -> None:
    async def run() -> None:
        address = f"127.0.0.1:{closed_port()},{server.address}"
        async with AsyncCacheClient("seeds", address=address, config=ClientConfig(retries=0)) as client:
            await client.set("seeds:async", "v")
            assert await client.get("seeds:async") == b"v"
            assert await client.get_many(["seeds:async"]) == {"seeds:async": b"v"}

    asyncio.run(run())


def test_a_silent_seed_is_skipped_after_the_connect_timeout(server: Server, silent_port: int) -> None:
    config = ClientConfig(connect_timeout=0.5, retries=0)
    address = f"127.0.0.1:{silent_port},{server.address}"
    started = time.monotonic()
    with CacheClient("seeds", address=address, config=config) as client:
        assert client.health()["status"] == "ok"
    assert 0.5 <= time.monotonic() - started < 3

    async def run() -> None:
        async with AsyncCacheClient("seeds", address=address, config=config) as client:
            assert (await client.health())["status"] == "ok"

    started = time.monotonic()
    asyncio.run(run())
    assert 0.5 <= time.monotonic() - started < 3


def test_when_no_seed_answers_the_connection_error_names_every_seed(silent_port: int) -> None:
    closed = closed_port()
    address = f"127.0.0.1:{closed},127.0.0.1:{silent_port}"
    config = ClientConfig(connect_timeout=0.3, retries=1, backoff_base=0.01)
    with CacheClient("seeds", address=address, config=config) as client:
        with pytest.raises(CacheConnectionError) as info:
            client.get("seeds:k")
    message = str(info.value)
    assert message.startswith("CLIENT_001: no seed answered the handshake: tried ")
    assert f"127.0.0.1:{closed} (" in message and f"127.0.0.1:{silent_port} (" in message

    async def run() -> None:
        async with AsyncCacheClient("seeds", address=address, config=config) as client:
            with pytest.raises(CacheConnectionError) as info:
                await client.get("seeds:k")
        assert f"127.0.0.1:{closed} (" in str(info.value)
        assert f"127.0.0.1:{silent_port} (" in str(info.value)

    asyncio.run(run())


def test_after_its_seed_goes_down_a_client_walks_the_seeds_again(two_servers: List[Server]) -> None:
    first, second = two_servers
    address = f"{first.address},{second.address}"
    with CacheClient("seeds", address=address) as client:
        client.set("seeds:where", "first")
        first.stop()
        # The second server is another cache: the key is not there, but it answers.
        assert client.get("seeds:where") is None
        client.set("seeds:where", "second")
    with CacheClient("seeds", address=second.address) as direct:
        assert direct.get("seeds:where") == b"second"


def test_after_its_seed_goes_down_the_async_client_walks_the_seeds_again(
    two_servers: List[Server],
) -> None:
    first, second = two_servers

    async def run() -> None:
        address = f"{first.address},{second.address}"
        async with AsyncCacheClient("seeds", address=address) as client:
            await client.set("seeds:where", "first")
            first.stop()
            assert await client.get("seeds:where") is None
            await client.set("seeds:where", "second")
        async with AsyncCacheClient("seeds", address=second.address) as direct:
            assert await direct.get("seeds:where") == b"second"

    asyncio.run(run())


def test_a_refused_token_is_not_taken_to_the_next_seed(server: Server) -> None:
    # Every node of a cluster would refuse it too: the walk stops there.
    secret = str(REPO / "tests" / "keys" / "hs256.secret")
    guarded = Server(require_binary(), extra=["--auth-hs256-secret-file", secret]).start()
    try:
        address = f"{guarded.address},{server.address}"
        with CacheClient("seeds", address=address) as client:
            with pytest.raises(InvalidCredentialsError):
                client.health()

        async def run() -> None:
            async with AsyncCacheClient("seeds", address=address) as client:
                with pytest.raises(InvalidCredentialsError):
                    await client.health()

        asyncio.run(run())
    finally:
        guarded.stop()
