"""Both Python clients against real clusters (docs/cluster.md): real
``nats-server -js`` and real cache-server processes on ephemeral ports.

- Two nodes: keys written through one node are read through the other, one
  key at a time and inside batches; once every node runs the same settled
  map, the clients route every key by the handshake's map and are never
  redirected (their own counter and every node's metrics say so).
- Three nodes with two copies of each key: a client keeps working while a
  joining node takes its share of slots over several epochs; then one node
  is killed (SIGKILL) and both clients reach its keys on their new
  primaries within 5 s while the other nodes' keys never fail.

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
    serving, no learner, the primary slots spread evenly: a joining node
    takes its share over several maps, each of which may look settled on
    its own), else ``None``."""
    c = health.get("cluster")
    if not isinstance(c, dict) or len(c.get("nodes", [])) != n:
        return None
    primaries = [int(node.get("primary_slots") or 0) for node in c["nodes"]]
    if max(primaries) - min(primaries) > 4096 // 50:
        return None
    for node in c["nodes"]:
        if node.get("status") != "serving" or node.get("learner_slots"):
            return None
    return int(c.get("epoch", 0))


def _wait_settled(nodes: List[Server], timeout: float = 30.0, still_for: float = 1.0) -> int:
    """Waits until every node runs the same settled map of all of them, and
    has for ``still_for`` seconds: a node still on an older map answers
    CACHE_013 with that map, and a test that sorts keys by node needs the
    map those keys will have."""
    clients = [CacheClient(service_id="t-health", address=n.address) for n in nodes]
    deadline = time.monotonic() + timeout
    since: Optional[Tuple[int, float]] = None
    seen: List[Any] = []
    try:
        while True:
            seen = []
            for c in clients:
                try:
                    seen.append(_settled_epoch(c.health(), len(nodes)))
                except CacheError as exc:
                    seen.append(exc)
            now = time.monotonic()
            if isinstance(seen[0], int) and all(e == seen[0] for e in seen):
                if since is None or since[0] != seen[0]:
                    since = (seen[0], now)
                elif now - since[1] >= still_for:
                    return seen[0]
            else:
                since = None
            assert now < deadline, f"no settled map of {len(nodes)} nodes: {seen}"
            time.sleep(0.1)
    finally:
        for c in clients:
            c.close()


_ERRORS = re.compile(r"^cache_errors_total\{([^}]*)\}\s+(\S+)", re.M)


#: The code under which a node's metrics count its CACHE_013 answers.
_MOVED_CODES = ('code="CACHE_013"',)


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


# -- failover (three nodes, two copies of each key) -------------------------


def _node_of(node: Server) -> Tuple[str, int]:
    host, port = node.address.rsplit(":", 1)
    return host, int(port)


class _Outage:
    """What one client saw after the kill: when every key of the dead node
    was read and written again, and the operations on the live nodes' keys
    that failed meanwhile."""

    def __init__(self) -> None:
        self.recovered_after: Optional[float] = None
        self.live_ops = 0
        self.live_failures: List[str] = []
        # Reads of a live key that returned an older value than the client
        # had just written (see _MapMoves): counted, not failures.
        self.stale_reads: List[str] = []
        self.slowest_live_op = 0.0


def _sync_outage(c: CacheClient, dead: List[str], live: List[str], killed_at: float, out: _Outage) -> None:
    deadline = killed_at + 10
    i = 0
    while time.monotonic() < deadline:
        k = live[i % len(live)]
        i += 1
        t = time.monotonic()
        try:
            c.set(k, f"live-{i}")
            got = c.get_str(k)
            if got != f"live-{i}":
                out.stale_reads.append(f"{k}: {got!r}")
        except CacheError as exc:
            out.live_failures.append(f"{k}: {exc}")
        out.live_ops += 1
        out.slowest_live_op = max(out.slowest_live_op, time.monotonic() - t)
        try:
            for k in dead:
                assert c.get_str(k) == f"v-{k}", k
                c.set(k, f"v-{k}")
        except CacheError:
            time.sleep(0.01)
            continue
        out.recovered_after = time.monotonic() - killed_at
        return


