"""Cluster routing shared by both clients (docs/cluster.md, "Routing").

A node of a cluster tells in its handshake the cluster's slot map: its epoch,
its nodes (address, shard ports) and the primary node of each of the 4,096
slots. The clients route each key by it: key -> slot (the top 12 bits of the
key hash) -> the slot's primary node -> that node's owner shard (the same
``hash % shard_count`` rule as on one node), so a current map costs no
redirection.

This module holds the decisions, with no I/O, so that the synchronous and
the asyncio client cannot drift apart and so that the rules can be tested
without a server:

- :class:`Router`: the map the client knows, plus what CACHE_013 answers
  told about single slots since (each with its epoch), and where a key goes.
- :func:`moved_decision`: whether a CACHE_013 answer is followed (its epoch
  is at least the slot's known one) or comes from a node still running an
  older map (the request waits and goes to the same node again).
- :class:`StaleWait`: the waits of that second case (10 ms, doubling,
  capped at 200 ms, at most 2 s in all).
- :class:`NodeBreakers`: one circuit breaker per node, so that a dead node
  opens only its own.
- :class:`RoutingStats`: the counters a user (or a test) can read.

A server that is not a cluster (``cluster_epoch`` 0) is routed as before:
its own shard ports, one breaker.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import xxhash

from . import wire
from .breaker import CircuitBreaker
from .config import ClientConfig
from .errors import CacheConnectionError, CircuitOpenError, OperationTimeoutError
from .routing import Endpoint, Topology
from .seeds import format_endpoint

#: Slots of a cluster's map (slot = key hash >> 52).
SLOTS = 4096

#: The first wait before a request answered by a node on an older map is sent again.
STALE_FIRST_WAIT = 0.010
#: The longest single wait of that kind (the waits double up to it).
STALE_MAX_WAIT = 0.200
#: The longest a request waits in all for a node to catch up with the map.
STALE_BUDGET = 2.0
#: The shortest time between two map refreshes.
REFRESH_MIN_INTERVAL = 0.100

#: A CACHE_013 answer to follow: the named node owns the slot.
FOLLOW = "follow"
#: A CACHE_013 answer of a node running an older map than the client's: wait, same node.
WAIT = "wait"


#: A refresh asks each node for its map within at most this long (seconds),
#: so a node that drops packets delays it by a second, not by a whole
#: connect timeout (the Rust and Go clients use the same bound).
REFRESH_CONNECT_TIMEOUT = 1.0


@dataclass(frozen=True)
class Moved:
    """What a CACHE_013 answer says: ``slot`` is served by node ``node`` at
    ``address`` (its public port) under the map of ``epoch``."""

    slot: int
    node: str
    address: Endpoint
    epoch: int


def parse_moved(data: bytes) -> Optional[Moved]:
    """The content of a CACHE_013 answer's data, ``None`` when it is not the
    expected ``{"moved": {"slot", "node", "address", "http", "epoch"}}``."""
    try:
        moved = json.loads(data)["moved"]
        host, port = str(moved["address"]).rsplit(":", 1)
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        return Moved(
            slot=int(moved["slot"]),
            node=str(moved.get("node", "")),
            address=(host, int(port)),
            epoch=int(moved.get("epoch", 0)),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def failed_node(exc: Exception, cluster: bool) -> bool:
    """Whether ``exc`` says the node did not answer: a connection refused,
    reset or closed, and in a cluster also a request that timed out on the
    client's side (a server's CACHE_005 answer is an answer)."""
    if isinstance(exc, CacheConnectionError):
        return True
    return cluster and isinstance(exc, OperationTimeoutError) and exc.status == 0


def breaker_open(node: Optional[Endpoint]) -> CircuitOpenError:
    """The error of a request refused by the breaker of ``node`` (``None``:
    the client's one breaker, a server alone)."""
    if node is None:
        return CircuitOpenError("circuit breaker open: the server is failing")
    return CircuitOpenError(f"circuit breaker open: node {format_endpoint(node)} is failing")


def moved_decision(known_epoch: int, moved_epoch: int) -> str:
    """:data:`FOLLOW` when a CACHE_013 answer of ``moved_epoch`` is at least
    as new as what the client knows about the slot (``known_epoch``), else
    :data:`WAIT`: the answering node runs an older map, and following it
    would send the request back to a node the client knows gave the slot up."""
    return FOLLOW if moved_epoch >= known_epoch else WAIT


class StaleWait:
    """The waits of one request on a node that runs an older map than the
    client's: :data:`STALE_FIRST_WAIT`, doubling, capped at
    :data:`STALE_MAX_WAIT`, for at most :data:`STALE_BUDGET` seconds in all."""

    def __init__(
        self,
        first: float = STALE_FIRST_WAIT,
        cap: float = STALE_MAX_WAIT,
        budget: float = STALE_BUDGET,
    ) -> None:
        self._next = first
        self._cap = cap
        self._left = budget

    def next_delay(self) -> Optional[float]:
        """The wait before sending again, or ``None`` when the budget is spent
        (the request then fails with its CACHE_013)."""
        if self._left <= 0:
            return None
        delay = min(self._next, self._cap, self._left)
        self._left -= delay
        self._next = min(self._next * 2, self._cap)
        return delay


@dataclass(frozen=True)
class Node:
    """A node of the map as clients dial it."""

    id: str
    address: Endpoint
    shard_ports: Tuple[int, ...]
    http_port: int


@dataclass(frozen=True)
class SlotMap:
    """The cluster's map as a handshake tells it."""

    epoch: int
    nodes: Tuple[Node, ...]
    slot_primary: Tuple[int, ...]
    seed: int

    @staticmethod
    def from_handshake(hs: wire.Handshake) -> Optional["SlotMap"]:
        """The map of a cluster node's handshake; ``None`` for a server alone
        (epoch 0) or a map the client cannot use."""
        if hs.cluster_epoch == 0 or hs.hash != "xxh3_64" or len(hs.slot_primary) != SLOTS:
            return None
        if not hs.nodes or any(i >= len(hs.nodes) for i in hs.slot_primary):
            return None
        nodes = tuple(
            Node(n.id, (n.host, n.port), tuple(n.shard_ports), n.http_port) for n in hs.nodes
        )
        return SlotMap(hs.cluster_epoch, nodes, tuple(hs.slot_primary), hs.hash_seed)


@dataclass(frozen=True)
class Route:
    """Where one request goes.

    ``node``: the public address of the node, the key of its circuit breaker;
    ``None`` when the server is not (known to be) a cluster: the client's one
    breaker. ``endpoint``: the port to send to; ``None``: the seed in use,
    found when sending (seeds.py).
    """

    node: Optional[Endpoint]
    endpoint: Optional[Endpoint]


def pin_to(route: Route, moved: Moved) -> Optional[Route]:
    """Where a request goes after following ``moved``: ``None`` when the
    client has a cluster map (``route``, the key's route now, then already
    takes the pointed slot or a newer map into account), else (no map yet)
    the named node's public port."""
    return Route(moved.address, moved.address) if route.node is None else None


class Router:
    """Where each key goes, from what the handshakes and CACHE_013 answers told.

    Holds no connection. The map is replaced as a whole (a reader sees the
    old one or the new one); the per-slot knowledge learned from CACHE_013
    is guarded by a lock, so one router serves every thread of a client.
    """

    def __init__(self, shard_aware: bool = True) -> None:
        self.shard_aware = shard_aware
        #: A server alone: its shard ports (from the seed in use).
        self.topology: Optional[Topology] = None
        #: A cluster: the newest map seen.
        self.map: Optional[SlotMap] = None
        #: Whether any handshake was learned from yet.
        self.learned = False
        self._lock = threading.Lock()
        # slot -> (node address, epoch) learned from CACHE_013 answers newer
        # than the map (dropped when a map at least as new is installed).
        self._slots: Dict[int, Tuple[Endpoint, int]] = {}
        self._by_address: Dict[Endpoint, Node] = {}

    @property
    def epoch(self) -> int:
        """The map's epoch; 0 when no cluster map is known."""
        m = self.map
        return m.epoch if m is not None else 0

    @property
    def is_cluster(self) -> bool:
        return self.map is not None

    def learn(self, endpoint: Endpoint, hs: wire.Handshake, from_seed: bool) -> bool:
        """Takes in a handshake answered at ``endpoint``: a cluster map newer
        than the one known is installed (from any node); a server alone gives
        its shard ports when it is the seed in use. True when a new map was
        installed."""
        known = self.map
        if known is not None and 0 < hs.cluster_epoch <= known.epoch:
            self.learned = True
            return False  # the map known already (or a newer one)
        new = SlotMap.from_handshake(hs)
        if new is None:
            if from_seed:
                if hs.cluster_epoch == 0:
                    topology = Topology.from_handshake(endpoint[0], hs)
                    if topology is not None and topology != self.topology:
                        self.topology = topology
                self.learned = True
            return False
        with self._lock:
            self.learned = True
            if self.map is not None and new.epoch <= self.map.epoch:
                return False
            self.map = new
            self._by_address = {n.address: n for n in new.nodes}
            self._slots = {s: v for s, v in self._slots.items() if v[1] > new.epoch}
            return True

    def forget_topology(self) -> None:
        """After a connection error to a server alone: its shard ports may be stale."""
        self.topology = None

    def slot_of(self, key: bytes) -> Optional[int]:
        """The key's slot under the known map, ``None`` without one."""
        m = self.map
        return None if m is None else xxhash.xxh3_64_intdigest(key, m.seed) >> 52

    def slot_epoch(self, slot: int) -> int:
        """The epoch of what the client knows about ``slot``: that of the
        last CACHE_013 followed for it when newer than the map, else the map's."""
        with self._lock:
            learned = self._slots.get(slot)
        return max(learned[1] if learned else 0, self.epoch)

    def point(self, moved: Moved) -> None:
        """Follows a CACHE_013 answer: ``moved.slot`` is now routed to
        ``moved.address`` under ``moved.epoch``."""
        with self._lock:
            known = self._slots.get(moved.slot)
            if known is None or moved.epoch >= known[1]:
                self._slots[moved.slot] = (moved.address, moved.epoch)

    def route(self, key: bytes, seed_in_use: Optional[Endpoint]) -> Route:
        """Where ``key`` goes; an empty key (health) goes to the seed in use."""
        m = self.map
        if m is None:
            topology = self.topology
            if topology is None or not self.shard_aware or not key:
                return Route(None, seed_in_use)
            return Route(None, topology.endpoint_for(key))
        if not key:
            return Route(seed_in_use, seed_in_use)
        h = xxhash.xxh3_64_intdigest(key, m.seed)
        slot = h >> 52
        with self._lock:
            learned = self._slots.get(slot)
            node = self._by_address.get(learned[0]) if learned else None
        if learned is not None:
            address = learned[0]
        else:
            node = m.nodes[m.slot_primary[slot]]
            address = node.address
        return Route(address, self._shard_endpoint(address, node, h))

    def _shard_endpoint(self, address: Endpoint, node: Optional[Node], h: int) -> Endpoint:
        """The node's owner shard port for hash ``h`` when known, else its public port."""
        if node is None or not self.shard_aware or not node.shard_ports:
            return address
        return (address[0], node.shard_ports[h % len(node.shard_ports)])

    def refresh_candidates(
        self, seeds: Sequence[Endpoint], exclude: Optional[Endpoint] = None
    ) -> List[Endpoint]:
        """Whom to ask for a fresh map: the seeds, then the other nodes of the
        map, each once, and ``exclude`` (the node that just failed) last."""
        m = self.map
        order: List[Endpoint] = list(seeds) + ([n.address for n in m.nodes] if m else [])
        seen: List[Endpoint] = []
        for ep in order:
            if ep not in seen and ep != exclude:
                seen.append(ep)
        if exclude is not None:
            seen.append(exclude)
        return seen

    def node_addresses(self) -> List[Endpoint]:
        """The public address of every node of the map."""
        m = self.map
        return [n.address for n in m.nodes] if m else []


def breaker_for(config: ClientConfig) -> CircuitBreaker:
    """A circuit breaker with the client's ICD 9.2 settings (one per node in
    a cluster, one in all for a server alone)."""
    return CircuitBreaker(
        threshold=config.breaker_threshold,
        window=config.breaker_window,
        min_requests=config.breaker_min_requests,
        cooldown=config.breaker_cooldown,
    )


class NodeBreakers:
    """One circuit breaker per node of a cluster (keyed by its public
    address), with the thresholds of the client's configuration; ``None``
    (a server alone, or not known yet) is the client's one breaker."""

    def __init__(self, config: ClientConfig, default: CircuitBreaker) -> None:
        self._config = config
        self.default = default
        self._lock = threading.Lock()
        self._by_node: Dict[Endpoint, CircuitBreaker] = {}

    def get(self, node: Optional[Endpoint]) -> CircuitBreaker:
        if node is None:
            return self.default
        with self._lock:
            breaker = self._by_node.get(node)
            if breaker is None:
                breaker = breaker_for(self._config)
                self._by_node[node] = breaker
            return breaker

    def items(self) -> List[Tuple[Endpoint, CircuitBreaker]]:
        with self._lock:
            return list(self._by_node.items())


@dataclass
class RoutingStats:
    """Counters of a client's cluster routing.

    ``redirections``: CACHE_013 answers followed to another node;
    ``stale_waits``: CACHE_013 answers of a node on an older map, waited on
    and sent to the same node again; ``map_refreshes``: fresh handshakes
    taken to renew the map (after a newer epoch, a connection error, or an
    open breaker).
    """

    redirections: int = 0
    stale_waits: int = 0
    map_refreshes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def snapshot(self) -> "RoutingStats":
        with self._lock:
            return RoutingStats(self.redirections, self.stale_waits, self.map_refreshes)


def format_nodes(items: Iterable[Tuple[Endpoint, CircuitBreaker]]) -> Dict[str, CircuitBreaker]:
    """Breakers keyed ``host:port``."""
    return {format_endpoint(node): breaker for node, breaker in items}


class ClusterView:
    """What a user (or a test) can read of a client's cluster routing; both
    clients (sync and asyncio) inherit it."""

    _stats: RoutingStats
    _breakers: NodeBreakers
    _router: Router

    def routing_stats(self) -> RoutingStats:
        """A copy of the cluster routing counters: CACHE_013 redirections
        followed, answers of a node on an older map waited on, map refreshes."""
        return self._stats.snapshot()

    def node_breakers(self) -> Dict[str, CircuitBreaker]:
        """In a cluster: the circuit breaker of each node the client sent a
        request to, keyed by its public ``host:port``. A server alone uses
        :attr:`breaker` only."""
        return format_nodes(self._breakers.items())

    @property
    def cluster_epoch(self) -> int:
        """The epoch of the cluster map the client routes by (0: none)."""
        return self._router.epoch
