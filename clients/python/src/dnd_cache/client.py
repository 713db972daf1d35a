"""The cache client of ICD section 5.1."""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    Union,
)

import xxhash

from . import wire
from .breaker import CircuitBreaker
from .config import ClientConfig, make_options, resolve_address
from .connection import Connection, ConnectionPool, Endpoint
from .errors import (
    BatchError,
    CacheConnectionError,
    CacheError,
    CircuitOpenError,
    error_for_status,
)
from .values import Key, encode_key, encode_value

K = TypeVar("K", str, bytes)
T = TypeVar("T")

#: Most keys the server accepts in one batch request (CACHE_012 above it).
MAX_BATCH_KEYS = 10_000
_MISS_STATUSES = (1, 2)  # CACHE_001 not found, CACHE_002 expired


def owner_shard(key: bytes, seed: int, shard_count: int) -> int:
    """The shard that owns ``key``: ``xxh3_64_with_seed(key, seed) % shard_count``."""
    return xxhash.xxh3_64_intdigest(key, seed) % shard_count


@dataclass(frozen=True)
class Topology:
    """What the handshake told about the shards."""

    host: str
    shard_ports: Tuple[int, ...]
    seed: int

    def endpoint_for(self, key: bytes) -> Endpoint:
        return (self.host, self.shard_ports[owner_shard(key, self.seed, len(self.shard_ports))])


