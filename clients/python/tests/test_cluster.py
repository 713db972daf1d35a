"""Both Python clients against a two-node cluster (docs/cluster.md): real
``nats-server -js`` and real cache-server processes. Keys written through
one node are read through the other: the clients follow CACHE_013 to the
node that owns each key's slot, one key at a time and inside batches.

Skipped without a ``nats-server`` binary, unless ``DND_REQUIRE_NATS`` is set.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Iterator, List

import pytest

from dnd_cache import AsyncCacheClient, CacheClient
from server import Server, require_binary


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def cluster() -> Iterator[List[Server]]:
    nats = shutil.which("nats-server") or ("/usr/sbin/nats-server" if os.path.exists("/usr/sbin/nats-server") else None)
    if nats is None:
        if os.environ.get("DND_REQUIRE_NATS"):
            pytest.fail("DND_REQUIRE_NATS is set but nats-server is not installed")
        pytest.skip("nats-server not installed")
    binary = require_binary()
    port = _free_port()
    store = tempfile.mkdtemp(prefix="dnd-py-js-")
    proc = subprocess.Popen(
        [nats, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", store],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "nats-server did not start"
            time.sleep(0.05)
    flags = ["--nats-url", f"nats://127.0.0.1:{port}", "--cluster-nodes", "2", "--cluster-name", "py"]
    nodes = [
        Server(binary, extra=flags + ["--node-id", f"py{i}"]).start() for i in (1, 2)
    ]
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()
        proc.kill()
        proc.wait()
        shutil.rmtree(store, ignore_errors=True)


def _whole(node: Server) -> None:
    """Waits until the node's map holds both nodes."""
    with CacheClient(service_id="t", address=node.address) as c:
        deadline = time.monotonic() + 15
        while len(c.health().get("cluster", {}).get("nodes", [])) < 2:
            assert time.monotonic() < deadline, c.health()
            time.sleep(0.1)


def test_sync_client_reaches_every_key_through_either_node(cluster: List[Server]) -> None:
    _whole(cluster[0])
    _whole(cluster[1])
    keys = [f"cluster:{i}" for i in range(200)]
    with CacheClient(service_id="t", address=cluster[0].address) as first:
        for k in keys:
            first.set(k, f"v-{k}")
        first.set_many({f"many:{i}": f"m{i}" for i in range(100)})
    with CacheClient(service_id="t", address=cluster[1].address) as second:
        for k in keys:
            assert second.get_str(k) == f"v-{k}", k
        found = second.get_many([f"many:{i}" for i in range(100)])
        assert len(found) == 100
        assert second.delete_many([f"many:{i}" for i in range(100)]) == 100


def test_async_client_reaches_every_key_through_either_node(cluster: List[Server]) -> None:
    _whole(cluster[0])

    async def run() -> None:
        async with AsyncCacheClient(service_id="t", address=cluster[1].address) as c:
            await asyncio.gather(*(c.set(f"async:{i}", f"a{i}") for i in range(100)))
        async with AsyncCacheClient(service_id="t", address=cluster[0].address) as c:
            values = await asyncio.gather(*(c.get(f"async:{i}") for i in range(100)))
            assert values == [f"a{i}".encode() for i in range(100)]
            found = await c.get_many([f"async:{i}" for i in range(100)])
            assert len(found) == 100

    asyncio.run(run())
