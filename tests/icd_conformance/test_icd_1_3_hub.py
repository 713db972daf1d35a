"""ICD sections 1 (communication architecture, the Message Hub envelope) and
3 (published and subscribed events), against a real nats-server."""

from __future__ import annotations

import datetime
import json
from typing import Any, Dict

from conftest import Hub, Nats, Server, assert_envelope, is_rfc3339
from dnd_cache import CacheClient, wire

ITEM = "cache.item.updated"
HEALTH = "cache.health.status"
CONFIG = "config.cache.update"
CONTROL = "control.cache.action"


def test_s1_1_correlation_id_of_a_binary_request_reaches_its_event(hub: Hub, hub_server: Server) -> None:
    sub = hub.subscribe(ITEM)
    conn = hub_server.connect("character_service")
    answer = conn.call(wire.CacheOperation(operation="set", key=b"character:s1-1", value=b"1", correlation_id="req-s1-1"))
    assert answer.status == 0 and answer.correlation_id == "req-s1-1"
    event = hub.next_json(sub)
    assert event["correlation_id"] == "req-s1-1"
    assert event["data"]["key"] == "character:s1-1"


def test_s1_1_correlation_id_of_a_connection_reaches_its_events(hub: Hub, hub_server: Server) -> None:
    sub = hub.subscribe(ITEM)
    conn = hub_server.connect("character_service", correlation_id="conn-s1-1")
    assert conn.handshake.correlation_id == "conn-s1-1"
    assert conn.call(wire.CacheOperation(operation="delete", key=b"s1:absent")).status == 1
    assert conn.call(wire.CacheOperation(operation="set", key=b"s1:conn", value=b"v")).status == 0
    assert hub.next_json(sub)["correlation_id"] == "conn-s1-1"


def test_s1_1_rest_correlation_id_is_returned_and_reaches_the_event(hub: Hub, hub_server: Server) -> None:
    sub = hub.subscribe(ITEM)
    put = hub_server.rest("PUT", "/api/v2/cache/character:rest-1", {"cache_request": {"value": 1}},
                          {"X-Correlation-ID": "rest-s1-1"})
    assert put.status == 200 and put.headers["x-correlation-id"] == "rest-s1-1"
    assert hub.next_json(sub)["correlation_id"] == "rest-s1-1"
    # Without one, the server makes one, returns it and uses it.
    put = hub_server.rest("PUT", "/api/v2/cache/character:rest-2", {"cache_request": {"value": 2}})
    generated = put.headers["x-correlation-id"]
    assert len(generated) == 32
    assert hub.next_json(sub)["correlation_id"] == generated


def test_s1_1_clients_set_correlation_ids_per_client_and_per_call(hub: Hub, hub_server: Server) -> None:
    sub = hub.subscribe(ITEM)
    with CacheClient("character_service", address=hub_server.binary, correlation_id="py-client") as c:
        c.set("character:s1-py-1", "a")
        c.set("character:s1-py-2", "b", correlation_id="py-call")
    ids = {}
    for _ in range(2):
        e = hub.next_json(sub)
        ids[e["data"]["key"]] = e["correlation_id"]
    assert ids == {"character:s1-py-1": "py-client", "character:s1-py-2": "py-call"}


def test_s1_3_every_item_event_carries_the_envelope(hub: Hub, hub_server: Server) -> None:
    sub = hub.subscribe(ITEM)
    conn = hub_server.connect("character_service")
    conn.call(wire.CacheOperation(operation="set", key=b"character:env", value=b"{}"))
    conn.call(wire.CacheOperation(operation="delete", key=b"character:env"))
    for operation in ("set", "delete"):
        event = hub.next_json(sub)
        assert_envelope(event, ITEM)
        assert event["data"]["operation"] == operation


def test_s1_3_health_events_carry_the_envelope_in_json_and_headers(hub: Hub, hub_server: Server) -> None:
    sub = hub.subscribe(HEALTH)
    msg = hub.next(sub)
    body = json.loads(msg.data)
    assert_envelope(body, HEALTH)
    headers = msg.headers or {}
    assert headers.get("Correlation-Id") == body["correlation_id"]
    assert headers.get("Source-Service") == body["source"]
    assert headers.get("Event-Type") == HEALTH
    assert headers.get("Event-Version") == body["version"]
    assert headers.get("Timestamp") == body["timestamp"]
    assert headers.get("Ttl") == str(body["ttl"])


def test_s1_3_source_and_environment_are_the_configured_ones(hub: Hub, nats_server: Nats) -> None:
    s = Server("--nats-url", nats_server.url, "--health-interval", "1",
               "--service-id", "cache_eu_1", "--environment", "staging")
    try:
        s.wait_hub_connected()
        items, health = hub.subscribe(ITEM), hub.subscribe(HEALTH)
        s.connect("character_service").call(wire.CacheOperation(operation="set", key=b"character:src", value=b"v"))
        for sub in (items, health):
            body = hub.next_json(sub)
            assert (body["source"], body["environment"]) == ("cache_eu_1", "staging"), body
    finally:
        s.stop()


def test_s3_1_1_cache_event_has_the_icd_shape(hub: Hub, hub_server: Server) -> None:
    sub = hub.subscribe(ITEM)
    conn = hub_server.connect("character_service")
    assert conn.call(wire.CacheOperation(operation="set", key=b"character:1234", value=b"{}")).status == 0
    event = hub.next_json(sub)
    assert event["event"] == ITEM
    data: Dict[str, Any] = event["data"]
    assert data["key"] == "character:1234"
    assert data["operation"] == "set"
    assert is_rfc3339(data["timestamp"])
    assert data["service_id"] == "character_service"
    # Our additions only: the key's cache type (ICD 4).
    assert set(data) - {"key", "operation", "timestamp", "service_id"} == {"cache_type"}
    assert data["cache_type"] == "character_data"


