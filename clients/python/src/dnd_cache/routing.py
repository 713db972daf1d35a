"""Which server port a key goes to (docs/protocol.md, "Owner of a key")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import json

import xxhash

from . import wire

Endpoint = Tuple[str, int]

#: Status of an answer naming the node that owns the key's slot (CACHE_013).
MOVED = 13

#: Most CACHE_013 redirections one request follows.
MAX_REDIRECTS = 3


def slot_of(key: bytes, seed: int) -> int:
    """The cluster slot of ``key``: the top 12 bits of its hash (docs/cluster.md)."""
    return xxhash.xxh3_64_intdigest(key, seed) >> 52


def moved_target(data: bytes) -> Optional[Tuple[int, Endpoint]]:
    """The slot and node endpoint a CACHE_013 answer names."""
    try:
        moved = json.loads(data)["moved"]
        host, port = moved["address"].rsplit(":", 1)
        return int(moved["slot"]), (host, int(port))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


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

    @staticmethod
    def from_handshake(host: str, hs: wire.Handshake) -> Optional["Topology"]:
        """The topology a handshake describes, or ``None`` when it lists no usable ports."""
        if hs.hash == "xxh3_64" and hs.shard_count > 0 and len(hs.shard_ports) == hs.shard_count:
            return Topology(host, tuple(hs.shard_ports), hs.hash_seed)
        return None
