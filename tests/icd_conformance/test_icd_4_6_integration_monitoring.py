"""ICD sections 4 (service integration: cache types) and 6 (monitoring)."""

from __future__ import annotations

import datetime
import json

import pytest

from conftest import Hub, Server, parse_exposition
from dnd_cache import wire

# ICD 4.1-4.3 as written: service → cache type → (ttl, consistency), with the
# key prefix by which the server recognises the type.
CACHE_TYPES = {
    "character_data": ("character:", 3600, "strong"),
    "computation_results": ("computation:", 300, "eventual"),
    "campaign_state": ("campaign:", 1800, "strong"),
    "participant_list": ("participants:", 600, "eventual"),
    "image_metadata": ("image:", 7200, "eventual"),
    "transformation_results": ("transform:", 86400, "eventual"),
}
SECTIONS = {
    "character_data": "4_1", "computation_results": "4_1",
    "campaign_state": "4_2", "participant_list": "4_2",
    "image_metadata": "4_3", "transformation_results": "4_3",
}


@pytest.mark.parametrize("cache_type", list(CACHE_TYPES), ids=[f"s{SECTIONS[t]}_{t}" for t in CACHE_TYPES])
def test_s4_cache_type_ttl(server: Server, cache_type: str) -> None:
    prefix, ttl, _ = CACHE_TYPES[cache_type]
    conn = server.connect("icd_tests")
    answer = conn.call(wire.CacheOperation(operation="set", key=f"{prefix}ttl".encode(), value=b"v"))
    assert answer.status == 0
    assert answer.metadata.expires_at - answer.metadata.created_at == ttl * 1000


def test_s4_cache_type_consistency(hub: Hub, hub_server: Server) -> None:
    # The policy in force, as config.cache.update answers it; types are listed
    # in the order of ICD section 4.
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
    message = {"event": "config.cache.update", "version": "1.0", "correlation_id": "s4",
               "source": "icd_tests", "timestamp": now.replace("+00:00", "Z"), "ttl": 60,
               "data": {"policy": "events", "parameters": {"enabled": True}, "scope": "global"}}
    reply = json.loads(hub.request("config.cache.update", message).data)
    assert reply["status"] == "ok", reply
    types = reply["data"]["policy"]["types"]
    assert [(t["ttl_s"], t["consistency"]) for t in types] == [
        (ttl, consistency) for _, ttl, consistency in CACHE_TYPES.values()
    ]


# ICD 6.1 as written: name → (type, labels).
ICD_METRICS = {
    "cache_hit_rate": ("gauge", {"service", "operation"}),
    "cache_latency": ("histogram", {"service", "operation"}),
    "cache_memory_usage": ("gauge", {"node", "type"}),
    "cache_node_status": ("gauge", {"node", "zone"}),
    "cache_replication_lag": ("gauge", {"node", "target"}),
}


def test_s6_1_metrics_names_types_and_labels(server: Server) -> None:
    conn = server.connect("character_service")
    conn.call(wire.CacheOperation(operation="set", key=b"character:61", value=b"v"))
    conn.call(wire.CacheOperation(operation="get", key=b"character:61"))
    families = parse_exposition(server.metrics())
    for name, (kind, labels) in ICD_METRICS.items():
        assert name in families, f"{name} is not exported"
        assert families[name]["type"] == kind, (name, families[name]["type"])
        samples = [s for s in families[name]["samples"] if s[0] in (name, f"{name}_bucket")]
        assert samples, f"{name} has no samples"
        for _, sample_labels, _ in samples:
            assert set(sample_labels) - {"le"} == labels, (name, sample_labels)
    hit_rate = [s for s in families["cache_hit_rate"]["samples"]
                if s[1] == {"service": "character_service", "operation": "get"}]
    assert hit_rate and hit_rate[0][2] == 1.0


def test_s6_2_health_checks(server: Server) -> None:
    live = server.rest("GET", "/health/live")
    assert live.status == 200 and live.json()["status"] == "live"
    ready = server.rest("GET", "/health/ready")
    assert ready.status == 200 and ready.json()["status"] == "ready"
    metrics = server.rest("GET", "/health/metrics")
    assert metrics.status == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "# TYPE cache_node_status gauge" in metrics.body.decode()
