"""CacheClient against a real cache-server (2 shards, ephemeral ports)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Iterator, List

import pytest

from dnd_cache import (
    BatchError,
    CacheClient,
    ClientConfig,
    InvalidKeyError,
    StorageFullError,
    owner_shard,
    wire,
)
from server import Server


@pytest.fixture
def client(server: Server) -> Iterator[CacheClient]:
    with CacheClient("python_tests", options={"consistency": "strong"}, address=server.address) as c:
        yield c


def test_set_get_delete_roundtrip(client: CacheClient) -> None:
    meta = client.set("py:bytes", b"\x00\x01\xff", ttl=60)
    assert meta.created_at > 0 and meta.expires_at - meta.created_at == 60_000
    assert client.get("py:bytes") == b"\x00\x01\xff"
    assert client.delete("py:bytes") is True
    assert client.get("py:bytes") is None
    assert client.delete("py:bytes") is False


def test_value_encodings(client: CacheClient) -> None:
    client.set("py:str", "héllo")
    client.set("py:json", {"name": "Aria", "level": 7, "tags": ["elf"]})
    assert client.get("py:str") == "héllo".encode()
    assert client.get_str("py:str") == "héllo"
    assert client.get_json("py:json") == {"name": "Aria", "level": 7, "tags": ["elf"]}
    assert client.get_json("py:absent", default={}) == {}
    client.set(b"py:\xc3\xa9", b"raw key")
    assert client.get("py:é") == b"raw key"


def test_empty_value_is_not_a_miss(client: CacheClient) -> None:
    client.set("py:empty", b"")
    assert client.get("py:empty") == b""


def test_ttl_expires(client: CacheClient) -> None:
    client.set("py:short", "x", ttl=1)
    assert client.get("py:short") == b"x"
    time.sleep(2.1)
    assert client.get("py:short") is None


def test_typed_errors(client: CacheClient) -> None:
    with pytest.raises(InvalidKeyError) as info:
        client.set("has space", "v")
    assert info.value.code == "CACHE_004" and info.value.status == 4
    with pytest.raises(StorageFullError) as too_big:
        client.set("py:huge", b"x" * ((1 << 20) + 1))
    assert too_big.value.code == "CACHE_003"
    assert client.get("py:after-errors") is None  # the connection is still fine


def test_batches_span_shards(client: CacheClient) -> None:
    data = {f"py:batch:{i}": {"i": i} for i in range(300)}
    client.set_many(data, ttl=120)
    got = client.get_many(list(data) + ["py:batch:absent"])
    assert len(got) == 300 and "py:batch:absent" not in got
    assert got["py:batch:7"] == b'{"i":7}'
    assert client.delete_many(list(data)[:100] + ["py:batch:absent"]) == 100
    assert len(client.get_many(list(data))) == 200


def test_batch_larger_than_server_limit_is_split(client: CacheClient) -> None:
    keys = [f"py:big:{i}" for i in range(12_500)]
    client.set_many({k: b"v" for k in keys}, ttl=60)
    assert len(client.get_many(keys)) == 12_500
    assert client.delete_many(keys) == 12_500


def test_batch_reports_failed_items(client: CacheClient) -> None:
    with pytest.raises(BatchError) as info:
        client.set_many({"py:ok:1": "a", "bad key": "b", "py:ok:2": "c"})
    assert set(info.value.errors) == {"bad key"}
    assert info.value.errors["bad key"].code == "CACHE_004"
    assert client.get_many(["py:ok:1", "py:ok:2"]) == {"py:ok:1": b"a", "py:ok:2": b"c"}


def forwarded_ops(client: CacheClient) -> int:
    """Operations the shards passed to another shard, from the server's stats."""
    answer = client._single(wire.CacheOperation(operation="stats"))
    return int(json.loads(answer.data)["total"]["forwarded_ops"])


def test_shard_aware_routing_avoids_forwarding(server: Server) -> None:
    """Each key goes straight to its owner's port: no shard forwards any op."""
    with CacheClient("routing", address=server.address) as c:
        c.get("warm-up")  # learns the shard ports
        topo = c._router.topology
        assert topo is not None and list(topo.shard_ports) == server.shard_ports
        before = forwarded_ops(c)
        keys = [f"route:{i}" for i in range(200)]
        for k in keys:
            c.set(k, "v", ttl=60)
        c.get_many(keys)
        assert forwarded_ops(c) == before
        owners = {owner_shard(k.encode(), topo.seed, len(topo.shard_ports)) for k in keys}
        assert owners == set(range(len(server.shard_ports)))
    with CacheClient("unrouted", address=server.address, config=ClientConfig(shard_aware=False)) as c:
        before = forwarded_ops(c)
        for k in keys[:50]:
            c.get(k)
        assert forwarded_ops(c) > before


def test_concurrent_use_stays_within_pool(server: Server) -> None:
    cfg = ClientConfig(pool_min_size=2, pool_max_size=4)
    errors: List[BaseException] = []
    with CacheClient("threads", address=server.address, config=cfg) as c:

        def work(n: int) -> None:
            try:
                for i in range(50):
                    c.set(f"thr:{n}:{i}", str(i))
                    assert c.get(f"thr:{n}:{i}") == str(i).encode()
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert all(p.size <= 4 for p in c._pools.values())
        assert sum(p.size for p in c._pools.values()) >= 2


def test_handshake_errors_are_typed(server: Server) -> None:
    from dnd_cache import CacheError

    with CacheClient("bad service id!", address=server.address, config=ClientConfig(retries=0)) as c:
        with pytest.raises(CacheError) as info:
            c.get("k")
        assert info.value.code == "CACHE_010"


def test_health(client: CacheClient) -> None:
    assert client.health()["status"] == "ok"


def test_correlation_id_per_client_and_per_call(server: Server) -> None:
    with CacheClient("python_tests", address=server.address, correlation_id="py-client-7") as c:
        get = wire.CacheOperation(operation="get", key=b"py:corr")
        assert c._single(get).correlation_id == "py-client-7"
        get = wire.CacheOperation(operation="get", key=b"py:corr")
        assert c._single(get, "py-call-8").correlation_id == "py-call-8"
        c.set("py:corr", "v", correlation_id="py-call-9")
        assert c.get("py:corr", correlation_id="py-call-10") == b"v"
        with pytest.raises(ValueError):
            c.get("py:corr", correlation_id="x" * 65)
    with pytest.raises(ValueError):
        CacheClient("python_tests", address=server.address, correlation_id="x" * 65)
