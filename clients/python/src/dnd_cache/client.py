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
from .config import ClientConfig, make_options, resolve_seeds
from .connection import Connection, ConnectionPool
from .errors import CacheConnectionError, CacheError
from .operations import MAX_BATCH_KEYS
from .retry import RetryState
from .cluster import (
    REFRESH_MIN_INTERVAL,
    WAIT,
    NodeBreakers,
    Route,
    Router,
    RoutingStats,
    StaleWait,
    failed_node,
    REFRESH_CONNECT_TIMEOUT,
    ClusterView,
    breaker_for,
    moved_decision,
    breaker_open,
    parse_moved,
    pin_to,
)
from .routing import MAX_REDIRECTS, MOVED, Endpoint, owner_shard
from .seeds import Seeds, no_seed_answered, skips_seed
from .values import Key, encode_value

__all__ = ["CacheClient", "MAX_BATCH_KEYS", "owner_shard"]

K = TypeVar("K", str, bytes)


class CacheClient(ClusterView):
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

    **Cluster.** When the server is a node of a cluster, its handshake's slot
    map routes each key to its slot's primary node, on that node's owner
    shard, so a current map costs no redirection. A CACHE_013 answer at
    least as new as what the client knows about the slot is followed at once
    (at most 3 times per request; a newer epoch also refreshes the map); one
    from a node still on an older map is waited on (10 ms doubling to
    200 ms, 2 s in all) and sent to the same node again. A connection error
    or timeout refreshes the map from another node before the retry. Each
    node has its own circuit breaker (:meth:`node_breakers`); a server alone
    uses :attr:`breaker`. :meth:`routing_stats` counts redirections, stale
    answers waited on and map refreshes (``cluster.py``).
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
        self.breaker = breaker_for(self.config)
        # In a cluster: one breaker per node (cluster.py); ``breaker`` is the
        # one of a server alone.
        self._breakers = NodeBreakers(self.config, self.breaker)
        self._lock = threading.Lock()
        self._pools: Dict[Endpoint, ConnectionPool] = {}
        self._router = Router(self.config.shard_aware)
        self._stats = RoutingStats()
        # One map refresh at a time, and when it was last done.
        self._refresh_lock = threading.Lock()
        self._last_refresh = -REFRESH_MIN_INTERVAL
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
        """Sends ``op`` to its key's owner, following CACHE_013 answers
        (cluster.py): at most three redirections, and waits on nodes that
        run an older map than the client's."""
        op.correlation_id = self._correlation_for(correlation_id)
        if op.key:
            self._learn_first()
        redirects = 0
        stale: Optional[StaleWait] = None
        # The named node, when the map does not route the key there by itself.
        pinned: Optional[Route] = None
        while True:
            answer = self._with_retries(
                lambda route: self._send(route, [op])[0], lambda: pinned or self._route(op.key)
            )
            moved = parse_moved(answer.data) if answer.status == MOVED else None
            if moved is None:
                return answer
            if moved_decision(self._router.slot_epoch(moved.slot), moved.epoch) == WAIT:
                stale = stale or StaleWait()
                delay = stale.next_delay()
                if delay is None:
                    return answer
                self._stats.add("stale_waits")
                time.sleep(delay)
                continue
            if redirects == MAX_REDIRECTS:
                return answer
            redirects += 1
            self._stats.add("redirections")
            self._router.point(moved)
            if moved.epoch > self._router.epoch:
                self._refresh(prefer=moved.address, newer_than=self._router.epoch)
            pinned = pin_to(self._route(op.key), moved)

    def _batch(
        self,
        operation: str,
        keys: List[K],
        values: Optional[Mapping[K, bytes]] = None,
        ttl: int = 0,
        *,
        correlation_id: Optional[str] = None,
    ) -> List[Tuple[K, wire.ItemResult]]:
        """Sends each shard of each node its keys (in chunks the server
        accepts) and returns (key, item) in key order."""
        results: Dict[K, wire.ItemResult] = {}
        correlation = self._correlation_for(correlation_id)
        self._learn_first()
        for chunk in ops.plan_batch(operation, keys, self._route, values, ttl):
            chunk.op.correlation_id = correlation
            answer = self._with_retries(
                lambda route: self._send(route, [chunk.op])[0], self._chunk_route(chunk)
            )
            results.update(ops.chunk_items(chunk, answer))
        for key, item in results.items():
            if item.status == MOVED:
                # In a cluster: a key of another node, sent there alone.
                single = ops.single_of_batch(operation, item.key, values, key, ttl)
                results[key] = ops.item_of(item.key, self._single(single, correlation_id))
        return [(key, results[key]) for key in keys]

    def _chunk_route(self, chunk: ops.BatchChunk[K, Route]) -> Callable[[], Route]:
        """The route of a batch chunk's attempts: the planned one first; after
        a failure, where the (possibly refreshed) map sends its first key
        (its other keys, if they moved elsewhere, come back CACHE_013 and are
        sent one by one)."""
        tries = [0]

        def route() -> Route:
            tries[0] += 1
            return chunk.route if tries[0] == 1 else self._route(chunk.first_key())

        return route

    def _correlation_for(self, per_call: Optional[str]) -> str:
        """The call's correlation id, else the client's, else none ("")."""
        if per_call is not None:
            return ops.check_correlation_id(per_call)
        return self.correlation_id

    def _route(self, key: bytes) -> Route:
        """Where ``key`` goes (cluster.py); endpoint ``None``: the seed in use,
        found when sending."""
        return self._router.route(key, self._seeds.current)

    def _learn_first(self) -> None:
        """Before the first request: takes a handshake from the seed, so that
        even the first key goes to its owner. A failure is left to the
        request, which meets it again under its retries."""
        if self._router.learned:
            return
        try:
            pool = self._pool(self._seeds.current or self._enter())
            pool.release(pool.acquire())
        except CacheError:
            pass

    def _with_retries(
        self,
        attempt: Callable[[Route], wire.CacheResponse],
        route_for: Callable[[], Route] = lambda: Route(None, None),
    ) -> wire.CacheResponse:
        """Runs ``attempt`` on the route ``route_for`` gives, again after
        retryable failures (ICD 9.2), counting each outcome in the breaker of
        the attempt's node."""
        state = RetryState(self.config, self.breaker)
        while True:
            route = self._admit(state, route_for)
            try:
                answer = attempt(route)
            except CacheError as exc:
                if failed_node(exc, route.node is not None):
                    self._node_failed(route)
                time.sleep(state.after_error(exc))
                continue
            except BaseException:
                state.interrupted()
                raise
            delay = state.after_answer(answer)
            if delay is None:
                return answer
            time.sleep(delay)

    def _admit(self, state: RetryState, route_for: Callable[[], Route]) -> Route:
        """The route of the next attempt, once its node's breaker lets it
        through. In a cluster, a node whose breaker is open may have lost the
        slot: the map is refreshed and the key routed again; if it still goes
        there, the attempt fails fast with :class:`CircuitOpenError`."""
        route = route_for()
        if state.admit(self._breakers.get(route.node)):
            return route
        if route.node is not None:
            self._refresh(exclude=route.node)
            route = route_for()
            if state.admit(self._breakers.get(route.node)):
                return route
        raise breaker_open(route.node)

    def _node_failed(self, route: Route) -> None:
        """After a connection error or timeout on ``route``: in a cluster the
        map is refreshed from another node (the node may be gone and its
        slots promoted elsewhere); a server alone's shard ports may be
        stale. With several seeds, the seed in use may be down: walk again."""
        if route.node is None:
            self._router.forget_topology()
            self._seeds.forget()
            return
        if route.node == self._seeds.current or route.endpoint is None:
            self._seeds.forget()
        self._refresh(exclude=route.node)

    def _refresh(
        self,
        prefer: Optional[Endpoint] = None,
        exclude: Optional[Endpoint] = None,
        newer_than: Optional[int] = None,
    ) -> None:
        """Renews the cluster map with a fresh handshake: with ``prefer``
        first, then the seeds and the other nodes of the map (``exclude``,
        the node that just failed, last). One refresh at a time, at most one
        every 100 ms; a caller that waited for another's refresh takes its
        outcome. ``newer_than``: skip it when the map is already past that
        epoch."""
        with self._refresh_lock:
            if newer_than is not None and self._router.epoch > newer_than:
                return
            now = time.monotonic()
            if now - self._last_refresh < REFRESH_MIN_INTERVAL:
                return
            self._last_refresh = now
            candidates = self._router.refresh_candidates(self._seeds.endpoints, exclude)
            if prefer is not None:
                candidates = [prefer] + [c for c in candidates if c != prefer]
            for endpoint in candidates:
                if self._closed:
                    return
                try:
                    conn = self._open(endpoint, min(self.config.connect_timeout, REFRESH_CONNECT_TIMEOUT))
                except CacheError:
                    continue
                self._stats.add("map_refreshes")
                self._router.learn(endpoint, conn.handshake, endpoint == self._seeds.current)
                self._pool(endpoint).adopt(conn)
                return

    def _send(
        self, route: Route, requests: Sequence[wire.CacheOperation]
    ) -> List[wire.CacheResponse]:
        pool = self._pool(route.endpoint or self._enter())
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
                    conn = self._open(seed)
                except CacheError as exc:
                    if not skips_seed(exc):
                        raise
                    failures.append((seed, exc))
                    continue
                self._seeds.chose(seed)
                self._router.learn(seed, conn.handshake, True)
                pool.adopt(conn)
                return seed
            raise no_seed_answered(failures)

    def _open(self, endpoint: Endpoint, connect_timeout: Optional[float] = None) -> Connection:
        """A new handshaken connection to ``endpoint``, learning nothing."""
        cfg = self.config
        timeout = cfg.connect_timeout if connect_timeout is None else connect_timeout
        return Connection(endpoint, self._hello, timeout, cfg.request_timeout)

    def _connect(self, endpoint: Endpoint) -> Connection:
        """A pool's new connection: its handshake may carry a newer map (any
        node of a cluster), or the shard ports of the seed in use."""
        conn = self._open(endpoint)
        self._router.learn(endpoint, conn.handshake, endpoint == self._seeds.current)
        return conn
