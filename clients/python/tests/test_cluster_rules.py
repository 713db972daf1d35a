"""The cluster routing rules (dnd_cache/cluster.py) without a server: the
stale-epoch decision and its waits, routing by a handshake's map, what
CACHE_013 answers change, and one circuit breaker per node."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any, List, Tuple

import pytest
import xxhash

from dnd_cache import (
    AsyncCacheClient,
    CacheClient,
    CacheConnectionError,
    CircuitBreaker,
    CircuitOpenError,
    ClientConfig,
    wire,
)
from dnd_cache.breaker import CLOSED, OPEN
from dnd_cache.cluster import (
    FOLLOW,
    SLOTS,
    WAIT,
    Moved,
    NodeBreakers,
    Route,
    Router,
    StaleWait,
    failed_node,
    moved_decision,
    parse_moved,
)
from dnd_cache.errors import MovedError, OperationTimeoutError

SEED = 12345
A = ("10.0.0.1", 7001)
B = ("10.0.0.2", 7002)


def handshake(epoch: int, primary_of: Any, nodes: Tuple[Tuple[str, int], ...] = (A, B)) -> wire.Handshake:
    """A cluster handshake: slot s is served by nodes[primary_of(s)]; node i
    has two shard ports 100*(i+1) and 100*(i+1)+1."""
    return wire.Handshake(
        shard_count=2,
        shard_ports=[100, 101],
        hash="xxh3_64",
        hash_seed=SEED,
        cluster_epoch=epoch,
        nodes=[
            wire.ClusterNode(id=f"n{i}", host=h, port=p, shard_ports=[100 * (i + 1), 100 * (i + 1) + 1])
            for i, (h, p) in enumerate(nodes)
        ],
        node_index=0,
        slot_primary=[primary_of(s) for s in range(SLOTS)],
    )


def key_in(slot_parity: int) -> bytes:
    """A key whose slot has the given parity."""
    for i in range(1000):
        k = f"k{i}".encode()
        if (xxhash.xxh3_64_intdigest(k, SEED) >> 52) % 2 == slot_parity:
            return k
    raise AssertionError("no key found")


# -- rule 4: the stale-epoch decision -----------------------------------------


def test_a_moved_answer_is_followed_unless_older_than_what_the_client_knows() -> None:
    assert moved_decision(known_epoch=5, moved_epoch=5) == FOLLOW
    assert moved_decision(known_epoch=5, moved_epoch=6) == FOLLOW
    assert moved_decision(known_epoch=0, moved_epoch=1) == FOLLOW  # no map yet
    assert moved_decision(known_epoch=5, moved_epoch=4) == WAIT
    assert moved_decision(known_epoch=7, moved_epoch=0) == WAIT


def test_stale_waits_double_from_10_ms_up_to_200_ms_for_2_s_in_all() -> None:
    wait = StaleWait()
    delays: List[float] = []
    while True:
        d = wait.next_delay()
        if d is None:
            break
        delays.append(d)
    assert delays[:6] == pytest.approx([0.01, 0.02, 0.04, 0.08, 0.16, 0.2])
    assert max(delays) == pytest.approx(0.2)
    assert sum(delays) == pytest.approx(2.0)
    assert wait.next_delay() is None


def test_parse_moved_reads_the_servers_answer() -> None:
    data = json.dumps(
        {"moved": {"slot": 17, "node": "n2", "address": "10.0.0.2:7002", "http": "x", "epoch": 9}}
    ).encode()
    assert parse_moved(data) == Moved(17, "n2", B, 9)
    v6 = json.dumps({"moved": {"slot": 1, "node": "n", "address": "[::1]:9", "epoch": 2}}).encode()
    assert parse_moved(v6) == Moved(1, "n", ("::1", 9), 2)
    assert parse_moved(b"not json") is None
    assert parse_moved(b'{"moved": {"slot": 1}}') is None


def test_which_errors_say_a_node_did_not_answer() -> None:
    assert failed_node(CacheConnectionError("refused"), cluster=False)
    assert failed_node(OperationTimeoutError("client timeout", status=0), cluster=True)
    assert not failed_node(OperationTimeoutError("client timeout", status=0), cluster=False)
    assert not failed_node(OperationTimeoutError("server CACHE_005"), cluster=True)


# -- rules 1-3: routing by the map -------------------------------------------


def test_keys_go_to_their_slots_node_and_its_owner_shard() -> None:
    router = Router()
    assert router.learn(A, handshake(3, lambda s: s % 2), from_seed=True)
    assert router.epoch == 3
    for parity, node, base in ((0, A, 100), (1, B, 200)):
        k = key_in(parity)
        h = xxhash.xxh3_64_intdigest(k, SEED)
        assert router.route(k, A) == Route(node, (node[0], base + h % 2))
    # Without shard awareness: the node's public port.
    plain = Router(shard_aware=False)
    plain.learn(A, handshake(3, lambda s: s % 2), from_seed=True)
    assert plain.route(key_in(1), A) == Route(B, B)
    # A key-less request (health) goes to the seed in use.
    assert router.route(b"", A) == Route(A, A)


def test_a_server_alone_is_routed_by_its_shard_ports() -> None:
    router = Router()
    hs = wire.Handshake(shard_count=2, shard_ports=[5, 6], hash="xxh3_64", hash_seed=SEED)
    assert not router.learn(("h", 1), hs, from_seed=True)
    assert not router.is_cluster and router.learned
    route = router.route(b"k", ("h", 1))
    assert route.node is None and route.endpoint is not None and route.endpoint[0] == "h"


def test_a_followed_redirection_points_the_slot_until_a_newer_map() -> None:
    router = Router()
    router.learn(A, handshake(3, lambda s: 0), from_seed=True)
    k = key_in(1)
    slot = router.slot_of(k)
    assert slot is not None and router.route(k, A).node == A
    router.point(Moved(slot, "n2", B, 4))
    assert router.slot_epoch(slot) == 4
    assert router.route(k, A).node == B
    h = xxhash.xxh3_64_intdigest(k, SEED)
    assert router.route(k, A).endpoint == ("10.0.0.2", 200 + h % 2)  # B's shard, from the map
    # An older answer does not move it back.
    router.point(Moved(slot, "n1", A, 3))
    assert router.route(k, A).node == B
    # An older map is not installed; a map at least as new as the pointer replaces it.
    assert not router.learn(B, handshake(2, lambda s: 0), from_seed=False)
    assert router.learn(B, handshake(4, lambda s: 0), from_seed=False)
    assert router.route(k, A).node == A and router.slot_epoch(slot) == 4


def test_a_refresh_asks_the_seeds_then_the_other_nodes_and_the_failed_one_last() -> None:
    router = Router()
    router.learn(A, handshake(3, lambda s: 0, nodes=(A, B, ("10.0.0.3", 7003))), from_seed=True)
    seeds = [("seed", 1), A]
    assert router.refresh_candidates(seeds, exclude=A) == [("seed", 1), B, ("10.0.0.3", 7003), A]


# -- rule 6: one breaker per node ---------------------------------------------


def test_failures_on_one_node_open_only_its_breaker() -> None:
    cfg = ClientConfig(breaker_min_requests=5)
    default = CircuitBreaker()
    breakers = NodeBreakers(cfg, default)
    for _ in range(5):
        assert breakers.get(A).allow()
        breakers.get(A).record(False)
        assert breakers.get(B).allow()
        breakers.get(B).record(True)
    assert breakers.get(A).state == OPEN
    assert breakers.get(B).state == CLOSED
    assert breakers.get(None) is default and default.state == CLOSED


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_client_keeps_serving_other_nodes_while_one_nodes_breaker_is_open() -> None:
    """Through the client's retry loop: attempts to node A fail, to B succeed.
    A's breaker opens, B's stays closed, and a key of A then fails fast
    (after the map refresh finds no node to ask) without another attempt."""
    # Every address refuses at once: the map refreshes find no node to ask.
    seed, node_a, node_b = (("127.0.0.1", _closed_port()) for _ in range(3))
    cfg = ClientConfig(
        retries=0, backoff_base=0.001, backoff_max=0.002, breaker_min_requests=5, connect_timeout=0.5
    )
    client = CacheClient("svc", address=f"{seed[0]}:{seed[1]}", config=cfg)
    client._router.learn(node_a, handshake(3, lambda s: s % 2, nodes=(node_a, node_b)), from_seed=False)
    calls: List[Route] = []

    def attempt(route: Route) -> wire.CacheResponse:
        calls.append(route)
        if route.node == node_a:
            raise CacheConnectionError("refused")
        return wire.CacheResponse(data=b"ok")

    key_a, key_b = key_in(0), key_in(1)
    for _ in range(5):
        with pytest.raises(CacheConnectionError):
            client._with_retries(attempt, lambda: client._route(key_a))
        assert client._with_retries(attempt, lambda: client._route(key_b)).data == b"ok"
    breakers = client.node_breakers()
    assert breakers[f"127.0.0.1:{node_a[1]}"].state == OPEN
    assert breakers[f"127.0.0.1:{node_b[1]}"].state == CLOSED
    assert client.breaker.state == CLOSED
    before = len(calls)
    with pytest.raises(CircuitOpenError) as info:
        client._with_retries(attempt, lambda: client._route(key_a))
    assert f"127.0.0.1:{node_a[1]}" in str(info.value)
    assert len(calls) == before  # failed fast: no attempt
    assert client._with_retries(attempt, lambda: client._route(key_b)).data == b"ok"
    client.close()


# -- rules 3-4 in the clients' request loop (answers given, no server) -------


def _moved(slot: int, node: Tuple[str, int], epoch: int) -> wire.CacheResponse:
    data = {"moved": {"slot": slot, "node": "n", "address": f"{node[0]}:{node[1]}", "epoch": epoch}}
    return wire.CacheResponse(status=13, data=json.dumps(data).encode())


def _client_on_map(
    answers: List[wire.CacheResponse], sent: List[Route]
) -> Tuple[CacheClient, Tuple[str, int], Tuple[str, int], bytes, int]:
    """A client whose map (epoch 5) puts every slot on node a; its requests
    get ``answers`` in turn, and each one's route is put in ``sent``. Every
    address refuses connections, so the map refreshes find nobody."""
    seed, node_a, node_b = (("127.0.0.1", _closed_port()) for _ in range(3))
    cfg = ClientConfig(retries=0, connect_timeout=0.5)
    client = CacheClient("svc", address=f"{seed[0]}:{seed[1]}", config=cfg)
    client._router.learn(node_a, handshake(5, lambda s: 0, nodes=(node_a, node_b)), from_seed=False)

    def send(route: Route, requests: Any) -> List[wire.CacheResponse]:
        sent.append(route)
        return [answers.pop(0) if answers else wire.CacheResponse(data=b"v")]

    client._send = send  # type: ignore[method-assign]
    key = b"some-key"
    slot = client._router.slot_of(key)
    assert slot is not None
    return client, node_a, node_b, key, slot


def test_an_answer_of_a_node_on_an_older_map_is_waited_on_not_followed() -> None:
    sent: List[Route] = []
    answers: List[wire.CacheResponse] = []
    client, node_a, node_b, key, slot = _client_on_map(answers, sent)
    answers += [_moved(slot, node_b, 4), _moved(slot, node_b, 4)]
    started = time.monotonic()
    assert client.get(key) == b"v"
    assert time.monotonic() - started >= 0.03  # 10 ms, then 20 ms
    assert [r.node for r in sent] == [node_a] * 3  # the same node each time
    stats = client.routing_stats()
    assert (stats.redirections, stats.stale_waits) == (0, 2)


def test_a_node_on_an_older_map_is_given_2_s_then_its_cache_013_is_the_answer() -> None:
    sent: List[Route] = []
    answers: List[wire.CacheResponse] = []
    client, node_a, node_b, key, slot = _client_on_map(answers, sent)
    answers += [_moved(slot, node_b, 4)] * 100
    started = time.monotonic()
    with pytest.raises(MovedError):
        client.get(key)
    took = time.monotonic() - started
    assert 1.9 <= took < 4.0, took
    assert {r.node for r in sent} == {node_a}
    assert client.routing_stats().redirections == 0


def test_a_newer_answer_is_followed_at_once_to_the_named_nodes_shard_three_times_at_most() -> None:
    sent: List[Route] = []
    answers: List[wire.CacheResponse] = []
    client, node_a, node_b, key, slot = _client_on_map(answers, sent)
    answers.append(_moved(slot, node_b, 6))
    assert client.get(key) == b"v"
    h = xxhash.xxh3_64_intdigest(key, SEED)
    assert sent == [Route(node_a, ("127.0.0.1", 100 + h % 2)), Route(node_b, ("127.0.0.1", 200 + h % 2))]
    assert client._router.slot_epoch(slot) == 6
    assert client.routing_stats().redirections == 1
    # The slot stays pointed there; an answer as new as that is followed too.
    sent.clear()
    answers += [_moved(slot, node_a, 6), _moved(slot, node_b, 7), _moved(slot, node_a, 7), _moved(slot, node_b, 7)]
    with pytest.raises(MovedError):
        client.get(key)
    assert [r.node for r in sent] == [node_b, node_a, node_b, node_a]
    assert client.routing_stats().redirections == 4


def test_the_async_client_waits_on_an_older_map_and_follows_a_newer_one() -> None:
    seed, node_a, node_b = (("127.0.0.1", _closed_port()) for _ in range(3))
    sent: List[Tuple[str, int]] = []
    answers: List[wire.CacheResponse] = []

    class FakeConn:
        async def request(self, op: wire.CacheOperation) -> wire.CacheResponse:
            return answers.pop(0) if answers else wire.CacheResponse(data=b"v")

    class FakePool:
        def __init__(self, endpoint: Tuple[str, int]) -> None:
            self.endpoint = endpoint

        async def acquire(self) -> FakeConn:
            sent.append(self.endpoint)
            return FakeConn()

    async def run() -> None:
        client = AsyncCacheClient("svc", address=f"{seed[0]}:{seed[1]}", config=ClientConfig(retries=0))
        client._router.learn(node_a, handshake(5, lambda s: 0, nodes=(node_a, node_b)), from_seed=False)
        client._pool = FakePool  # type: ignore[assignment]
        key = b"some-key"
        slot = client._router.slot_of(key)
        assert slot is not None
        shard = xxhash.xxh3_64_intdigest(key, SEED) % 2
        answers.extend([_moved(slot, node_b, 4), _moved(slot, node_b, 6)])
        assert await client.get(key) == b"v"
        # a (older map: wait, same node), a again (newer: follow), b's shard.
        assert sent == [("127.0.0.1", 100 + shard)] * 2 + [("127.0.0.1", 200 + shard)]
        stats = client.routing_stats()
        assert (stats.redirections, stats.stale_waits) == (1, 1)

    asyncio.run(run())
