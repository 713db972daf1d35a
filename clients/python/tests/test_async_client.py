"""AsyncCacheClient against a real cache-server (2 shards, ephemeral ports)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, List, TypeVar

import pytest

from dnd_cache import (
    AsyncCacheClient,
    BatchError,
    CacheClient,
    CacheConnectionError,
    CircuitOpenError,
    ClientConfig,
    InvalidKeyError,
    OperationTimeoutError,
    StorageFullError,
    wire,
)
from dnd_cache.async_client import AsyncConnection
from dnd_cache.breaker import CLOSED, OPEN
from server import Server, require_binary

T = TypeVar("T")


def run(make: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(make())  # type: ignore[arg-type]


def connections(client: AsyncCacheClient) -> List[AsyncConnection]:
    return [c for pool in client._pools.values() for c in pool._conns]


def stop_process(pid: int) -> None:
    """SIGSTOP, then waits until every thread is stopped (delivery is asynchronous:
    a shard thread running on another core could still answer)."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 5
    while True:
        states = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
            except OSError:
                pass  # the thread ended
        if all(state in ("T", "t") for state in states):
            return
        assert time.monotonic() < deadline, f"threads of {pid} not stopped: {states}"
        time.sleep(0.01)


@pytest.fixture
def own_server() -> Iterator[Server]:
    srv = Server(require_binary()).start()
    yield srv
    srv.stop()


def test_every_method_roundtrips(server: Server) -> None:
    async def scenario() -> None:
        async with AsyncCacheClient("async_tests", options={"consistency": "strong"},
                                    address=server.address) as c:
            meta = await c.set("aio:bytes", b"\x00\x01\xff", ttl=60)
            assert meta.expires_at - meta.created_at == 60_000
            assert await c.get("aio:bytes") == b"\x00\x01\xff"
            await c.set("aio:json", {"name": "Aria", "level": 7})
            assert await c.get_json("aio:json") == {"name": "Aria", "level": 7}
            await c.set("aio:str", "héllo")
            assert await c.get_str("aio:str") == "héllo"
            assert await c.get_json("aio:absent", default={}) == {}
            assert await c.delete("aio:bytes") is True
            assert await c.delete("aio:bytes") is False
            assert await c.get("aio:bytes") is None

            pairs = {f"aio:many:{i}": f"v{i}" for i in range(300)}
            await c.set_many(pairs, ttl=60)
            got = await c.get_many(list(pairs) + ["aio:many:absent"])
            assert got == {k: v.encode() for k, v in pairs.items()}
            assert await c.delete_many(list(pairs)[:100] + ["aio:many:absent"]) == 100
            assert len(await c.get_many(pairs)) == 200
            assert (await c.health())["status"] == "ok"

    run(scenario)


def test_values_written_by_one_client_are_read_by_the_other(server: Server) -> None:
    with CacheClient("sync_side", address=server.address) as sync:
        sync.set("aio:cross", {"from": "sync"})

        async def scenario() -> None:
            async with AsyncCacheClient("async_side", address=server.address) as c:
                assert await c.get_json("aio:cross") == {"from": "sync"}
                await c.set("aio:cross", {"from": "async"})

        run(scenario)
        assert sync.get_json("aio:cross") == {"from": "async"}


def test_same_errors_as_the_sync_client(server: Server) -> None:
    async def scenario() -> None:
        async with AsyncCacheClient("async_errors", address=server.address) as c:
            with pytest.raises(InvalidKeyError) as bad_key:
                await c.get("has space")
            assert bad_key.value.code == "CACHE_004"
            with pytest.raises(StorageFullError):
                await c.set("aio:huge", b"x" * (2 << 20))
            with pytest.raises(BatchError) as batch:
                await c.set_many({"aio:ok": "v", "aio:bad key": "v"})
            assert set(batch.value.errors) == {"aio:bad key"}
            assert batch.value.errors["aio:bad key"].code == "CACHE_004"
            # Errors of requests leave the connections usable.
            assert all(not conn.broken for conn in connections(c))
            assert await c.get("aio:ok") == b"v"

    run(scenario)


def test_concurrent_calls_are_pipelined_on_one_connection_per_shard(server: Server) -> None:
    n = 100

    async def scenario() -> None:
        async with AsyncCacheClient("async_pipeline", address=server.address) as c:
            await c.get("warm-up")  # learns the shard ports
            await c.set_many({f"aio:p:{i}": f"value-{i}" for i in range(n)})
            shard_pools = [c._pools[("127.0.0.1", port)] for port in server.shard_ports]
            assert [pool.size for pool in shard_pools] == [1, 1]
            tasks = [asyncio.ensure_future(c.get(f"aio:p:{i}")) for i in range(n)]
            await asyncio.sleep(0)  # every task runs up to waiting for its answer
            # Every request is queued on the connection before any answer came
            # back; they leave in one write at the end of this loop iteration.
            assert sum(conn.in_flight for conn in connections(c)) == n
            values = await asyncio.gather(*tasks)
            assert values == [f"value-{i}".encode() for i in range(n)]
            # No connection was opened for the burst.
            assert [pool.size for pool in shard_pools] == [1, 1]

    run(scenario)


