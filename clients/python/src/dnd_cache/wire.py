"""Protobuf messages of proto/cache.proto, encoded and decoded by hand.

Each message is a dataclass whose ``FIELDS`` table (number, name, kind,
repeated) drives one generic encoder and decoder. ``tests/test_wire.py``
checks the tables against the field numbers and types parsed from
``proto/cache.proto`` and checks the bytes against the golden vectors that
prost produced, so the two cannot drift apart.

Encoding follows prost: fields in number order, proto3 defaults left out,
a present nested message written even when empty, repeated numbers packed.
Decoding skips unknown fields of every wire type and accepts packed and
unpacked repeated numbers.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional, Tuple, Type, TypeVar

__all__ = [
    "Field",
    "WireError",
    "Options",
    "CacheConnection",
    "CacheOperation",
    "Entry",
    "Metadata",
    "ClusterNode",
    "CacheResponse",
    "ItemResult",
    "Handshake",
    "MESSAGES",
    "encode",
    "decode",
    "frame",
]

WIRE_VARINT = 0
WIRE_I64 = 1
WIRE_LEN = 2
WIRE_I32 = 5

_U32_MAX = (1 << 32) - 1
_U64_MAX = (1 << 64) - 1


class WireError(ValueError):
    """The bytes are not a valid encoding of the expected message."""


@dataclass(frozen=True)
class Field:
    """One field of a message: ``kind`` is a scalar proto type or a message name."""

    number: int
    name: str
    kind: str
    repeated: bool = False


# ---------------------------------------------------------------------------
# Messages (field numbers: proto/cache.proto)


@dataclass
class Options:
    compression: bool = False
    encryption: bool = False
    consistency: str = ""

    FIELDS: ClassVar[Tuple[Field, ...]] = (
        Field(1, "compression", "bool"),
        Field(2, "encryption", "bool"),
        Field(3, "consistency", "string"),
    )


@dataclass
class CacheConnection:
    service_id: str = ""
    auth_token: str = ""
    options: Optional[Options] = None
    protocol_version: int = 0
    correlation_id: str = ""

    FIELDS: ClassVar[Tuple[Field, ...]] = (
        Field(1, "service_id", "string"),
        Field(2, "auth_token", "string"),
        Field(3, "options", "Options"),
        Field(6, "protocol_version", "uint32"),
        Field(7, "correlation_id", "string"),
    )


@dataclass
class Entry:
    key: bytes = b""
    value: bytes = b""
    ttl: int = 0

    FIELDS: ClassVar[Tuple[Field, ...]] = (
        Field(1, "key", "bytes"),
        Field(2, "value", "bytes"),
        Field(3, "ttl", "uint32"),
    )


@dataclass
class CacheOperation:
    operation: str = ""
    key: bytes = b""
    value: bytes = b""
    ttl: int = 0
    options: Optional[Options] = None
    keys: List[bytes] = field(default_factory=list)
    entries: List[Entry] = field(default_factory=list)
    correlation_id: str = ""
    limit: int = 0
    with_values: bool = False

    FIELDS: ClassVar[Tuple[Field, ...]] = (
        Field(1, "operation", "string"),
        Field(2, "key", "bytes"),
        Field(3, "value", "bytes"),
        Field(4, "ttl", "uint32"),
        Field(5, "options", "Options"),
        Field(6, "keys", "bytes", repeated=True),
        Field(7, "entries", "Entry", repeated=True),
        Field(8, "correlation_id", "string"),
        Field(9, "limit", "uint32"),
        Field(10, "with_values", "bool"),
    )


@dataclass
class Metadata:
    created_at: int = 0
    expires_at: int = 0
    version: int = 0

    FIELDS: ClassVar[Tuple[Field, ...]] = (
        Field(1, "created_at", "uint64"),
        Field(2, "expires_at", "uint64"),
        Field(3, "version", "uint64"),
    )


@dataclass
class ItemResult:
    key: bytes = b""
    status: int = 0
    data: bytes = b""
    metadata: Optional[Metadata] = None

    FIELDS: ClassVar[Tuple[Field, ...]] = (
        Field(1, "key", "bytes"),
        Field(2, "status", "uint32"),
        Field(3, "data", "bytes"),
        Field(4, "metadata", "Metadata"),
    )


@dataclass
class ClusterNode:
    id: str = ""
    zone: str = ""
    host: str = ""
    port: int = 0
    shard_ports: List[int] = field(default_factory=list)
    http_port: int = 0

    FIELDS: ClassVar[Tuple[Field, ...]] = (
        Field(1, "id", "string"),
        Field(2, "zone", "string"),
        Field(3, "host", "string"),
        Field(4, "port", "uint32"),
        Field(5, "shard_ports", "uint32", repeated=True),
        Field(6, "http_port", "uint32"),
    )


@dataclass
class Handshake:
    shard_id: int = 0
    shard_count: int = 0
    shard_ports: List[int] = field(default_factory=list)
    hash: str = ""
    hash_seed: int = 0
    server_version: str = ""
    max_frame_bytes: int = 0
    max_item_bytes: int = 0
    cluster_epoch: int = 0
    nodes: List[ClusterNode] = field(default_factory=list)
    node_index: int = 0
    slot_primary: List[int] = field(default_factory=list)

    FIELDS: ClassVar[Tuple[Field, ...]] = (
        Field(1, "shard_id", "uint32"),
        Field(2, "shard_count", "uint32"),
        Field(3, "shard_ports", "uint32", repeated=True),
        Field(4, "hash", "string"),
        Field(5, "hash_seed", "uint64"),
        Field(6, "server_version", "string"),
        Field(7, "max_frame_bytes", "uint32"),
        Field(8, "max_item_bytes", "uint32"),
        Field(9, "cluster_epoch", "uint64"),
        Field(10, "nodes", "ClusterNode", repeated=True),
        Field(11, "node_index", "uint32"),
        Field(12, "slot_primary", "uint32", repeated=True),
    )


@dataclass
class CacheResponse:
    status: int = 0
    data: bytes = b""
    metadata: Optional[Metadata] = None
    items: List[ItemResult] = field(default_factory=list)
    correlation_id: str = ""
    handshake: Optional[Handshake] = None
    truncated: bool = False

    FIELDS: ClassVar[Tuple[Field, ...]] = (
        Field(1, "status", "uint32"),
        Field(2, "data", "bytes"),
        Field(3, "metadata", "Metadata"),
        Field(6, "items", "ItemResult", repeated=True),
        Field(7, "correlation_id", "string"),
        Field(8, "handshake", "Handshake"),
        Field(9, "truncated", "bool"),
    )


MESSAGES: Dict[str, Type[Any]] = {
    cls.__name__: cls
    for cls in (
        Options,
        CacheConnection,
        CacheOperation,
        Entry,
        Metadata,
        CacheResponse,
        ItemResult,
        ClusterNode,
        Handshake,
    )
}

_SCALARS = {"string", "bytes", "uint32", "uint64", "bool"}
_NUMERIC = {"uint32", "uint64", "bool"}

# ---------------------------------------------------------------------------
# Encoding


def _varint(value: int, out: bytearray) -> None:
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _tag(number: int, wire_type: int, out: bytearray) -> None:
    _varint((number << 3) | wire_type, out)


def _scalar_bytes(kind: str, value: Any) -> bytes:
    if kind == "string":
        return value.encode("utf-8")
    return bytes(value)


def _check_range(f: Field, value: int) -> int:
    limit = _U32_MAX if f.kind == "uint32" else _U64_MAX
    if not 0 <= value <= limit:
        raise ValueError(f"{f.name}={value} out of range for {f.kind}")
    return value


def _encode_into(msg: Any, out: bytearray) -> None:
    for f in type(msg).FIELDS:
        value = getattr(msg, f.name)
        if f.repeated:
            if not value:
                continue
            if f.kind in _NUMERIC:
                packed = bytearray()
                for v in value:
                    _varint(_check_range(f, int(v)), packed)
                _tag(f.number, WIRE_LEN, out)
                _varint(len(packed), out)
                out += packed
            else:
                for v in value:
                    _encode_one(f, v, out)
        elif f.kind in _SCALARS:
            if value:
                _encode_one(f, value, out)
        elif value is not None:
            _encode_one(f, value, out)


def _encode_one(f: Field, value: Any, out: bytearray) -> None:
    if f.kind == "bool":
        _tag(f.number, WIRE_VARINT, out)
        out.append(1 if value else 0)
    elif f.kind in ("uint32", "uint64"):
        _tag(f.number, WIRE_VARINT, out)
        _varint(_check_range(f, int(value)), out)
    elif f.kind in ("string", "bytes"):
        raw = _scalar_bytes(f.kind, value)
        _tag(f.number, WIRE_LEN, out)
        _varint(len(raw), out)
        out += raw
    else:
        inner = bytearray()
        _encode_into(value, inner)
        _tag(f.number, WIRE_LEN, out)
        _varint(len(inner), out)
        out += inner


def encode(msg: Any) -> bytes:
    """The protobuf encoding of one message (no frame header)."""
    out = bytearray()
    _encode_into(msg, out)
    return bytes(out)


def frame(msg: Any) -> bytes:
    """One frame: 4-byte big-endian length, then the encoded message."""
    body = encode(msg)
    return struct.pack(">I", len(body)) + body


# ---------------------------------------------------------------------------
# Decoding

M = TypeVar("M")


def _read_varint(buf: memoryview, pos: int) -> Tuple[int, int]:
    value = 0
    for i in range(10):
        if pos >= len(buf):
            raise WireError("truncated varint")
        byte = buf[pos]
        pos += 1
        if i == 9 and byte > 1:
            raise WireError("varint longer than 64 bits")
        value |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            return value, pos
    raise WireError("varint longer than 10 bytes")


def _take(buf: memoryview, pos: int, n: int) -> Tuple[memoryview, int]:
    end = pos + n
    if end > len(buf):
        raise WireError("truncated field")
    return buf[pos:end], end


def _convert(f: Field, raw: int) -> Any:
    if f.kind == "bool":
        return raw != 0
    if f.kind == "uint32":
        return raw & _U32_MAX  # as prost: a wider varint is truncated
    return raw


def _decode_from(cls: Type[M], buf: memoryview) -> M:
    by_number = {f.number: f for f in cls.FIELDS}  # type: ignore[attr-defined]
    msg = cls()
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        f = by_number.get(number)
        if wire_type == WIRE_VARINT:
            raw, pos = _read_varint(buf, pos)
            if f is not None:
                if f.kind not in _NUMERIC:
                    raise WireError(f"{f.name}: varint for a {f.kind} field")
                value = _convert(f, raw)
                if f.repeated:
                    getattr(msg, f.name).append(value)
                else:
                    setattr(msg, f.name, value)
        elif wire_type == WIRE_LEN:
            n, pos = _read_varint(buf, pos)
            chunk, pos = _take(buf, pos, n)
            if f is None:
                continue
            if f.kind in _NUMERIC:
                if not f.repeated:
                    raise WireError(f"{f.name}: length-delimited for a {f.kind} field")
                inner = 0
                while inner < len(chunk):
                    raw, inner = _read_varint(chunk, inner)
                    getattr(msg, f.name).append(_convert(f, raw))
                continue
            if f.kind == "string":
                try:
                    value = str(chunk, "utf-8")
                except UnicodeDecodeError as exc:
                    raise WireError(f"{f.name}: invalid UTF-8") from exc
            elif f.kind == "bytes":
                value = bytes(chunk)
            else:
                value = _decode_from(MESSAGES[f.kind], chunk)
            if f.repeated:
                getattr(msg, f.name).append(value)
            else:
                setattr(msg, f.name, value)
        elif wire_type == WIRE_I64:
            _, pos = _take(buf, pos, 8)
            if f is not None:
                raise WireError(f"{f.name}: fixed64 for a {f.kind} field")
        elif wire_type == WIRE_I32:
            _, pos = _take(buf, pos, 4)
            if f is not None:
                raise WireError(f"{f.name}: fixed32 for a {f.kind} field")
        else:
            raise WireError(f"unsupported wire type {wire_type}")
    return msg


def decode(cls: Type[M], data: bytes) -> M:
    """Decodes one message of type ``cls``; raises :class:`WireError`."""
    return _decode_from(cls, memoryview(data))
