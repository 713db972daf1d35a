"""The asyncio client: :class:`AsyncCacheClient`, the methods of
:class:`~dnd_cache.CacheClient` as coroutines.

It shares the codec (``wire``), the requests and the reading of answers
(``operations``), the routing (``routing``), the retries and circuit breaker
(``retry``) and the errors with the synchronous client; only the transport
is its own.

**Pipelining.** Calls that run at the same time share a connection: each
writes its frame at once and waits for its answer; the connection hands the
answers out in the order the requests were written (the server answers in
request order, docs/protocol.md). A call that is cancelled leaves its
request on the wire: its answer is still taken off the stream and dropped,
so the next call gets its own answer.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from typing import (
    Any,
    Awaitable,
    Callable,
    Deque,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Tuple,
    TypeVar,
    Union,
)

from . import operations as ops
from . import wire
from .config import ClientConfig, make_options, resolve_seeds
from .connection import DEFAULT_MAX_FRAME, decode_response, frame_length, handshake_of
from .errors import (
    CLOSING_STATUSES,
    CacheConnectionError,
    CacheError,
    OperationTimeoutError,
)
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
from .routing import MAX_REDIRECTS, MOVED, Endpoint
from .seeds import Seeds, no_seed_answered, skips_seed
from .values import Key, encode_value

__all__ = ["AsyncCacheClient", "AsyncConnection", "AsyncConnectionPool"]

K = TypeVar("K", str, bytes)


class AsyncConnection(asyncio.Protocol):
    """One handshaken connection carrying any number of requests in flight.

    An ``asyncio.Protocol``: answers are cut out of the received bytes in
    ``data_received`` and handed to the waiting calls in order, with no
    reader task and no coroutine per answer.

    ``broken`` once the stream can no longer be trusted (transport error,
    undecodable frame, a request past its timeout, a status after which the
    server closes): every waiting call then fails with a retryable error and
    the pool opens a new connection.
    """

    def __init__(self, endpoint: Endpoint, request_timeout: float) -> None:
        self.endpoint = endpoint
        self.broken = False
        self.last_used = time.monotonic()
        self.handshake = wire.Handshake()
        self._request_timeout = request_timeout
        self._max_frame = DEFAULT_MAX_FRAME
        self._loop = asyncio.get_running_loop()
        self._transport: Optional[asyncio.Transport] = None
        self._received = bytearray()
        self._outgoing: List[bytes] = []
        self._pending: Deque["asyncio.Future[wire.CacheResponse]"] = deque()
        self._write_paused: Optional["asyncio.Future[None]"] = None
        self._lost: "asyncio.Future[None]" = self._loop.create_future()

    @classmethod
    async def open(
        cls,
        endpoint: Endpoint,
        hello: wire.CacheConnection,
        connect_timeout: float,
        request_timeout: float,
    ) -> "AsyncConnection":
        conn = cls(endpoint, request_timeout)
        try:
            await asyncio.wait_for(conn._connect(hello), connect_timeout)
        except asyncio.TimeoutError as exc:
            conn.close()
            raise CacheConnectionError(
                f"connect to {endpoint[0]}:{endpoint[1]}: no handshake within {connect_timeout}s"
            ) from exc
        except BaseException:
            conn.close()
            raise
        return conn

    async def _connect(self, hello: wire.CacheConnection) -> None:
        host, port = self.endpoint
        try:
            await self._loop.create_connection(lambda: self, host, port)
        except OSError as exc:
            raise CacheConnectionError(f"connect to {host}:{port}: {exc}") from exc
        answer = self._loop.create_future()
        self._send(hello, answer)
        self.handshake = handshake_of(await answer)
        if self.handshake.max_frame_bytes:
            self._max_frame = self.handshake.max_frame_bytes

    @property
    def in_flight(self) -> int:
        """Requests sent, or queued to send, whose answer has not arrived."""
        return len(self._pending)

    async def request(self, op: wire.CacheOperation) -> wire.CacheResponse:
        """Writes ``op`` behind the requests already in flight and waits for its answer."""
        answer: "asyncio.Future[wire.CacheResponse]" = self._loop.create_future()
        self._send(op, answer)
        timer = self._loop.call_later(self._request_timeout, self._time_out, answer)
        try:
            if self._write_paused is not None:
                await asyncio.shield(self._write_paused)
            return await answer
        except asyncio.CancelledError:
            # The request is on the wire and its answer will come: the
            # cancelled future tells data_received to drop it.
            answer.cancel()
            raise
        finally:
            timer.cancel()

    def close(self) -> None:
        self._fail(CacheConnectionError("connection closed"))

    async def wait_closed(self) -> None:
        if self._transport is not None:
            await asyncio.shield(self._lost)

    # -- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self._received
        buf += data
        start = 0
        try:
            while len(buf) - start >= 4:
                length = frame_length(bytes(buf[start : start + 4]), self._max_frame)
                end = start + 4 + length
                if len(buf) < end:
                    break
                answer = decode_response(bytes(buf[start + 4 : end]))
                start = end
                self._deliver(answer)
        except CacheError as exc:
            self._fail(exc)
        finally:
            del buf[:start]

    def connection_lost(self, exc: Optional[Exception]) -> None:
        reason = f"connection lost: {exc}" if exc else "connection closed by the server"
        self._fail(CacheConnectionError(reason))
        if not self._lost.done():
            self._lost.set_result(None)

    def pause_writing(self) -> None:
        if self._write_paused is None:
            self._write_paused = self._loop.create_future()

    def resume_writing(self) -> None:
        paused, self._write_paused = self._write_paused, None
        if paused is not None and not paused.done():
            paused.set_result(None)

    # -- internals ----------------------------------------------------------

    def _send(self, msg: Any, answer: "asyncio.Future[wire.CacheResponse]") -> None:
        if self.broken or self._transport is None:
            raise CacheConnectionError("connection closed")
        # Frame and queue position are taken together, with no await between
        # them, so the n-th answer is always the n-th waiter's.
        if not self._outgoing:
            self._loop.call_soon(self._flush)
        self._outgoing.append(wire.frame(msg))
        self._pending.append(answer)
        self.last_used = time.monotonic()

    def _flush(self) -> None:
        """Writes the frames of every call of this loop iteration with one
        send: a send per request cost more client CPU than the request."""
        frames, self._outgoing = self._outgoing, []
        if frames and not self.broken and self._transport is not None:
            self._transport.write(b"".join(frames))

    def _deliver(self, answer: wire.CacheResponse) -> None:
        if not self._pending:
            raise CacheError("an answer nobody asked for", code="CLIENT_003")
        waiter = self._pending.popleft()
        if not waiter.done():  # a cancelled call's answer is dropped here
            waiter.set_result(answer)
        if answer.status in CLOSING_STATUSES:
            raise CacheConnectionError(f"server closed after status {answer.status}")

    def _time_out(self, answer: "asyncio.Future[wire.CacheResponse]") -> None:
        if answer.done():
            return
        answer.set_exception(
            OperationTimeoutError(f"no answer within {self._request_timeout}s", status=0)
        )
        # Every answer behind this one waits for it too: give up the stream.
        self._fail(CacheConnectionError("an earlier request on this connection timed out"))

    def _fail(self, error: CacheError) -> None:
        """Marks the connection broken, fails every waiter, closes the socket."""
        self.broken = True
        while self._pending:
            waiter = self._pending.popleft()
            if not waiter.done():
                waiter.set_exception(error)
        self.resume_writing()
        if self._transport is not None:
            self._transport.close()


class AsyncConnectionPool:
    """Connections to one endpoint (ICD 9.2 ``pool``), shared by pipelining.

    A call takes the live connection with the fewest requests in flight; a
    new connection opens only when every one holds ``config.max_pipeline``
    requests (and fewer than ``pool_max_size`` are open), one opening at a
    time. Connections beyond ``pool_min_size`` idle for ``pool_idle_timeout``
    are closed (checked at most once a second).
    """

    def __init__(
        self,
        endpoint: Endpoint,
        opener: Callable[[Endpoint], Awaitable[AsyncConnection]],
        config: ClientConfig,
    ) -> None:
        self.endpoint = endpoint
        self._opener = opener
        self._config = config
        self._conns: List[AsyncConnection] = []
        self._opening: Optional["asyncio.Future[AsyncConnection]"] = None
        self._next_reap = 0.0
        self._closed = False

    @property
    def size(self) -> int:
        """Live connections."""
        return sum(1 for c in self._conns if not c.broken)

    async def acquire(self) -> AsyncConnection:
        cfg = self._config
        while True:
            if self._closed:
                raise CacheConnectionError("client closed")
            now = time.monotonic()
            if now >= self._next_reap:
                self._reap(now)
            best: Optional[AsyncConnection] = None
            for conn in self._conns:
                if not conn.broken and (best is None or conn.in_flight < best.in_flight):
                    best = conn
            if best is not None and (
                best.in_flight < cfg.max_pipeline or self.size >= cfg.pool_max_size
            ):
                return best
            if self._opening is None:
                self._opening = asyncio.ensure_future(self._open())
            # shield: a cancelled caller does not abort a connect others wait for.
            await asyncio.shield(self._opening)

    async def _open(self) -> AsyncConnection:
        try:
            conn = await self._opener(self.endpoint)
            if self._closed:
                conn.close()
            else:
                self._reap(time.monotonic())
                self._conns.append(conn)
            return conn
        finally:
            self._opening = None

    def _reap(self, now: float) -> None:
        self._next_reap = now + 1.0
        cutoff = now - self._config.pool_idle_timeout
        keep: List[AsyncConnection] = []
        for conn in self._conns:
            idle = conn.in_flight == 0 and conn.last_used < cutoff
            if conn.broken or (idle and len(keep) >= self._config.pool_min_size):
                conn.close()
            else:
                keep.append(conn)
        self._conns = keep

    def adopt(self, conn: AsyncConnection) -> None:
        """Takes in a connection opened outside the pool (the one a seed walk
        opened), unless the pool is closed or full."""
        if self._closed or self.size >= self._config.pool_max_size:
            conn.close()
        else:
            self._conns.append(conn)

    async def close(self) -> None:
        self._closed = True
        conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
        for conn in conns:
            await conn.wait_closed()


class AsyncCacheClient(ClusterView):
    """The asyncio client of one dnd-cache server: the methods of
    :class:`~dnd_cache.CacheClient`, awaited (``await client.get(key)``).

    Same constructor, same routing of each key to its owner shard (and in a
    cluster to its slot's node, by the map, with the same rules for CACHE_013,
    map refreshes, per-node breakers and :meth:`routing_stats`), same
    ICD 9.2 behaviour (timeouts, retries with jittered backoff, pool,
    circuit breaker) and the same errors. Use it from one event loop;
    ``async with AsyncCacheClient(...) as client:`` closes it.
    """

    def __init__(
        self,
        service_id: str,
        options: Union[None, wire.Options, Mapping[str, Any]] = None,
        address: Optional[str] = None,
        token: Optional[str] = None,
        config: Optional[ClientConfig] = None,
    ) -> None:
        if not service_id:
            raise ValueError("service_id is required")
        self.config = config or ClientConfig()
        self._seeds = Seeds(resolve_seeds(address))
        # The seed walk under way, which every caller needing the seed awaits.
        self._walking: Optional["asyncio.Future[Endpoint]"] = None
        self._hello = wire.CacheConnection(
            service_id=service_id,
            auth_token=token or "",
            options=make_options(options),
            protocol_version=1,
        )
        self.breaker = breaker_for(self.config)
        # In a cluster: one breaker per node (cluster.py); ``breaker`` is the
        # one of a server alone.
        self._breakers = NodeBreakers(self.config, self.breaker)
        self._pools: Dict[Endpoint, AsyncConnectionPool] = {}
        self._router = Router(self.config.shard_aware)
        self._stats = RoutingStats()
        # The map refresh under way, which every caller needing one awaits,
        # and when the last one began.
        self._refreshing: Optional["asyncio.Future[None]"] = None
        self._last_refresh = -REFRESH_MIN_INTERVAL
        self._closed = False

    # -- public API --------------------------------------------------------

    async def get(self, key: Key) -> Optional[bytes]:
        """The value of ``key``, or ``None`` when it is missing or expired."""
        return ops.get_result(await self._single(ops.get_request(key)))

    async def get_str(self, key: Key) -> Optional[str]:
        """The value decoded as UTF-8, or ``None`` on a miss."""
        data = await self.get(key)
        return None if data is None else data.decode("utf-8")

    async def get_json(self, key: Key, default: Any = None) -> Any:
        """The value parsed as JSON, or ``default`` on a miss."""
        data = await self.get(key)
        return default if data is None else json.loads(data)

    async def set(self, key: Key, data: Any, ttl: Optional[int] = None) -> wire.Metadata:
        """Stores ``data`` (bytes as is, str as UTF-8, else JSON) for ``ttl`` seconds."""
        return ops.set_result(await self._single(ops.set_request(key, data, ttl)))

    async def delete(self, key: Key) -> bool:
        """Removes ``key``; ``True`` if it existed."""
        return ops.delete_result(await self._single(ops.delete_request(key)))

    async def get_many(self, keys: Iterable[K]) -> Dict[K, bytes]:
        """The values of the keys found; missing and expired keys are left out."""
        return ops.get_many_result(await self._batch("get_many", list(dict.fromkeys(keys))))

    async def set_many(self, mapping: Mapping[K, Any], ttl: Optional[int] = None) -> None:
        """Stores every pair; raises :class:`BatchError` naming the keys that failed."""
        values = {key: encode_value(value) for key, value in mapping.items()}
        results = await self._batch("set_many", list(values), values, ops.ttl_seconds(ttl))
        ops.set_many_result(results)

    async def delete_many(self, keys: Iterable[K]) -> int:
        """Removes the keys; returns how many existed."""
        return ops.delete_many_result(await self._batch("delete_many", list(dict.fromkeys(keys))))

    async def health(self) -> Dict[str, Any]:
        """The server's health document (``{"status": "ok", ...}``)."""
        return ops.health_result(await self._single(wire.CacheOperation(operation="health")))

    async def close(self) -> None:
        """Closes every connection; later calls raise CacheConnectionError."""
        self._closed = True
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.close()

    async def __aenter__(self) -> "AsyncCacheClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- routing and resilience --------------------------------------------

    async def _single(self, op: wire.CacheOperation) -> wire.CacheResponse:
        """Sends ``op`` to its key's owner, following CACHE_013 answers
        (cluster.py): at most three redirections, and waits on nodes that
        run an older map than the client's."""
        if op.key:
            await self._learn_first()
        redirects = 0
        stale: Optional[StaleWait] = None
        # The named node, when the map does not route the key there by itself.
        pinned: Optional[Route] = None
        while True:
            answer = await self._with_retries(lambda: pinned or self._route(op.key), op)
            moved = parse_moved(answer.data) if answer.status == MOVED else None
            if moved is None:
                return answer
            if moved_decision(self._router.slot_epoch(moved.slot), moved.epoch) == WAIT:
                stale = stale or StaleWait()
                delay = stale.next_delay()
                if delay is None:
                    return answer
                self._stats.add("stale_waits")
                await asyncio.sleep(delay)
                continue
            if redirects == MAX_REDIRECTS:
                return answer
            redirects += 1
            self._stats.add("redirections")
            self._router.point(moved)
            if moved.epoch > self._router.epoch:
                await self._refresh(prefer=moved.address, newer_than=self._router.epoch)
            pinned = pin_to(self._route(op.key), moved)

    async def _batch(
        self,
        operation: str,
        keys: List[K],
        values: Optional[Mapping[K, bytes]] = None,
        ttl: int = 0,
    ) -> List[Tuple[K, wire.ItemResult]]:
        """Sends every shard of every node its chunks at once and returns
        (key, item) in key order."""
        await self._learn_first()
        chunks = ops.plan_batch(operation, keys, self._route, values, ttl)
        answers = await asyncio.gather(
            *(self._with_retries(self._chunk_route(chunk), chunk.op) for chunk in chunks)
        )
        results: Dict[K, wire.ItemResult] = {}
        for chunk, answer in zip(chunks, answers):
            results.update(ops.chunk_items(chunk, answer))
        for key, item in results.items():
            if item.status == MOVED:
                # In a cluster: a key of another node, sent there alone.
                single = ops.single_of_batch(operation, item.key, values, key, ttl)
                results[key] = ops.item_of(item.key, await self._single(single))
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

    def _route(self, key: bytes) -> Route:
        """Where ``key`` goes (cluster.py); endpoint ``None``: the seed in use,
        found when sending."""
        return self._router.route(key, self._seeds.current)

    async def _learn_first(self) -> None:
        """Before the first request: takes a handshake from the seed, so that
        even the first key goes to its owner. A failure is left to the
        request, which meets it again under its retries."""
        if self._router.learned:
            return
        try:
            await self._pool(self._seeds.current or await self._enter()).acquire()
        except CacheError:
            pass

    async def _with_retries(
        self, route_for: Callable[[], Route], op: wire.CacheOperation
    ) -> wire.CacheResponse:
        """Sends ``op`` on the route ``route_for`` gives, again after
        retryable failures (ICD 9.2), counting each outcome in the breaker of
        the attempt's node."""
        state = RetryState(self.config, self.breaker)
        while True:
            route = await self._admit(state, route_for)
            try:
                conn = await self._pool(route.endpoint or await self._enter()).acquire()
                answer = await conn.request(op)
            except CacheError as exc:
                if failed_node(exc, route.node is not None):
                    await self._node_failed(route)
                await asyncio.sleep(state.after_error(exc))
                continue
            except BaseException:
                state.interrupted()
                raise
            delay = state.after_answer(answer)
            if delay is None:
                return answer
            await asyncio.sleep(delay)

    async def _admit(self, state: RetryState, route_for: Callable[[], Route]) -> Route:
        """The route of the next attempt, once its node's breaker lets it
        through. In a cluster, a node whose breaker is open may have lost the
        slot: the map is refreshed and the key routed again; if it still goes
        there, the attempt fails fast with :class:`CircuitOpenError`."""
        route = route_for()
        if state.admit(self._breakers.get(route.node)):
            return route
        if route.node is not None:
            await self._refresh(exclude=route.node)
            route = route_for()
            if state.admit(self._breakers.get(route.node)):
                return route
        raise breaker_open(route.node)

    async def _node_failed(self, route: Route) -> None:
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
        await self._refresh(exclude=route.node)

    async def _refresh(
        self,
        prefer: Optional[Endpoint] = None,
        exclude: Optional[Endpoint] = None,
        newer_than: Optional[int] = None,
    ) -> None:
        """Renews the cluster map with a fresh handshake: with ``prefer``
        first, then the seeds and the other nodes of the map (``exclude``,
        the node that just failed, last). One refresh at a time (the callers
        meanwhile await it), at most one every 100 ms. ``newer_than``: skip
        it when the map is already past that epoch."""
        if self._refreshing is not None:
            await asyncio.shield(self._refreshing)
            return
        if newer_than is not None and self._router.epoch > newer_than:
            return
        now = time.monotonic()
        if now - self._last_refresh < REFRESH_MIN_INTERVAL:
            return
        self._last_refresh = now
        self._refreshing = asyncio.ensure_future(self._refresh_walk(prefer, exclude))
        # shield: a cancelled caller does not abort a refresh others wait for.
        await asyncio.shield(self._refreshing)

    async def _refresh_walk(self, prefer: Optional[Endpoint], exclude: Optional[Endpoint]) -> None:
        try:
            candidates = self._router.refresh_candidates(self._seeds.endpoints, exclude)
            if prefer is not None:
                candidates = [prefer] + [c for c in candidates if c != prefer]
            for endpoint in candidates:
                if self._closed:
                    return
                try:
                    conn = await self._open(endpoint, min(self.config.connect_timeout, REFRESH_CONNECT_TIMEOUT))
                except CacheError:
                    continue
                self._stats.add("map_refreshes")
                self._router.learn(endpoint, conn.handshake, endpoint == self._seeds.current)
                if self._closed:
                    conn.close()
                else:
                    self._pool(endpoint).adopt(conn)
                return
        finally:
            self._refreshing = None

    def _pool(self, endpoint: Endpoint) -> AsyncConnectionPool:
        if self._closed:
            raise CacheConnectionError("client closed")
        pool = self._pools.get(endpoint)
        if pool is None:
            pool = AsyncConnectionPool(endpoint, self._connect, self.config)
            self._pools[endpoint] = pool
        return pool

    async def _enter(self) -> Endpoint:
        """The seed in use; when there is none, the outcome of a seed walk
        (one at a time: concurrent callers await the same walk)."""
        current = self._seeds.current
        if current is not None:
            return current
        if self._walking is None:
            self._walking = asyncio.ensure_future(self._walk())
        # shield: a cancelled caller does not abort a walk others wait for.
        return await asyncio.shield(self._walking)

    async def _walk(self) -> Endpoint:
        """The first seed that answers the handshake (its connection joins
        that seed's pool), else the error naming every seed tried."""
        try:
            failures: List[Tuple[Endpoint, CacheError]] = []
            for seed in self._seeds.walk():
                pool = self._pool(seed)
                try:
                    conn = await self._open(seed)
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
        finally:
            self._walking = None

    async def _open(self, endpoint: Endpoint, connect_timeout: Optional[float] = None) -> AsyncConnection:
        """A new handshaken connection to ``endpoint``, learning nothing."""
        cfg = self.config
        timeout = cfg.connect_timeout if connect_timeout is None else connect_timeout
        return await AsyncConnection.open(endpoint, self._hello, timeout, cfg.request_timeout)

    async def _connect(self, endpoint: Endpoint) -> AsyncConnection:
        """A pool's new connection: its handshake may carry a newer map (any
        node of a cluster), or the shard ports of the seed in use."""
        conn = await self._open(endpoint)
        self._router.learn(endpoint, conn.handshake, endpoint == self._seeds.current)
        return conn
