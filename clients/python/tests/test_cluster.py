"""Both Python clients against a two-node cluster (docs/cluster.md): real
``nats-server -js`` and real cache-server processes. Keys written through
one node are read through the other: the clients follow CACHE_013 to the
node that owns each key's slot, one key at a time and inside batches.

Skipped without a ``nats-server`` binary, unless ``DND_REQUIRE_NATS`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
import urllib.request
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from dnd_cache import AsyncCacheClient, CacheClient, CacheError
from dnd_cache.breaker import CLOSED
from server import Server, require_binary


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_nats() -> Tuple["subprocess.Popen[bytes]", int, str]:
    """A real ``nats-server -js`` on a free port: (process, port, store dir)."""
    nats = shutil.which("nats-server") or ("/usr/sbin/nats-server" if os.path.exists("/usr/sbin/nats-server") else None)
    if nats is None:
        if os.environ.get("DND_REQUIRE_NATS"):
            pytest.fail("DND_REQUIRE_NATS is set but nats-server is not installed")
        pytest.skip("nats-server not installed")
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
    return proc, port, store


@contextlib.contextmanager
def _cluster_of(name: str, node_flags: List[List[str]]) -> Iterator[List[Server]]:
    """NATS and one cache-server per entry of ``node_flags`` (its own flags)."""
    binary = require_binary()
    proc, port, store = _start_nats()
    flags = ["--nats-url", f"nats://127.0.0.1:{port}", "--cluster-nodes", str(len(node_flags)),
             "--cluster-name", name]
    nodes: List[Server] = []
    try:
        for i, extra in enumerate(node_flags, 1):
            nodes.append(Server(binary, extra=flags + ["--node-id", f"{name}{i}"] + extra).start())
        yield nodes
    finally:
        for node in nodes:
            node.stop()
        proc.kill()
        proc.wait()
        shutil.rmtree(store, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[List[Server]]:
    with _cluster_of("py", [[], []]) as nodes:
        yield nodes


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


# -- routing by the map (docs/cluster.md, "Routing") ------------------------


def _settled_epoch(health: Dict[str, Any], n: int) -> Optional[int]:
    """The map's epoch when the node runs a settled map of ``n`` nodes (all
    serving, each primary of some slots, no learner), else ``None``."""
    c = health.get("cluster")
    if not isinstance(c, dict) or len(c.get("nodes", [])) != n:
        return None
    for node in c["nodes"]:
        if node.get("status") != "serving" or not node.get("primary_slots") or node.get("learner_slots"):
            return None
    return int(c.get("epoch", 0))


def _wait_settled(nodes: List[Server], timeout: float = 30.0) -> int:
    """Waits until every node runs the same settled map of all of them: a
    joining node takes its slots over a few maps, and a node still on an
    older one answers CACHE_013 with that map."""
    clients = [CacheClient(service_id="t-health", address=n.address) for n in nodes]
    deadline = time.monotonic() + timeout
    seen: List[Any] = []
    try:
        while True:
            seen = []
            for c in clients:
                try:
                    seen.append(_settled_epoch(c.health(), len(nodes)))
                except CacheError as exc:
                    seen.append(exc)
            if seen[0] is not None and isinstance(seen[0], int) and all(e == seen[0] for e in seen):
                return seen[0]
            assert time.monotonic() < deadline, f"no settled map of {len(nodes)} nodes: {seen}"
            time.sleep(0.1)
    finally:
        for c in clients:
            c.close()


_ERRORS = re.compile(r"^cache_errors_total\{([^}]*)\}\s+(\S+)", re.M)


#: The codes under which a node's metrics count its CACHE_013 answers. The
#: server at the time of writing files status 13 under CACHE_006
#: (src/metrics/mod.rs, ``status_slot`` knows statuses 0..=12, 101 and 102
#: only); these clients never send a malformed request, so for their own
#: service id a CACHE_006 is a redirection too.
_MOVED_CODES = ('code="CACHE_013"', 'code="CACHE_006"')


def _redirections_counted(node: Server, service: str) -> float:
    """What the node's metrics count as CACHE_013 answers to ``service``."""
    with urllib.request.urlopen(f"http://{node.info['http']}/health/metrics", timeout=5) as r:
        text = r.read().decode()
    total = 0.0
    for labels, value in _ERRORS.findall(text):
        if f'service="{service}"' in labels and any(c in labels for c in _MOVED_CODES):
            total += float(value)
    return total


def test_both_clients_route_every_key_by_the_map_without_a_redirection(cluster: List[Server]) -> None:
    epoch = _wait_settled(cluster)
    sid = f"py-map-{os.getpid()}"
    keys = [f"map:{i}" for i in range(300)]
    with CacheClient(service_id=sid, address=cluster[0].address) as c:
        for k in keys:
            c.set(k, f"v-{k}")
        for k in keys:
            assert c.get_str(k) == f"v-{k}", k
        c.set_many({f"mapmany:{i}": i for i in range(300)})
        assert len(c.get_many([f"mapmany:{i}" for i in range(300)])) == 300
        assert c.delete_many([f"mapmany:{i}" for i in range(300)]) == 300
        assert c.cluster_epoch == epoch
        # The keys are spread over both nodes, and each went straight to its own.
        assert {c._route(k.encode()).node for k in keys} == {
            (n.address.rsplit(":", 1)[0], n.port) for n in cluster
        }
        stats = c.routing_stats()
        assert (stats.redirections, stats.stale_waits) == (0, 0), stats

    async_sid = f"py-map-async-{os.getpid()}"

    async def run() -> None:
        async with AsyncCacheClient(service_id=async_sid, address=cluster[1].address) as a:
            await asyncio.gather(*(a.set(k, f"a-{k}") for k in keys))
            values = await asyncio.gather(*(a.get(k) for k in keys))
            assert values == [f"a-{k}".encode() for k in keys]
            await a.set_many({f"amany:{i}": i for i in range(300)})
            assert len(await a.get_many([f"amany:{i}" for i in range(300)])) == 300
            assert await a.delete_many([f"amany:{i}" for i in range(300)]) == 300
            stats = a.routing_stats()
            assert (stats.redirections, stats.stale_waits) == (0, 0), stats

    asyncio.run(run())
    for node in cluster:
        assert _redirections_counted(node, sid) == 0, node.address
        assert _redirections_counted(node, async_sid) == 0, node.address
    # The checks can fail: a client that does not route by the map (its map
    # forgotten before each request) is redirected, and both counts see it.
    blind_sid = f"py-map-blind-{os.getpid()}"
    with CacheClient(service_id=blind_sid, address=cluster[0].address) as blind:
        for k in keys[:40]:
            blind._router.map = None
            assert blind.get_str(k) == f"a-{k}"
        redirected = blind.routing_stats().redirections
    assert redirected > 0
    assert _redirections_counted(cluster[0], blind_sid) == redirected
