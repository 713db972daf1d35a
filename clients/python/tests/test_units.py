"""Configuration, value encoding, retries and the pool, without a server."""

from __future__ import annotations

import json
import re
import threading
import time
from typing import Any, List

import pytest

from dnd_cache import (
    AsyncCacheClient,
    BatchError,
    CacheClient,
    CacheConnectionError,
    CircuitOpenError,
    ClientConfig,
    InvalidKeyError,
    KeyNotFoundError,
    OperationTimeoutError,
    encode_value,
    error_for_status,
)
from dnd_cache import wire
from dnd_cache.config import resolve_seeds
from dnd_cache.seeds import Seeds, skips_seed
from dnd_cache.connection import ConnectionPool


def test_address_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DND_CACHE_ADDR", raising=False)
    assert resolve_seeds(None) == (("127.0.0.1", 7000),)
    monkeypatch.setenv("DND_CACHE_ADDR", "cache.local:7100")
    assert resolve_seeds(None) == (("cache.local", 7100),)
    assert resolve_seeds("[::1]:9") == (("::1", 9),)
    for bad in ("nohost", "h:0", "h:99999", ":7"):
        with pytest.raises(ValueError, match=f"got '{bad}'"):
            resolve_seeds(bad)


def test_address_lists_seeds(monkeypatch: pytest.MonkeyPatch) -> None:
    seeds = (("10.0.0.1", 7000), ("10.0.0.2", 7001), ("::1", 7002))
    assert resolve_seeds("10.0.0.1:7000,10.0.0.2:7001,[::1]:7002") == seeds
    # Whitespace around the commas (and the ends) is ignored.
    assert resolve_seeds(" 10.0.0.1:7000 ,\t10.0.0.2:7001,  [::1]:7002 ") == seeds
    monkeypatch.setenv("DND_CACHE_ADDR", "a.local:1, b.local:2")
    assert resolve_seeds(None) == (("a.local", 1), ("b.local", 2))
    # The argument wins over the environment, list or not.
    assert resolve_seeds("c.local:3") == (("c.local", 3),)


