"""The cache client of ICD section 5.1."""

from __future__ import annotations

import json
import threading
import time
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

from . import operations as ops
from . import wire
from .breaker import CircuitBreaker
from .config import ClientConfig, make_options, resolve_seeds
from .connection import Connection, ConnectionPool
from .errors import CacheConnectionError, CacheError
from .operations import MAX_BATCH_KEYS
from .retry import RetryState
from .routing import MAX_REDIRECTS, MOVED, Endpoint, Topology, moved_target, owner_shard, slot_of
from .seeds import Seeds, no_seed_answered, skips_seed
from .values import Key, encode_value

__all__ = ["CacheClient", "MAX_BATCH_KEYS", "owner_shard"]

K = TypeVar("K", str, bytes)


class CacheClient:
    """A thread-safe client of one dnd-cache server.

    ``address`` defaults to ``$DND_CACHE_ADDR``, then ``127.0.0.1:7000``; it
    may list several seeds, comma-separated: the client uses the first that
    answers the handshake (see ``seeds.py``).
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
        self.correlation_id = ops.check_correlation_id(correlation_id)
        self._seeds = Seeds(resolve_seeds(address))
        # One seed walk at a time; the others wait for its outcome.
        self._seed_lock = threading.Lock()
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
        # In a cluster: slots learned (from CACHE_013) to live on other nodes.
        self._moved: Dict[int, Endpoint] = {}
        self._closed = False

    # -- public API --------------------------------------------------------

    def get(self, key: Key, *, correlation_id: Optional[str] = None) -> Optional[bytes]:
        """The value of ``key``, or ``None`` when it is missing or expired."""
        return ops.get_result(self._single(ops.get_request(key), correlation_id))

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
        return ops.set_result(self._single(ops.set_request(key, data, ttl), correlation_id))

    def delete(self, key: Key, *, correlation_id: Optional[str] = None) -> bool:
        """Removes ``key``; ``True`` if it existed."""
        return ops.delete_result(self._single(ops.delete_request(key), correlation_id))

    def get_many(
        self, keys: Iterable[K], *, correlation_id: Optional[str] = None
    ) -> Dict[K, bytes]:
        """The values of the keys found; missing and expired keys are left out."""
        unique = list(dict.fromkeys(keys))
        return ops.get_many_result(self._batch("get_many", unique, correlation_id=correlation_id))

    def set_many(
        self,
        mapping: Mapping[K, Any],
        ttl: Optional[int] = None,
        *,
        correlation_id: Optional[str] = None,
    ) -> None:
        """Stores every pair; raises :class:`BatchError` naming the keys that failed."""
        values = {key: encode_value(value) for key, value in mapping.items()}
        ttl_s = ops.ttl_seconds(ttl)
        ops.set_many_result(
            self._batch("set_many", list(values), values, ttl_s, correlation_id=correlation_id)
        )

    def delete_many(self, keys: Iterable[K], *, correlation_id: Optional[str] = None) -> int:
        """Removes the keys; returns how many existed."""
        unique = list(dict.fromkeys(keys))
        return ops.delete_many_result(
            self._batch("delete_many", unique, correlation_id=correlation_id)
        )

    def health(self, *, correlation_id: Optional[str] = None) -> Dict[str, Any]:
        """The server's health document (``{"status": "ok", ...}``)."""
        op = wire.CacheOperation(operation="health")
        return ops.health_result(self._single(op, correlation_id))

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
        redirect: Optional[Endpoint] = None
        for _ in range(MAX_REDIRECTS + 1):
            # The owner is looked up again on each attempt: a retry after a
            # connection error may find other ports.
            answer = self._with_retries(
                lambda: self._send(redirect or self._endpoint_for(op.key), [op])[0]
            )
            moved = moved_target(answer.data) if answer.status == MOVED else None
            if moved is None:
                return answer
            # In a cluster: the key's slot lives on another node.
            self._moved[moved[0]] = redirect = moved[1]
        return answer

    def _batch(
        self,
        operation: str,
        keys: List[K],
        values: Optional[Mapping[K, bytes]] = None,
        ttl: int = 0,
        *,
        correlation_id: Optional[str] = None,
    ) -> List[Tuple[K, wire.ItemResult]]:
        """Sends each shard its keys (in chunks the server accepts) and returns
        (key, item) in key order."""
        results: Dict[K, wire.ItemResult] = {}
        correlation = self._correlation_for(correlation_id)
        for chunk in ops.plan_batch(operation, keys, self._endpoint_for, values, ttl):
            chunk.op.correlation_id = correlation
            answer = self._with_retries(lambda: self._send(chunk.endpoint, [chunk.op])[0])
            results.update(ops.chunk_items(chunk, answer))
        for key, item in results.items():
            if item.status == MOVED:
                # In a cluster: a key of another node, sent there alone.
                single = ops.single_of_batch(operation, item.key, values, key, ttl)
                results[key] = ops.item_of(item.key, self._single(single, correlation_id))
        return [(key, results[key]) for key in keys]

    def _correlation_for(self, per_call: Optional[str]) -> str:
        """The call's correlation id, else the client's, else none ("")."""
        if per_call is not None:
            return ops.check_correlation_id(per_call)
        return self.correlation_id

    def _endpoint_for(self, key: bytes) -> Optional[Endpoint]:
        """Where ``key`` goes; ``None``: the seed in use, found when sending."""
        topology = self._topology
        if topology is None or not self.config.shard_aware or not key:
            return self._seeds.current
        moved = self._moved.get(slot_of(key, topology.seed)) if self._moved else None
        return moved or topology.endpoint_for(key)

    def _with_retries(self, attempt: Callable[[], wire.CacheResponse]) -> wire.CacheResponse:
        state = RetryState(self.config, self.breaker)
        while True:
            state.before_attempt()
            try:
                answer = attempt()
            except CacheError as exc:
                if isinstance(exc, CacheConnectionError):
                    self._topology = None  # the shard ports may be stale
                    self._seeds.forget()  # and the seed may be down
                time.sleep(state.after_error(exc))
                continue
            except BaseException:
                state.interrupted()
                raise
            delay = state.after_answer(answer)
            if delay is None:
                return answer
            time.sleep(delay)

    def _send(
        self, endpoint: Optional[Endpoint], requests: Sequence[wire.CacheOperation]
    ) -> List[wire.CacheResponse]:
        pool = self._pool(endpoint or self._enter())
        conn = pool.acquire()
        try:
            return conn.roundtrip(requests)
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

    def _enter(self) -> Endpoint:
        """The seed in use; when there is none, the first seed of a walk that
        answers the handshake (its connection joins that seed's pool)."""
        with self._seed_lock:
            current = self._seeds.current
            if current is not None:
                return current
            failures: List[Tuple[Endpoint, CacheError]] = []
            for seed in self._seeds.walk():
                pool = self._pool(seed)
                try:
                    conn = self._connect(seed)
                except CacheError as exc:
                    if not skips_seed(exc):
                        raise
                    failures.append((seed, exc))
                    continue
                self._seeds.chose(seed)
                self._learn_topology(seed, conn.handshake)
                pool.adopt(conn)
                return seed
            raise no_seed_answered(failures)

    def _connect(self, endpoint: Endpoint) -> Connection:
        cfg = self.config
        conn = Connection(endpoint, self._hello, cfg.connect_timeout, cfg.request_timeout)
        if endpoint == self._seeds.current:
            self._learn_topology(endpoint, conn.handshake)
        return conn

    def _learn_topology(self, endpoint: Endpoint, handshake: wire.Handshake) -> None:
        # Shard ports come from the seed in use: other nodes of a cluster
        # are reached on their public port.
        topology = Topology.from_handshake(endpoint[0], handshake)
        if topology is not None and topology != self._topology:
            self._topology = topology
