"""The requests each client method sends and how their answers become results.

Shared by :class:`~dnd_cache.CacheClient` and
:class:`~dnd_cache.AsyncCacheClient`: a method builds its operation(s) here,
the client sends them its own way, and the answers are read back here, so
both clients return the same values and raise the same errors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Dict, Generic, Hashable, List, Mapping, Optional, Tuple, TypeVar

from . import wire
from .errors import BatchError, CacheError, error_for_status
from .values import Key, encode_key, encode_value

K = TypeVar("K", str, bytes)
R = TypeVar("R", bound=Hashable)

#: Most keys the server accepts in one batch request (CACHE_012 above it).
MAX_BATCH_KEYS = 10_000
MISS_STATUSES = (1, 2)  # CACHE_001 not found, CACHE_002 expired


def get_request(key: Key) -> wire.CacheOperation:
    return wire.CacheOperation(operation="get", key=encode_key(key))


def get_result(answer: wire.CacheResponse) -> Optional[bytes]:
    if answer.status in MISS_STATUSES:
        return None
    raise_for(answer)
    return answer.data


def set_request(key: Key, data: Any, ttl: Optional[int]) -> wire.CacheOperation:
    return wire.CacheOperation(
        operation="set", key=encode_key(key), value=encode_value(data), ttl=ttl_seconds(ttl)
    )


def set_result(answer: wire.CacheResponse) -> wire.Metadata:
    raise_for(answer)
    return answer.metadata or wire.Metadata()


def delete_request(key: Key) -> wire.CacheOperation:
    return wire.CacheOperation(operation="delete", key=encode_key(key))


def delete_result(answer: wire.CacheResponse) -> bool:
    if answer.status == 1:
        return False
    raise_for(answer)
    return True


def health_result(answer: wire.CacheResponse) -> Dict[str, Any]:
    raise_for(answer)
    result: Dict[str, Any] = json.loads(answer.data)
    return result


@dataclass
class BatchChunk(Generic[K, R]):
    """One request of a batch: the keys it carries, to the shard that owns them."""

    # Where the chunk goes (the clients' cluster.Route; its endpoint None:
    # the seed in use, found when the chunk is sent, seeds.py).
    route: R
    keys: List[K]
    op: wire.CacheOperation

    def first_key(self) -> bytes:
        """The first key of the request, encoded."""
        return self.op.keys[0] if self.op.keys else self.op.entries[0].key


def plan_batch(
    operation: str,
    keys: List[K],
    route_for: Callable[[bytes], R],
    values: Optional[Mapping[K, bytes]] = None,
    ttl: int = 0,
) -> List[BatchChunk[K, R]]:
    """Splits the keys by owner (node and shard), then into chunks the server accepts."""
    encoded = {key: encode_key(key) for key in keys}
    groups: Dict[R, List[K]] = {}
    for key in keys:
        groups.setdefault(route_for(encoded[key]), []).append(key)
    chunks: List[BatchChunk[K, R]] = []
    for route, group in groups.items():
        for start in range(0, len(group), MAX_BATCH_KEYS):
            part = group[start : start + MAX_BATCH_KEYS]
            op = wire.CacheOperation(operation=operation, ttl=ttl)
            if values is None:
                op.keys = [encoded[k] for k in part]
            else:
                op.entries = [wire.Entry(key=encoded[k], value=values[k]) for k in part]
            chunks.append(BatchChunk(route, part, op))
    return chunks


def chunk_items(chunk: "BatchChunk[K, Any]", answer: wire.CacheResponse) -> List[Tuple[K, wire.ItemResult]]:
    """The (key, item) pairs of one chunk's answer."""
    raise_for(answer)
    if len(answer.items) != len(chunk.keys):
        raise CacheError(
            f"{chunk.op.operation}: {len(answer.items)} items for {len(chunk.keys)} keys",
            code="CLIENT_003",
        )
    return list(zip(chunk.keys, answer.items))


def get_many_result(results: List[Tuple[K, wire.ItemResult]]) -> Dict[K, bytes]:
    found: Dict[K, bytes] = {}
    errors: Dict[Key, CacheError] = {}
    for key, item in results:
        if item.status == 0:
            found[key] = item.data
        elif item.status not in MISS_STATUSES:
            errors[key] = error_for_status(item.status, message(item.data))
    if errors:
        raise BatchError(errors)
    return found


def set_many_result(results: List[Tuple[K, wire.ItemResult]]) -> None:
    errors: Dict[Key, CacheError] = {
        key: error_for_status(item.status, message(item.data))
        for key, item in results
        if item.status != 0
    }
    if errors:
        raise BatchError(errors)


def delete_many_result(results: List[Tuple[K, wire.ItemResult]]) -> int:
    errors: Dict[Key, CacheError] = {
        key: error_for_status(item.status, message(item.data))
        for key, item in results
        if item.status not in (0, 1)
    }
    if errors:
        raise BatchError(errors)
    return sum(1 for _, item in results if item.status == 0)


def ttl_seconds(ttl: Optional[int]) -> int:
    if ttl is None:
        return 0
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 <= ttl < 2**32:
        raise ValueError(f"ttl is whole seconds in [0, 2^32), got {ttl!r}")
    return ttl


def message(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def raise_for(answer: wire.CacheResponse) -> None:
    if answer.status != 0:
        raise error_for_status(answer.status, message(answer.data))


#: The single-key operation of each batch operation.
_SINGLE_OF = {"get_many": "get", "set_many": "set", "delete_many": "delete"}


def single_of_batch(
    operation: str, key: bytes, values: Optional[Mapping[K, bytes]], original: K, ttl: int
) -> wire.CacheOperation:
    """One item of a batch as its own request (a key another node of the
    cluster owns, answered CACHE_013 in the batch)."""
    op = wire.CacheOperation(operation=_SINGLE_OF[operation], key=key, ttl=ttl)
    if values is not None:
        op.value = values[original]
    return op


def item_of(key: bytes, answer: wire.CacheResponse) -> wire.ItemResult:
    """A single request's answer as the batch item it stands for."""
    return wire.ItemResult(key=key, status=answer.status, data=answer.data, metadata=answer.metadata)


#: Longest correlation id the server keeps (it cuts longer ones).
MAX_CORRELATION_ID_BYTES = 64


def check_correlation_id(value: Optional[str]) -> str:
    """A correlation id (ICD 1.1) as sent: at most 64 bytes of UTF-8; ``None`` is ""."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError(f"correlation_id must be a str, got {type(value).__name__}")
    if len(value.encode("utf-8")) > MAX_CORRELATION_ID_BYTES:
        raise ValueError(f"correlation_id is at most {MAX_CORRELATION_ID_BYTES} bytes")
    return value