@pytest.mark.parametrize(
    "address, message",
    [
        ("a:1,,b:2", "empty seed address in 'a:1,,b:2'"),
        ("a:1,", "empty seed address in 'a:1,'"),
        (",a:1", "empty seed address in ',a:1'"),
        ("a:1, ,b:2", "empty seed address in 'a:1, ,b:2'"),
        ("a:1,b:x", "got 'b:x' in 'a:1,b:x'"),
        ("a:1,b:0", "got 'b:0' in 'a:1,b:0'"),
        ("a:1,b:65536", "got 'b:65536' in 'a:1,b:65536'"),
        ("a:1,b", "got 'b' in 'a:1,b'"),
        ("a:1,:2", "got ':2' in 'a:1,:2'"),
    ],
)
def test_a_bad_seed_is_named(address: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        resolve_seeds(address)
    with pytest.raises(ValueError, match=re.escape(message)):
        CacheClient("svc", address=address)
    with pytest.raises(ValueError, match=re.escape(message)):
        AsyncCacheClient("svc", address=address)


def test_seed_walks_start_at_the_seed_last_used() -> None:
    a, b, c = ("a", 1), ("b", 2), ("c", 3)
    seeds = Seeds([a, b, c])
    assert seeds.current is None and seeds.walk() == [a, b, c]
    seeds.chose(b)
    assert seeds.current == b
    seeds.forget()
    assert seeds.current is None and seeds.walk() == [b, c, a]
    # One seed: in use from the start, never walked again.
    single = Seeds([a])
    single.forget()
    assert single.current == a


def test_a_walk_skips_seeds_that_cannot_answer_only() -> None:
    assert skips_seed(CacheConnectionError("refused"))
    assert skips_seed(OperationTimeoutError("slow"))
    assert skips_seed(error_for_status(11, "shutting down"))
    # A refused token would be refused by every node.
    assert not skips_seed(error_for_status(101, "bad token"))


def test_options_are_validated() -> None:
    CacheClient("svc", options={"consistency": "eventual", "compression": True})
    with pytest.raises(ValueError):
        CacheClient("svc", options={"consistency": "sometimes"})
    with pytest.raises(ValueError):
        CacheClient("svc", options={"colour": "blue"})
    with pytest.raises(ValueError):
        CacheClient("")


@pytest.mark.parametrize(
    "value, stored",
    [
        (b"\x00\xff", b"\x00\xff"),
        (bytearray(b"ab"), b"ab"),
        ("héllo", "héllo".encode()),
        ({"name": "Aria", "hp": 12}, b'{"name":"Aria","hp":12}'),
        ([1, "two", None], b'[1,"two",null]'),
        (42, b"42"),
        ("", b""),
    ],
)
def test_value_encoding(value: Any, stored: bytes) -> None:
    assert encode_value(value) == stored
    if not isinstance(value, (bytes, bytearray, str)):
        assert json.loads(stored) == value


def test_status_maps_to_typed_error() -> None:
    err = error_for_status(4, "bad key")
    assert isinstance(err, InvalidKeyError) and err.code == "CACHE_004" and err.status == 4
    assert str(err) == "CACHE_004: bad key"
    assert error_for_status(1).code == "CACHE_001" and isinstance(error_for_status(1), KeyNotFoundError)
    assert error_for_status(102).code == "AUTH_002"
    assert error_for_status(77).code == "STATUS_77"
    batch = BatchError({"k": error_for_status(3)})
    assert batch.code == "CACHE_003" and set(batch.errors) == {"k"}


def fast_config(**kw: Any) -> ClientConfig:
    base = dict(backoff_base=0.001, backoff_max=0.002, breaker_min_requests=1000)
    base.update(kw)
    return ClientConfig(**base)  # type: ignore[arg-type]


def test_retries_connection_errors_then_gives_up() -> None:
    client = CacheClient("svc", config=fast_config(retries=3))
    calls: List[int] = []

    def attempt(_route: Any) -> wire.CacheResponse:
        calls.append(1)
        raise CacheConnectionError("refused")

    with pytest.raises(CacheConnectionError):
        client._with_retries(attempt)
    assert len(calls) == 4  # one try + 3 retries


def test_retries_until_success_and_not_on_client_errors() -> None:
    client = CacheClient("svc", config=fast_config(retries=3))
    answers = [wire.CacheResponse(status=11), wire.CacheResponse(status=5), wire.CacheResponse(data=b"v")]
    assert client._with_retries(lambda _route: answers.pop(0)).data == b"v"
    calls: List[int] = []

    def invalid(_route: Any) -> wire.CacheResponse:
        calls.append(1)
        return wire.CacheResponse(status=4)

    assert client._with_retries(invalid).status == 4
    assert len(calls) == 1


def test_breaker_fails_fast_without_calling() -> None:
    client = CacheClient("svc", config=fast_config(retries=0, breaker_min_requests=5))
    calls: List[int] = []

    def attempt(_route: Any) -> wire.CacheResponse:
        calls.append(1)
        raise CacheConnectionError("refused")

    for _ in range(5):
        with pytest.raises(CacheConnectionError):
            client._with_retries(attempt)
    with pytest.raises(CircuitOpenError) as info:
        client._with_retries(attempt)
    assert info.value.code == "CLIENT_002"
    assert len(calls) == 5


class FakeConn:
    def __init__(self) -> None:
        self.broken = False
        self.last_used = time.monotonic()
        self.closed = False

    def close(self) -> None:
        self.closed = self.broken = True


def test_pool_caps_connections_and_reaps_idle_ones() -> None:
    made: List[FakeConn] = []

    def factory(_: Any) -> Any:
        made.append(FakeConn())
        return made[-1]

    pool = ConnectionPool(("h", 1), factory, min_size=2, max_size=3, idle_timeout=300, acquire_timeout=0.05)
    held = [pool.acquire() for _ in range(3)]
    with pytest.raises(CacheConnectionError):
        pool.acquire()  # max_size reached
    for c in held:
        pool.release(c)
    assert pool.size == 3 and pool.idle_count == 3
    assert pool.acquire() is held[-1]  # most recently used first
    pool.release(held[-1])
    for c in held:
        c.last_used = -1e9  # idle for ages
    pool.release(pool.acquire())
    assert pool.size == 2, "reaped down to min_size"
    broken = pool.acquire()
    broken.broken = True
    pool.release(broken)
    assert pool.size == 1


def test_pool_waiter_gets_released_connection() -> None:
    pool = ConnectionPool(("h", 1), lambda _: FakeConn(), 1, 1, 300, acquire_timeout=2)  # type: ignore[arg-type,return-value]
    first = pool.acquire()
    got: List[Any] = []
    t = threading.Thread(target=lambda: got.append(pool.acquire()))
    t.start()
    pool.release(first)
    t.join(2)
    assert got == [first]
