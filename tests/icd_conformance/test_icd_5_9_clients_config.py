"""ICD sections 5 (client libraries: the examples run as written) and 9
(configuration: the service YAML as written, the client defaults)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator

import pytest

from conftest import Nats, REPO, Server, parse_exposition

# ICD 5.1, copied as written.
ICD_5_1 = '''
from dnd_cache import CacheClient

client = CacheClient(
    service_id="character_service",
    options={
        "consistency": "strong",
        "compression": True,
        "encryption": True
    }
)

# Cache operations
client.get("character:1234")
client.set("character:1234", data, ttl=3600)
client.delete("character:1234")

# Batch operations
client.get_many(["char:1", "char:2"])
client.set_many({
    "char:1": data1,
    "char:2": data2
}, ttl=3600)
'''

# ICD 5.2, copied as written.
ICD_5_2 = '''
package main

import "dnd/cache"

func main() {
    client := cache.NewClient(&cache.Config{
        ServiceID: "campaign_service",
        Options: cache.Options{
            Consistency: "strong",
            Compression: true,
            Encryption: true,
        },
    })

    // Cache operations
    client.Get(ctx, "campaign:1234")
    client.Set(ctx, "campaign:1234", data, cache.TTL(3600))
    client.Delete(ctx, "campaign:1234")
}
'''

# What the examples leave to their surroundings: `data`, `data1`, `data2`, `ctx`.
PYTHON_PRELUDE = 'data = {"name": "Aria", "level": 7}\ndata1 = {"hp": 1}\ndata2 = {"hp": 2}\n'
GO_PRELUDE = 'package main\n\nimport "context"\n\nvar ctx = context.Background()\n\nvar data = map[string]any{"name": "Brom"}\n'


@pytest.fixture(scope="module")
def example_server() -> Iterator[Server]:
    """The server the examples talk to: started with its defaults (apart
    from the ephemeral ports), so without --encryption-key-file."""
    s = Server()
    yield s
    s.stop()


def requests_and_errors(s: Server, service: str) -> tuple:
    families = parse_exposition(s.metrics())
    requests: Dict[str, float] = {}
    for name, labels, value in families["cache_requests_total"]["samples"]:
        if labels.get("service") == service:
            requests[labels["operation"]] = value
    errors = {
        (labels["operation"], labels["code"]): value
        for name, labels, value in families["cache_errors_total"]["samples"]
        if labels.get("service") == service
    }
    return requests, errors


def test_s5_1_python_client_example_as_written(example_server: Server) -> None:
    env = {**os.environ, "DND_CACHE_ADDR": example_server.binary}
    run = subprocess.run([sys.executable, "-c", PYTHON_PRELUDE + ICD_5_1], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    requests, errors = requests_and_errors(example_server, "character_service")
    # One request per operation (a batch: one per shard its keys live on).
    assert set(requests) == {"get", "set", "delete", "get_many", "set_many"}, requests
    assert (requests["get"], requests["set"], requests["delete"]) == (1, 1, 1), requests
    assert errors == {("get", "CACHE_001"): 1}, errors
    assert example_server.rest("GET", "/api/v2/cache/character:1234").status == 404
    for key, value in (("char:1", {"hp": 1}), ("char:2", {"hp": 2})):
        r = example_server.rest("GET", f"/api/v2/cache/{key}")
        assert r.status == 200 and r.json()["cache_response"]["data"] == value


def test_s5_2_go_client_example_as_written(example_server: Server, tmp_path: Path) -> None:
    (tmp_path / "go.mod").write_text(
        f"module icdexample\n\ngo 1.19\n\nrequire dnd/cache v0.0.0\n\nreplace dnd/cache => {REPO / 'clients' / 'go'}\n"
    )
    (tmp_path / "main.go").write_text(ICD_5_2.lstrip())
    (tmp_path / "prelude.go").write_text(GO_PRELUDE)
    env = {**os.environ, "DND_CACHE_ADDR": example_server.binary, "GOFLAGS": "-mod=mod", "GOPROXY": "off"}
    run = subprocess.run(["go", "run", "."], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    # The example ignores every error: the server's counters tell what happened.
    requests, errors = requests_and_errors(example_server, "campaign_service")
    assert requests == {"get": 1, "set": 1, "delete": 1}, requests
    assert errors == {("get", "CACHE_001"): 1}, errors


# ICD 9.1, copied as written.
ICD_9_1 = '''config:
  service:
    id: "cache_service"
    version: "2.0.0"
    environment: "production"
  
  cluster:
    nodes: 3
    zones: ["us-east-1a", "us-east-1b"]
    replication: 2
  
  policies:
    eviction: "lru"
    ttl_default: 3600
    max_memory: "75%"
'''


def test_s9_1_service_configuration_as_written(tmp_path: Path, nats_server: Nats) -> None:
    """The ICD's file describes a cluster (3 nodes, 2 copies, two zones): it
    needs the Message Hub, so alone it is refused (exit 78 naming
    --nats-url); with a NATS URL and one of its zones the node serves."""
    path = tmp_path / "config.yaml"
    path.write_text(ICD_9_1)
    binary = os.environ.get("DND_CACHE_SERVER_BIN") or str(REPO / "target" / "release" / "cache-server")
    alone = subprocess.run([binary, "--config", str(path), "--print-config"],
                           capture_output=True, text=True, timeout=30)
    assert alone.returncode == 78, alone
    assert "--nats-url" in alone.stderr, alone.stderr
    flags = ["--nats-url", nats_server.url, "--zone", "us-east-1a"]
    shown = subprocess.run([binary, "--config", str(path), *flags, "--print-config"],
                           capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0, shown.stderr
    for line in ("id: cache_service", "environment: production", "eviction: lru", "ttl_default: 3600",
                 "nodes: 3", "replication: 2", "- us-east-1a", "- us-east-1b"):
        assert line in shown.stdout, (line, shown.stdout)
    mem_total = next(int(l.split()[1]) * 1024 for l in open("/proc/meminfo") if l.startswith("MemTotal:"))
    max_memory = next(int(l.split(":")[1]) for l in shown.stdout.splitlines() if l.strip().startswith("max_memory:"))
    assert abs(max_memory - mem_total * 3 // 4) <= 1024 * 1024, (max_memory, mem_total)
    # The node serves with it (ports and memory overridden by flags): it
    # waits for the cluster's first map, made alone after a few seconds.
    s = Server("--config", str(path), *flags, "--cluster-name", "icd-9-1")
    try:
        assert s.rest("GET", "/health/ready").status == 200
        health = s.rest("GET", "/api/v2/cache/health").json()["cache_response"]["data"]
        assert health["cluster"]["replication"] == 2, health
    finally:
        assert s.stop() == 0


def test_s9_2_client_defaults_python() -> None:
    from dnd_cache import ClientConfig

    c = ClientConfig()
    assert (c.connect_timeout, c.request_timeout) == (5.0, 5.0)  # connection.timeout: 5
    assert c.retries == 3  # connection.retry: 3
    assert c.backoff_base > 0 and c.backoff_max > c.backoff_base  # backoff: exponential
    assert (c.pool_min_size, c.pool_max_size, c.pool_idle_timeout) == (5, 50, 300.0)
    assert (c.breaker_threshold, c.breaker_window, c.breaker_min_requests) == (0.5, 60.0, 20)


def test_s9_2_client_defaults_go() -> None:
    run = subprocess.run(["go", "test", "-count=1", "-run", "^TestICD9_2ClientDefaults$", "."],
                         cwd=REPO / "clients" / "go", capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ok" in run.stdout and "no tests to run" not in run.stdout, run.stdout