class CacheClient:
    """A thread-safe client of one dnd-cache server.

    ``address`` defaults to ``$DND_CACHE_ADDR``, then ``127.0.0.1:7000``.
    ``options`` (consistency, compression, encryption) are sent once in the
    handshake and apply to every request; ``token`` is the JWT sent as
    ``auth_token``. Connections open lazily on first use.

    ``correlation_id`` (ICD 1.1) is sent in the handshake and with every
    request of this client; each operation also takes a ``correlation_id``
    keyword that overrides it for that call. The server echoes it in the
    answer and puts it in the ``cache.item.updated`` events the write causes.

    Every operation is retried on connection errors, timeouts, CACHE_009 and
    CACHE_011, up to ``config.retries`` times with exponential backoff and
    full jitter: a cache's get, set and delete are idempotent (a repeated set
    stores the same value again). The circuit breaker counts those failures.
    """

    def __init__(
        self,
        service_id: str,
        options: Union[None, wire.Options, Mapping[str, Any]] = None,
        address: Optional[str] = None,
        token: Optional[str] = None,
        config: Optional[ClientConfig] = None,
        correlation_id: Optional[str] = None,
    ) -> None:
        if not service_id:
            raise ValueError("service_id is required")
        self.config = config or ClientConfig()
        self.correlation_id = _correlation_id(correlation_id)
        self._public: Endpoint = resolve_address(address)
        self._hello = wire.CacheConnection(
            service_id=service_id,
            auth_token=token or "",
            options=make_options(options),
            protocol_version=1,
            correlation_id=self.correlation_id,
        )
        self.breaker = CircuitBreaker(
            threshold=self.config.breaker_threshold,
            window=self.config.breaker_window,
            min_requests=self.config.breaker_min_requests,
            cooldown=self.config.breaker_cooldown,
        )
        self._lock = threading.Lock()
        self._pools: Dict[Endpoint, ConnectionPool] = {}
        self._topology: Optional[Topology] = None
        self._closed = False

    # -- public API --------------------------------------------------------

    def get(self, key: Key, *, correlation_id: Optional[str] = None) -> Optional[bytes]:
        """The value of ``key``, or ``None`` when it is missing or expired."""
        op = wire.CacheOperation(operation="get", key=encode_key(key))
        answer = self._single(op, correlation_id)
        if answer.status in _MISS_STATUSES:
            return None
        _raise_for(answer)
        return answer.data

    def get_str(self, key: Key, *, correlation_id: Optional[str] = None) -> Optional[str]:
        """The value decoded as UTF-8, or ``None`` on a miss."""
        data = self.get(key, correlation_id=correlation_id)
        return None if data is None else data.decode("utf-8")

    def get_json(
        self, key: Key, default: Any = None, *, correlation_id: Optional[str] = None
    ) -> Any:
        """The value parsed as JSON, or ``default`` on a miss."""
        data = self.get(key, correlation_id=correlation_id)
        return default if data is None else json.loads(data)

    def set(
        self,
        key: Key,
        data: Any,
        ttl: Optional[int] = None,
        *,
        correlation_id: Optional[str] = None,
    ) -> wire.Metadata:
        """Stores ``data`` (bytes as is, str as UTF-8, else JSON) for ``ttl`` seconds.

        ``ttl=None`` or 0 takes the server's default TTL. Returns the stored
        item's metadata.
        """
        op = wire.CacheOperation(
            operation="set", key=encode_key(key), value=encode_value(data), ttl=_ttl(ttl)
        )
        answer = self._single(op, correlation_id)
        _raise_for(answer)
        return answer.metadata or wire.Metadata()

    def delete(self, key: Key, *, correlation_id: Optional[str] = None) -> bool:
        """Removes ``key``; ``True`` if it existed."""
        op = wire.CacheOperation(operation="delete", key=encode_key(key))
        answer = self._single(op, correlation_id)
        if answer.status == 1:
            return False
        _raise_for(answer)
        return True

    def get_many(
        self, keys: Iterable[K], *, correlation_id: Optional[str] = None
    ) -> Dict[K, bytes]:
        """The values of the keys found; missing and expired keys are left out."""
        results = self._batch("get_many", list(dict.fromkeys(keys)), correlation_id=correlation_id)
        found: Dict[K, bytes] = {}
        errors: Dict[Key, CacheError] = {}
        for key, item in results:
            if item.status == 0:
                found[key] = item.data
            elif item.status not in _MISS_STATUSES:
                errors[key] = error_for_status(item.status, _message(item.data))
        if errors:
            raise BatchError(errors)
        return found

    def set_many(
        self,
        mapping: Mapping[K, Any],
        ttl: Optional[int] = None,
        *,
        correlation_id: Optional[str] = None,
    ) -> None:
        """Stores every pair; raises :class:`BatchError` naming the keys that failed."""
        values = {key: encode_value(value) for key, value in mapping.items()}
        results = self._batch(
            "set_many", list(values), values=values, ttl=_ttl(ttl), correlation_id=correlation_id
        )
        errors: Dict[Key, CacheError] = {
            key: error_for_status(item.status, _message(item.data))
            for key, item in results
            if item.status != 0
        }
        if errors:
            raise BatchError(errors)

    def delete_many(self, keys: Iterable[K], *, correlation_id: Optional[str] = None) -> int:
        """Removes the keys; returns how many existed."""
        results = self._batch(
            "delete_many", list(dict.fromkeys(keys)), correlation_id=correlation_id
        )
        errors: Dict[Key, CacheError] = {
            key: error_for_status(item.status, _message(item.data))
            for key, item in results
            if item.status not in (0, 1)
        }
        if errors:
            raise BatchError(errors)
        return sum(1 for _, item in results if item.status == 0)

    def health(self, *, correlation_id: Optional[str] = None) -> Dict[str, Any]:
        """The server's health document (``{"status": "ok", ...}``)."""
        answer = self._single(wire.CacheOperation(operation="health"), correlation_id)
        _raise_for(answer)
        result: Dict[str, Any] = json.loads(answer.data)
        return result

    def close(self) -> None:
        """Closes every connection; later calls raise CacheConnectionError."""
        with self._lock:
            self._closed = True
            pools = list(self._pools.values())
        for pool in pools:
            pool.close()

    def __enter__(self) -> "CacheClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- routing and resilience --------------------------------------------

    def _single(
        self, op: wire.CacheOperation, correlation_id: Optional[str] = None
    ) -> wire.CacheResponse:
        op.correlation_id = self._correlation_for(correlation_id)
        key = op.key
        return self._with_retries(lambda: self._send(self._endpoint_for(key), [op])[0])

    def _batch(
        self,
        operation: str,
        keys: List[K],
        values: Optional[Mapping[K, bytes]] = None,
        ttl: int = 0,
        correlation_id: Optional[str] = None,
    ) -> List[Tuple[K, wire.ItemResult]]:
        """Splits the keys by owner shard (and into chunks the server accepts),
        sends each group to its shard, and returns (key, item) in key order."""
        encoded = {key: encode_key(key) for key in keys}
        groups: Dict[Endpoint, List[K]] = {}
        for key in keys:
            groups.setdefault(self._endpoint_for(encoded[key]), []).append(key)
        results: Dict[K, wire.ItemResult] = {}
        for endpoint, group in groups.items():
            for start in range(0, len(group), MAX_BATCH_KEYS):
                chunk = group[start : start + MAX_BATCH_KEYS]
                op = wire.CacheOperation(
                    operation=operation, ttl=ttl, correlation_id=self._correlation_for(correlation_id)
                )
                if values is None:
                    op.keys = [encoded[k] for k in chunk]
                else:
                    op.entries = [wire.Entry(key=encoded[k], value=values[k]) for k in chunk]
                answer = self._with_retries(lambda: self._send(endpoint, [op])[0])
                _raise_for(answer)
                if len(answer.items) != len(chunk):
                    raise CacheError(
                        f"{operation}: {len(answer.items)} items for {len(chunk)} keys",
                        code="CLIENT_003",
                    )
                results.update(zip(chunk, answer.items))
        return [(key, results[key]) for key in keys]

    def _correlation_for(self, per_call: Optional[str]) -> str:
        """The call's correlation id, else the client's, else none ("")."""
        if per_call is not None:
            return _correlation_id(per_call)
        return self.correlation_id

    def _endpoint_for(self, key: bytes) -> Endpoint:
        topology = self._topology
        if topology is None or not self.config.shard_aware or not key:
            return self._public
        return topology.endpoint_for(key)

    def _with_retries(self, attempt: Callable[[], wire.CacheResponse]) -> wire.CacheResponse:
        cfg = self.config
        for n in range(cfg.retries + 1):
            if not self.breaker.allow():
                raise CircuitOpenError("circuit breaker open: the server is failing")
            try:
                answer = attempt()
            except CacheError as exc:
                if not exc.retryable:
                    # A refused handshake or a bad key says nothing about health.
                    self.breaker.abandon()
                    raise
                self.breaker.record(False)
                if isinstance(exc, CacheConnectionError):
                    self._topology = None  # the shard ports may be stale
                if n == cfg.retries:
                    raise
                self._backoff(n)
                continue
            except BaseException:
                self.breaker.abandon()
                raise
            error = error_for_status(answer.status) if answer.status else None
            if error is not None and error.retryable:
                self.breaker.record(False)
                if n < cfg.retries:
                    self._backoff(n)
                    continue
            else:
                self.breaker.record(True)
            return answer
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int) -> None:
        cap = min(self.config.backoff_max, self.config.backoff_base * (2**attempt))
        time.sleep(random.uniform(0, cap))  # full jitter

    def _send(
        self, endpoint: Endpoint, ops: Sequence[wire.CacheOperation]
    ) -> List[wire.CacheResponse]:
        pool = self._pool(endpoint)
        conn = pool.acquire()
        try:
            return conn.roundtrip(ops)
        finally:
            pool.release(conn)

    def _pool(self, endpoint: Endpoint) -> ConnectionPool:
        with self._lock:
            if self._closed:
                raise CacheConnectionError("client closed")
            pool = self._pools.get(endpoint)
            if pool is None:
                cfg = self.config
                pool = ConnectionPool(
                    endpoint,
                    self._connect,
                    min_size=cfg.pool_min_size,
                    max_size=cfg.pool_max_size,
                    idle_timeout=cfg.pool_idle_timeout,
                    acquire_timeout=cfg.connect_timeout,
                )
                self._pools[endpoint] = pool
            return pool

    def _connect(self, endpoint: Endpoint) -> Connection:
        cfg = self.config
        conn = Connection(endpoint, self._hello, cfg.connect_timeout, cfg.request_timeout)
        hs = conn.handshake
        if hs.hash == "xxh3_64" and hs.shard_count > 0 and len(hs.shard_ports) == hs.shard_count:
            topology = Topology(endpoint[0], tuple(hs.shard_ports), hs.hash_seed)
            if topology != self._topology:
                self._topology = topology
        return conn


def _ttl(ttl: Optional[int]) -> int:
    if ttl is None:
        return 0
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 <= ttl < 2**32:
        raise ValueError(f"ttl is whole seconds in [0, 2^32), got {ttl!r}")
    return ttl


#: Longest correlation id the server keeps (it cuts longer ones).
MAX_CORRELATION_ID_BYTES = 64


def _correlation_id(value: Optional[str]) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError(f"correlation_id must be a str, got {type(value).__name__}")
    if len(value.encode("utf-8")) > MAX_CORRELATION_ID_BYTES:
        raise ValueError(f"correlation_id is at most {MAX_CORRELATION_ID_BYTES} bytes")
    return value


def _message(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _raise_for(answer: wire.CacheResponse) -> None:
    if answer.status != 0:
        raise error_for_status(answer.status, _message(answer.data))