def test_s3_1_2_health_event_has_the_icd_shape(hub: Hub, hub_server: Server) -> None:
    sub = hub.subscribe(HEALTH)
    event = hub.next_json(sub)
    assert event["event"] == HEALTH
    data = event["data"]
    assert data["status"] in ("healthy", "warning", "degraded")
    metrics = data["metrics"]
    assert isinstance(metrics["hit_rate"], float) and 0 <= metrics["hit_rate"] <= 1
    assert isinstance(metrics["memory_usage"], float) and 0 <= metrics["memory_usage"] <= 1
    assert isinstance(metrics["ops_rate"], int) and metrics["ops_rate"] >= 0


def envelope_of(event: str, correlation_id: str, age_s: float = 0, version: str = "1.0") -> Dict[str, Any]:
    sent = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=age_s)
    return {
        "event": event,
        "version": version,
        "correlation_id": correlation_id,
        "source": "icd_tests",
        "timestamp": sent.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "ttl": 60,
    }


def test_s1_3_replies_carry_the_envelope(hub: Hub, hub_server: Server) -> None:
    message = {**envelope_of(CONTROL, "ctl-s1-3"), "data": {"action": "flush", "target": "", "parameters": {}}}
    reply = hub.request(CONTROL, message)
    body = json.loads(reply.data)
    assert_envelope(body, "control.cache.action.reply")
    assert body["correlation_id"] == "ctl-s1-3"
    assert body["status"] == "ok" and body["data"]["action"] == "flush"
    assert reply.headers["Correlation-Id"] == "ctl-s1-3"
    assert reply.headers["Event-Type"] == "control.cache.action.reply"


def test_s1_3_stale_or_unknown_major_messages_are_refused(hub: Hub, hub_server: Server) -> None:
    change = {"policy": "ttl", "parameters": {"ttl": 9}, "scope": "global"}
    for message in (
        {**envelope_of(CONFIG, "stale", age_s=61), "data": change},
        {**envelope_of(CONFIG, "v2", version="2.0"), "data": change},
    ):
        body = json.loads(hub.request(CONFIG, message).data)
        assert body["status"] == "error", body
        assert body["correlation_id"] == message["correlation_id"]
        assert body["error"]["code"] == "CACHE_006"
    assert hub_server.metric("cache_hub_invalid_messages_total") == 2
    conn = hub_server.connect("icd_tests")
    answer = conn.call(wire.CacheOperation(operation="set", key=b"plain:s1-3", value=b"v"))
    assert answer.metadata.expires_at - answer.metadata.created_at == 3_600_000, "a refused change was applied"


def test_s8_2_hub_replies_use_the_error_body(hub: Hub, hub_server: Server) -> None:
    message = {**envelope_of(CONTROL, "ctl-s8-2"), "data": {"action": "invalidate", "target": "bad key", "parameters": {}}}
    body = json.loads(hub.request(CONTROL, message).data)
    assert body["status"] == "error"
    error = body["error"]
    assert error["code"] == "CACHE_004"
    assert isinstance(error["message"], str) and error["message"]
    assert error["details"]["key"] == "bad key"
    assert error["details"]["operation"] == "invalidate"
    assert is_rfc3339(error["details"]["timestamp"])


def test_s3_2_1_configuration_event_changes_a_cache_type(hub: Hub, hub_server: Server) -> None:
    message = {
        **envelope_of(CONFIG, "cfg-s3-2-1"),
        "data": {"policy": "ttl", "parameters": {"ttl": 120}, "scope": "character_data"},
    }
    reply = json.loads(hub.request(CONFIG, message).data)
    assert reply["status"] == "ok", reply
    conn = hub_server.connect("character_service")
    answer = conn.call(wire.CacheOperation(operation="set", key=b"character:cfg", value=b"v"))
    assert answer.status == 0
    assert answer.metadata.expires_at - answer.metadata.created_at == 120_000


def test_s3_2_2_control_event_invalidates_and_flushes(hub: Hub, hub_server: Server) -> None:
    sub = hub.subscribe(ITEM)
    conn = hub_server.connect("campaign_service")
    for key in (b"campaign:1", b"campaign:2", b"image:1"):
        assert conn.call(wire.CacheOperation(operation="set", key=key, value=b"v")).status == 0
    for _ in range(3):
        assert hub.next_json(sub)["data"]["operation"] == "set"
    invalidate = {
        **envelope_of(CONTROL, "ctl-s3-2-2"),
        "data": {"action": "invalidate", "target": "campaign:*", "parameters": {}},
    }
    reply = json.loads(hub.request(CONTROL, invalidate).data)
    assert reply["status"] == "ok" and reply["data"]["removed"] == 2, reply
    event = hub.next_json(sub)
    assert event["data"]["operation"] == "invalidate"
    assert event["correlation_id"] == "ctl-s3-2-2"
    assert event["data"]["service_id"] == "icd_tests"
    assert conn.call(wire.CacheOperation(operation="get", key=b"campaign:1")).status == 1
    assert conn.call(wire.CacheOperation(operation="get", key=b"image:1")).status == 0
    flush = {**envelope_of(CONTROL, "ctl-flush"), "data": {"action": "flush", "target": "", "parameters": {}}}
    reply = json.loads(hub.request(CONTROL, flush).data)
    assert reply["status"] == "ok" and reply["data"]["flushed"] == 1, reply
    assert conn.call(wire.CacheOperation(operation="get", key=b"image:1")).status == 1