async def _async_outage(
    c: AsyncCacheClient, dead: List[str], live: List[str], killed_at: float, out: _Outage
) -> None:
    deadline = killed_at + 10
    i = 0
    while time.monotonic() < deadline:
        k = live[i % len(live)]
        i += 1
        t = time.monotonic()
        try:
            await c.set(k, f"alive-{i}")
            got = await c.get(k)
            if got != f"alive-{i}".encode():
                out.stale_reads.append(f"{k}: {got!r}")
        except CacheError as exc:
            out.live_failures.append(f"{k}: {exc}")
        out.live_ops += 1
        out.slowest_live_op = max(out.slowest_live_op, time.monotonic() - t)
        try:
            values = await asyncio.gather(*(c.get(k) for k in dead))
            assert values == [f"v-{k}".encode() for k in dead]
            await asyncio.gather(*(c.set(k, f"v-{k}") for k in dead))
        except CacheError:
            await asyncio.sleep(0.01)
            continue
        out.recovered_after = time.monotonic() - killed_at
        return


class _MapMoves(threading.Thread):
    """A client that writes and reads 100 keys round after round until told
    to finish, noting every error, and apart every read of an older value
    (eventual consistency: while a slot changes hands, a node still on the
    older map may take a write the new owner has not seen yet)."""

    def __init__(self, address: str) -> None:
        super().__init__(daemon=True)
        self.client = CacheClient(f"py-join-{os.getpid()}", address=address)
        self.rounds = 0
        self.errors: List[str] = []
        self.stale_reads: List[str] = []
        self.first_epoch = self.last_epoch = 0
        self.stats: Any = None
        self._stop_at = threading.Event()

    def run(self) -> None:
        keys = [f"join:{i}" for i in range(100)]
        try:
            for k in keys:
                self.client.set(k, f"0-{k}")
            self.first_epoch = self.client.cluster_epoch
            while not self._stop_at.is_set():
                for k in keys:
                    try:
                        got = self.client.get_str(k)
                        if got != f"{self.rounds}-{k}":
                            self.stale_reads.append(f"{k}: read {got!r} in round {self.rounds}")
                        self.client.set(k, f"{self.rounds + 1}-{k}")
                    except CacheError as exc:
                        self.errors.append(f"{k}: {exc}")
                self.rounds += 1
        except CacheError as exc:
            self.errors.append(f"writing: {exc}")
        self.last_epoch = self.client.cluster_epoch
        self.stats = self.client.routing_stats()
        self.client.close()

    def finish(self) -> None:
        self._stop_at.set()
        self.join(30)


