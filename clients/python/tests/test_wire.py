"""The hand-written codec against proto/cache.proto and prost's golden bytes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from dnd_cache import wire
from dnd_cache.client import owner_shard

import xxhash

REPO = Path(__file__).resolve().parents[3]
PROTO = REPO / "proto" / "cache.proto"
GOLDEN = json.loads((REPO / "clients" / "testdata" / "golden.json").read_text())


def parse_proto(text: str) -> Dict[str, List[Tuple[int, str, str, bool]]]:
    """message name -> [(number, field name, type, repeated)] from the .proto file."""
    text = re.sub(r"//[^\n]*", "", text)
    messages: Dict[str, List[Tuple[int, str, str, bool]]] = {}
    for name, body in re.findall(r"message\s+(\w+)\s*\{([^}]*)\}", text):
        fields = []
        for repeated, ftype, fname, number in re.findall(
            r"(repeated\s+)?(\w+)\s+(\w+)\s*=\s*(\d+)\s*;", body
        ):
            fields.append((int(number), fname, ftype, bool(repeated)))
        messages[name] = sorted(fields)
    return messages


def test_schema_matches_proto_file() -> None:
    proto = parse_proto(PROTO.read_text())
    assert len(proto) == 9, "parsed every message of proto/cache.proto"
    ours = {
        name: sorted((f.number, f.name, f.kind, f.repeated) for f in cls.FIELDS)
        for name, cls in wire.MESSAGES.items()
    }
    assert ours == proto


def test_schema_parser_sees_changes() -> None:
    """The check above would catch a renumbered field."""
    changed = PROTO.read_text().replace("uint32 ttl = 4;", "uint32 ttl = 11;")
    assert parse_proto(changed)["CacheOperation"] != parse_proto(PROTO.read_text())["CacheOperation"]


def from_json(cls: Any, fields: Dict[str, Any]) -> Any:
    """Builds a message from the golden file's JSON conventions."""
    by_name = {f.name: f for f in cls.FIELDS}
    kwargs: Dict[str, Any] = {}
    for name, raw in fields.items():
        f = by_name[name]
        items = raw if f.repeated else [raw]
        conv = []
        for v in items:
            if f.kind == "bytes":
                conv.append(bytes.fromhex(v))
            elif f.kind in ("uint32", "uint64"):
                conv.append(int(v))
            elif f.kind in ("string", "bool"):
                conv.append(v)
            else:
                conv.append(from_json(wire.MESSAGES[f.kind], v))
        kwargs[name] = conv if f.repeated else conv[0]
    return cls(**kwargs)


@pytest.mark.parametrize("vector", GOLDEN["messages"], ids=lambda v: v["name"])
def test_encode_matches_prost(vector: Dict[str, Any]) -> None:
    cls = wire.MESSAGES[vector["type"]]
    assert wire.encode(from_json(cls, vector["fields"])).hex() == vector["hex"]


@pytest.mark.parametrize(
    "vector", GOLDEN["messages"] + GOLDEN["decode_only"], ids=lambda v: v["name"]
)
def test_decode_matches_prost(vector: Dict[str, Any]) -> None:
    cls = wire.MESSAGES[vector["type"]]
    assert wire.decode(cls, bytes.fromhex(vector["hex"])) == from_json(cls, vector["fields"])


def test_golden_file_covers_every_message_kind() -> None:
    types = {v["type"] for v in GOLDEN["messages"]}
    assert types == {"CacheConnection", "CacheOperation", "CacheResponse"}
    assert len(GOLDEN["xxh3_64"]) > 50


def test_protocol_page_example_frames() -> None:
    hello = wire.CacheConnection(service_id="svc", protocol_version=1)
    assert wire.frame(hello).hex() == "000000070a037376633001"
    get = wire.CacheOperation(operation="get", key=b"k1")
    assert wire.frame(get).hex() == "000000090a0367657412026b31"
    assert wire.decode(wire.CacheResponse, bytes.fromhex("0801")).status == 1


def test_unpacked_repeated_numbers_are_accepted() -> None:
    # shard_ports 7100, 7101 sent unpacked (field 3, varint) instead of packed.
    raw = bytes.fromhex("18bc3718bd37")
    assert wire.decode(wire.Handshake, raw).shard_ports == [7100, 7101]


@pytest.mark.parametrize(
    "raw",
    ["0a05616263", "08", "08ffffffffffffffffffff01", "0b", "0a02c328", "0000", "0a01"],
)
def test_malformed_input_is_a_wire_error(raw: str) -> None:
    with pytest.raises(wire.WireError):
        wire.decode(wire.CacheConnection, bytes.fromhex(raw))


def test_out_of_range_numbers_are_refused() -> None:
    with pytest.raises(ValueError):
        wire.encode(wire.CacheOperation(ttl=2**32))


@pytest.mark.parametrize("vector", GOLDEN["xxh3_64"], ids=lambda v: f"{len(v['input_hex']) // 2}b-{v['seed']}")
def test_xxh3_matches_xxhash_rust(vector: Dict[str, Any]) -> None:
    data = bytes.fromhex(vector["input_hex"])
    assert xxhash.xxh3_64_intdigest(data, int(vector["seed"])) == int(vector["hash"])
    assert owner_shard(data, int(vector["seed"]), 7) == int(vector["hash"]) % 7