def test_shard_aware_routing_avoids_forwarding(server: Server) -> None:
    def forwarded(answer: wire.CacheResponse) -> int:
        return int(json.loads(answer.data)["total"]["forwarded_ops"])

    async def scenario() -> None:
        async with AsyncCacheClient("async_routing", address=server.address) as c:
            await c.get("warm-up")
            assert c._router.topology is not None
            assert list(c._router.topology.shard_ports) == server.shard_ports
            stats = wire.CacheOperation(operation="stats")
            before = forwarded(await c._single(stats))
            await asyncio.gather(*(c.set(f"aio:route:{i}", i) for i in range(200)))
            await c.get_many([f"aio:route:{i}" for i in range(200)])
            assert forwarded(await c._single(stats)) == before

    run(scenario)


def test_cancelled_calls_do_not_desynchronise_the_connection(server: Server) -> None:
    """Half the calls are cancelled after their request went out; every other
    call, then and later, still gets its own key's value on the same connection."""
    cfg = ClientConfig(shard_aware=False)  # one connection carries everything
    n = 60

    async def scenario() -> None:
        async with AsyncCacheClient("async_cancel", address=server.address, config=cfg) as c:
            await c.set_many({f"aio:c:{i}": f"value-{i}" for i in range(n)})
            [conn] = connections(c)
            tasks = [asyncio.ensure_future(c.get(f"aio:c:{i}")) for i in range(n)]
            await asyncio.sleep(0)
            assert conn.in_flight == n  # all requests sent or queued to send
            for task in tasks[::2]:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for i, result in enumerate(results):
                if i % 2 == 0:
                    assert isinstance(result, asyncio.CancelledError)
                else:
                    assert result == f"value-{i}".encode()
            # The cancelled answers were read and dropped: the stream is in step.
            assert conn.in_flight == 0 and not conn.broken
            again = await asyncio.gather(*(c.get(f"aio:c:{i}") for i in range(n)))
            assert again == [f"value-{i}".encode() for i in range(n)]
            assert connections(c) == [conn]

            # A caller's own timeout (wait_for) is a cancellation too.
            first = asyncio.ensure_future(c.get("aio:c:0"))
            await asyncio.sleep(0)
            first.cancel()
            assert await c.get("aio:c:1") == b"value-1"
            assert connections(c) == [conn] and not conn.broken

    run(scenario)


def test_a_stalled_server_times_out_and_the_connection_is_replaced(own_server: Server) -> None:
    cfg = ClientConfig(request_timeout=0.5, retries=0, shard_aware=False)

    async def scenario() -> None:
        async with AsyncCacheClient("async_timeout", address=own_server.address, config=cfg) as c:
            await c.set("aio:t", "v")
            [first] = connections(c)
            assert own_server.proc is not None
            stop_process(own_server.proc.pid)
            try:
                results = await asyncio.gather(
                    c.get("aio:t"), c.get("aio:t"), return_exceptions=True
                )
            finally:
                os.kill(own_server.proc.pid, signal.SIGCONT)
            # The first call times out; the one behind it fails with it.
            assert all(isinstance(r, (OperationTimeoutError, CacheConnectionError)) for r in results)
            assert any(isinstance(r, OperationTimeoutError) and r.code == "CACHE_005" for r in results)
            assert first.broken
            assert await c.get("aio:t") == b"v"
            assert connections(c) != [first]

    run(scenario)


def test_retries_ride_over_a_restart_and_the_breaker_opens(own_server: Server) -> None:
    cfg = ClientConfig(
        retries=1, backoff_base=0.01, backoff_max=0.02, connect_timeout=1.0,
        breaker_min_requests=6, breaker_cooldown=0.5,
    )

    async def scenario() -> None:
        async with AsyncCacheClient("async_breaker", address=own_server.address, config=cfg) as c:
            await c.set("aio:br", "v")
            own_server.stop()
            failures = 0
            with pytest.raises(CircuitOpenError) as info:
                while True:
                    try:
                        await c.get("aio:br")
                    except CacheConnectionError:
                        failures += 1
                        assert failures <= 6, "the breaker should have opened"
            assert info.value.code == "CLIENT_002"
            assert c.breaker.state == OPEN
            own_server.start()  # same public port, new shard ports and seed
            await asyncio.sleep(cfg.breaker_cooldown + 0.1)
            assert await c.get("aio:br") is None  # the new server starts empty
            assert c.breaker.state == CLOSED
            await c.set("aio:br", "back")
            assert await c.get("aio:br") == b"back"

    run(scenario)


def test_closed_client_refuses_calls(server: Server) -> None:
    async def scenario() -> Any:
        c = AsyncCacheClient("async_closed", address=server.address, config=ClientConfig(retries=0))
        await c.set("aio:x", "v")
        await c.close()
        with pytest.raises(CacheConnectionError):
            await c.get("aio:x")

    run(scenario)
