"""ICD section 2: the REST API (2.1) and the binary protocol (2.2)."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import REPO, Server, is_rfc3339
from dnd_cache import wire


def test_s2_1_1_cache_operations_get_put_delete(server: Server) -> None:
    path = "/api/v2/cache/character:2-1-1"
    assert server.rest("PUT", path, {"cache_request": {"value": {"hp": 12}, "ttl": 60}}).status == 200
    r = server.rest("GET", path)
    assert r.status == 200 and r.json()["cache_response"]["data"] == {"hp": 12}
    assert server.rest("DELETE", path).status == 200
    assert server.rest("GET", path).status == 404


def test_s2_1_1_cache_operations_batch(server: Server) -> None:
    body = {"operations": [
        {"op": "set", "key": "char:b1", "value": {"a": 1}, "ttl": 60},
        {"op": "get", "key": "char:b1"},
        {"op": "delete", "key": "char:b1"},
        {"op": "get", "key": "char:b1"},
    ]}
    r = server.rest("POST", "/api/v2/cache/batch", body)
    assert r.status == 200
    statuses = [(x["op"], x["status"]) for x in r.json()["results"]]
    assert statuses == [("set", "OK"), ("get", "OK"), ("delete", "OK"), ("get", "CACHE_001")]


def test_s2_1_1_cache_operations_pattern(server: Server) -> None:
    for i in range(3):
        server.rest("PUT", f"/api/v2/cache/hero:{i}", {"cache_request": {"value": i}})
    server.rest("PUT", "/api/v2/cache/villain:0", {"cache_request": {"value": 0}})
    r = server.rest("GET", "/api/v2/cache/pattern/hero:*?limit=10")
    assert r.status == 200
    data = r.json()["cache_response"]["data"]
    assert sorted(item["key"] for item in data["items"]) == ["hero:0", "hero:1", "hero:2"]
    assert data["count"] == 3 and data["truncated"] is False


def test_s2_1_2_cache_management_flush_stats_reload_health(server: Server) -> None:
    server.rest("PUT", "/api/v2/cache/mgmt:1", {"cache_request": {"value": 1}})
    stats = server.rest("GET", "/api/v2/cache/stats")
    assert stats.status == 200 and stats.json()["cache_response"]["data"]["total"]["items"] >= 1
    flush = server.rest("POST", "/api/v2/cache/flush")
    assert flush.status == 200 and flush.json()["cache_response"]["data"]["flushed"] >= 1
    assert server.rest("GET", "/api/v2/cache/mgmt:1").status == 404
    reload = server.rest("POST", "/api/v2/cache/reload")
    assert reload.status == 200
    assert set(reload.json()["cache_response"]["data"]) >= {"reloaded", "requires_restart", "errors"}
    health = server.rest("GET", "/api/v2/cache/health")
    assert health.status == 200 and health.json()["cache_response"]["data"]["status"] == "ok"


def test_s2_1_3_request_and_response_format(server: Server) -> None:
    request = {"cache_request": {
        "key": "character:213",
        "value": {"name": "Aria", "level": 7},
        "ttl": 3600,
        "options": {"consistency": "strong", "compression": True, "encryption": False},
    }}
    put = server.rest("PUT", "/api/v2/cache/character:213", request)
    assert put.status == 200, put
    r = server.rest("GET", "/api/v2/cache/character:213")
    response = r.json()["cache_response"]
    assert response["status"] == "OK"
    assert response["data"] == {"name": "Aria", "level": 7}
    meta = response["metadata"]
    assert is_rfc3339(meta["created_at"]) and is_rfc3339(meta["expires_at"])
    assert isinstance(meta["version"], str) and meta["version"].isdigit()


# The messages of ICD 2.2 as written there: name → {field: (number, type)}.
ICD_MESSAGES = {
    "CacheConnection": {"service_id": (1, "string"), "auth_token": (2, "string"), "options": (3, "Options")},
    "Options": {"compression": (1, "bool"), "encryption": (2, "bool"), "consistency": (3, "string")},
    "CacheOperation": {
        "operation": (1, "string"), "key": (2, "bytes"), "value": (3, "bytes"),
        "ttl": (4, "uint32"), "options": (5, "Options"),
    },
    "CacheResponse": {"status": (1, "uint32"), "data": (2, "bytes"), "metadata": (3, "Metadata")},
}


def proto_fields(message: str) -> dict:
    text = (REPO / "proto" / "cache.proto").read_text()
    body = re.search(r"message %s \{(.*?)\n\}" % message, text, re.S)
    assert body, f"{message} missing from proto/cache.proto"
    return {
        name: (int(number), kind)
        for kind, name, number in re.findall(r"^\s*(?:repeated\s+)?(\w+)\s+(\w+)\s*=\s*(\d+);", body.group(1), re.M)
    }


def test_s2_2_messages_keep_the_icd_names_and_numbers() -> None:
    for message, fields in ICD_MESSAGES.items():
        have = proto_fields(message)
        for name, spec in fields.items():
            assert have.get(name) == spec, f"{message}.{name}: ICD {spec}, proto {have.get(name)}"
        # Our additions take numbers 6 and up.
        assert all(n >= 6 for f, (n, _) in have.items() if f not in fields), (message, have)


def test_s2_2_1_connection_with_icd_fields_only(server: Server) -> None:
    conn = server.connect(
        "character_service",
        auth_token="",
        options=wire.Options(compression=True, encryption=False, consistency="strong"),
    )
    assert conn.handshake.status == 0
    conn.close()


def test_s2_2_2_operations_and_responses(server: Server) -> None:
    conn = server.connect("character_service")
    options = wire.Options(compression=True, consistency="eventual")
    op = wire.CacheOperation(operation="set", key=b"character:222", value=b"\x00bytes", ttl=300, options=options)
    answer = conn.call(op)
    assert answer.status == 0
    assert answer.metadata.expires_at - answer.metadata.created_at == 300_000
    got = conn.call(wire.CacheOperation(operation="get", key=b"character:222"))
    assert (got.status, got.data) == (0, b"\x00bytes")
    assert got.metadata.version == answer.metadata.version
    assert conn.call(wire.CacheOperation(operation="delete", key=b"character:222")).status == 0
    assert conn.call(wire.CacheOperation(operation="get", key=b"character:222")).status == 1
    for name in ("stats", "health", "flush"):
        assert conn.call(wire.CacheOperation(operation=name)).status == 0