def test_after_a_node_dies_its_keys_are_reached_on_the_new_primary_and_other_nodes_keep_serving() -> None:
    """SIGKILL one node of three (two copies of each key): the sync and the
    asyncio client, running side by side, read and write its keys again on
    their new primaries within 5 s, while every operation on the other
    nodes' keys keeps succeeding; the live nodes' breakers stay closed."""
    zones = ["--replication", "2", "--cluster-zones", "a,b"]
    with _cluster_of("pyfo", [zones + ["--zone", z] for z in ("a", "b", "a")]) as nodes:
        # First, while the third node joins and the map moves its share of
        # slots over several epochs: a client keeps reading and writing.
        joining = _MapMoves(nodes[0].address)
        joining.start()
        try:
            _wait_settled(nodes)
        finally:
            joining.finish()
        print(f"\nwhile the map moved: {joining.rounds} rounds of 100 keys, epoch "
              f"{joining.first_epoch} -> {joining.last_epoch}, {joining.stats}, errors {joining.errors[:5]}, "
              f"older values read {len(joining.stale_reads)} {joining.stale_reads[:3]}")
        assert joining.rounds > 0 and joining.errors == []
        assert joining.last_epoch > joining.first_epoch
        victim, live_nodes = nodes[2], nodes[:2]
        keys = [f"fo:{i}" for i in range(300)]
        # Strong writes are acknowledged by the replica: the promoted copy has them.
        with CacheClient("py-fo-writer", address=nodes[0].address, options={"consistency": "strong"}) as w:
            w.set_many({k: f"v-{k}" for k in keys})
        seeds = ",".join(n.address for n in live_nodes)
        sync_client = CacheClient(f"py-fo-{os.getpid()}", address=seeds)
        try:
            assert len(sync_client.get_many(keys)) == len(keys)
            by_node: Dict[Any, List[str]] = {}
            for k in keys:
                by_node.setdefault(sync_client._route(k.encode()).node, []).append(k)
            assert set(by_node) == {_node_of(n) for n in nodes}, by_node.keys()
            dead = by_node[_node_of(victim)]
            live = [k for n in live_nodes for k in by_node[_node_of(n)]]
            epoch = sync_client.cluster_epoch

            # The asyncio client runs in a thread of its own, on the odd live
            # keys (the sync client writes the even ones).
            ready, killed, done = threading.Event(), threading.Event(), threading.Event()
            async_out, sync_out = _Outage(), _Outage()
            async_result: Dict[str, Any] = {}
            killed_at = [0.0]

            async def async_side() -> None:
                async with AsyncCacheClient(f"py-fo-async-{os.getpid()}", address=seeds) as a:
                    assert len(await a.get_many(keys)) == len(keys)
                    ready.set()
                    await asyncio.get_running_loop().run_in_executor(None, killed.wait)
                    await _async_outage(a, dead, live[1::2], killed_at[0], async_out)
                    async_result["stats"] = a.routing_stats()
                    async_result["epoch"] = a.cluster_epoch
                    async_result["breakers"] = a.node_breakers()
                    async_result["breaker"] = a.breaker.state

            def run_async() -> None:
                try:
                    asyncio.run(async_side())
                except BaseException as exc:  # reported by the main thread
                    async_result["error"] = exc
                finally:
                    ready.set()
                    done.set()

            runner = threading.Thread(target=run_async)
            runner.start()
            assert ready.wait(30) and "error" not in async_result, async_result
            assert victim.proc is not None
            victim.proc.kill()  # SIGKILL
            killed_at[0] = time.monotonic()
            killed.set()
            _sync_outage(sync_client, dead, live[0::2], killed_at[0], sync_out)
            runner.join(30)
            assert "error" not in async_result, async_result["error"]
            results = [
                ("sync", sync_out, sync_client.routing_stats(), sync_client.cluster_epoch,
                 sync_client.node_breakers(), sync_client.breaker.state),
                ("async", async_out, async_result["stats"], async_result["epoch"],
                 async_result["breakers"], async_result["breaker"]),
            ]
            for name, out, stats, new_epoch, breakers, default_state in results:
                took = "never" if out.recovered_after is None else f"{out.recovered_after:.3f} s"
                print(
                    f"\n{name}: keys of the killed node served again after {took}; "
                    f"{out.live_ops} rounds on live keys meanwhile, slowest "
                    f"{out.slowest_live_op * 1000:.0f} ms, failed {len(out.live_failures)}, older "
                    f"values read {len(out.stale_reads)} {out.stale_reads[:3]}; "
                    f"epoch {epoch} -> {new_epoch}; {stats}"
                )
            for name, out, stats, new_epoch, breakers, default_state in results:
                assert out.recovered_after is not None and out.recovered_after <= 5.0, name
                assert out.live_failures == [], (name, out.live_failures[:5])
                assert new_epoch > epoch, name
                for n in live_nodes:
                    breaker = breakers.get(n.address)
                    assert breaker is None or breaker.state == CLOSED, (name, n.address)
                assert default_state == CLOSED, name
        finally:
            sync_client.close()
