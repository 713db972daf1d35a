"""A real Prometheus scrapes real cache-servers (tests/suites/50-prometheus.sh).

1. Starts two cache-servers on ephemeral loopback ports: one open, one that
   requires a JWT (HS256 secret file).
2. Sends known traffic with the Python client (binary protocol): per
   service, so many sets, hits, misses and an invalid key.
3. Checks the exposition with `promtool check metrics`.
4. Starts Prometheus with three scrape jobs: the open server, the
   authenticated one with a bearer token, and the authenticated one without
   a token (must be down), and with deploy/prometheus/alerts.yaml loaded.
5. Asks Prometheus's HTTP API for cache_hit_rate, cache_latency quantiles
   (histogram_quantile) and cache_memory_usage, and checks them against the
   traffic and against the exposition the servers serve.
6. Checks every PromQL expression of deploy/grafana/dnd-cache.json and of
   the alert rules: Prometheus parses it, it names only metrics the server
   exports, and (dashboard) it returns data.

Needs `prometheus` and `promtool` on PATH, the `dnd_cache` package, and
DND_CACHE_SERVER_BIN. Every wait is bounded; every process is stopped on exit.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

from dnd_cache import CacheClient, InvalidKeyError

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "dnd-cache.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yaml"
SCRAPE_INTERVAL_S = 1
# Grafana variables, replaced as Grafana would with every value selected.
DASHBOARD_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$instance": ".+",
    "$service": ".+",
    "$job": ".+",
}
# Series Prometheus itself adds to every scrape.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "inf", "nan",
}

failures: List[str] = []


def check(ok: bool, what: str) -> None:
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CacheServer:
    def __init__(self, binary: str, extra: List[str]) -> None:
        args = [binary, "--bind", "127.0.0.1", "--port", "0", "--shard-port-base", "0",
                "--http-port", "0", "--shards", "2", "--no-pin", "--max-memory", "64MiB", *extra]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 15)
        line = self.proc.stdout.readline().decode() if ready else ""
        if not line.startswith("LISTENING"):
            self.stop()
            raise RuntimeError(f"cache-server did not start: {line!r}")
        info = dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)
        self.binary_addr = info["binary"]
        self.http_addr = info["http"]

    def metrics(self, token: Optional[str] = None) -> str:
        req = urllib.request.Request(f"http://{self.http_addr}/health/metrics")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return str(resp.read().decode())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def hs256_token(secret: bytes, claims: Dict[str, Any]) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps(claims).encode())
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(signature)


class Prometheus:
    def __init__(self, workdir: Path, config: str) -> None:
        (workdir / "prometheus.yml").write_text(config)
        self.port = free_port()
        self.log = open(workdir / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as err:  # 400: the query does not parse
            return json.loads(err.read())

    def query(self, expr: str) -> List[Dict[str, Any]]:
        answer = self.api("query", query=expr)
        if answer.get("status") != "success":
            raise AssertionError(f"query {expr!r}: {answer.get('error')}")
        return list(answer["data"]["result"])

    def value(self, expr: str) -> float:
        result = self.query(expr)
        if len(result) != 1:
            raise AssertionError(f"query {expr!r}: {len(result)} series, want 1: {result}")
        return float(result[0]["value"][1])

    def wait_until(self, what: str, ready: Any, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("prometheus exited; see prometheus.log")
            try:
                if ready():
                    return
            except (OSError, AssertionError, KeyError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"Prometheus: {what} within {timeout}s")
            time.sleep(0.25)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def exported_metrics(exposition: str) -> Set[str]:
    """Names a query may use: each family, and a histogram's series."""
    names: Set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names.update({f"{name}_bucket", f"{name}_sum", f"{name}_count"})
    return names


def metric_names(expr: str) -> Set[str]:
    """The metric names a PromQL expression selects (names only, not functions,
    label names, keywords or durations)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\boffset\s+-?[0-9a-z]+", "", text)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = m.group(0)
        rest = text[m.end():].lstrip()
        if rest.startswith("(") or word.lower() in PROMQL_WORDS:
            continue  # a function or a keyword
        if m.start() > 0 and (text[m.start() - 1].isdigit() or text[m.start() - 1] == "."):
            continue  # the exponent or unit of a number
        names.add(word)
    return names


def dashboard_queries() -> List[Tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    out: List[Tuple[str, str]] = []

    def walk(panels: List[Dict[str, Any]]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                out.append((panel["title"], target["expr"]))
            walk(panel.get("panels", []))

    walk(dash["panels"])
    for var in dash["templating"]["list"]:
        if var.get("type") == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"label_values\((.*),\s*\w+\)", query)
            out.append((f"variable {var['name']}", m.group(1) if m else query))
    return out


def expand(expr: str) -> str:
    for var in sorted(DASHBOARD_VARIABLES, key=len, reverse=True):
        expr = expr.replace(var, DASHBOARD_VARIABLES[var])
    return expr


def send_traffic(address: str, token: Optional[str] = None) -> None:
    """character_service: 10 sets, 10 hits, 5 misses, 1 invalid key (CACHE_004);
    campaign_service: 2 sets, 4 hits."""
    with CacheClient("character_service", address=address, token=token) as c:
        for i in range(10):
            c.set(f"character:{i}", {"id": i, "name": "x" * 200})
        for i in range(10):
            assert c.get(f"character:{i}") is not None
        for i in range(5):
            assert c.get(f"character:absent:{i}") is None
        try:
            c.get("bad key")
        except InvalidKeyError:
            pass
    with CacheClient("campaign_service", address=address, token=token) as c:
        c.set("campaign:1", "a")
        c.set("campaign:2", "b")
        for _ in range(2):
            assert c.get("campaign:1") == b"a" and c.get("campaign:2") == b"b"


def exposition_quantile(exposition: str, q: float, service: str, operation: str) -> float:
    """histogram_quantile computed from the server's own exposition, as
    Prometheus does it (linear interpolation inside the bucket)."""
    buckets: List[Tuple[float, float]] = []
    pattern = re.compile(
        r'^cache_latency_bucket\{service="%s",operation="%s",le="([^"]+)"\} (\S+)$' % (service, operation)
    )
    for line in exposition.splitlines():
        m = pattern.match(line)
        if m:
            buckets.append((float(m.group(1)), float(m.group(2))))
    buckets.sort()
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    raise AssertionError("no bucket reaches the rank")


def main() -> int:
    # `timeout` sends SIGTERM: unwind through the finally that stops the processes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    binary = os.environ.get("DND_CACHE_SERVER_BIN") or str(REPO / "target" / "release" / "cache-server")
    work = Path(tempfile.mkdtemp(prefix="dnd-prometheus-"))
    servers: List[CacheServer] = []
    prom: Optional[Prometheus] = None
    try:
        secret = os.urandom(32)
        (work / "secret").write_bytes(secret)
        open_server = CacheServer(binary, [])
        servers.append(open_server)
        auth_server = CacheServer(binary, ["--auth-hs256-secret-file", str(work / "secret")])
        servers.append(auth_server)
        exp = int(time.time()) + 3600

        send_traffic(open_server.binary_addr)
        for service in ("character_service", "campaign_service"):
            token = hs256_token(secret, {"exp": exp, "service_id": service, "roles": ["read", "write"]})
            (work / f"{service}.token").write_text(token)
        # Each service of the authenticated server uses its own token.
        with CacheClient("character_service", address=auth_server.binary_addr,
                         token=(work / "character_service.token").read_text()) as c:
            c.set("character:1", "v")
            assert c.get("character:1") == b"v" and c.get("character:2") is None
        scrape_token = hs256_token(secret, {"exp": exp, "roles": ["read"]})
        (work / "scrape.token").write_text(scrape_token)

        exposition = open_server.metrics()
        try:
            auth_server.metrics()
            check(False, "the authenticated server refuses /health/metrics without a token")
        except urllib.error.HTTPError as err:
            check(err.code == 401, f"the authenticated server answers 401 without a token (got {err.code})")
        check("cache_hit_rate{" in auth_server.metrics(scrape_token),
              "the authenticated server serves /health/metrics with a read token")

        lint = subprocess.run(["promtool", "check", "metrics"], input=exposition.encode(),
                              capture_output=True, timeout=30)
        check(lint.returncode == 0, "promtool check metrics accepts the exposition: "
              + (lint.stdout + lint.stderr).decode().strip().replace("\n", "; "))

        alerts_copy = work / "alerts.yaml"
        shutil.copy(ALERTS, alerts_copy)
        config = f"""
global:
  scrape_interval: {SCRAPE_INTERVAL_S}s
  evaluation_interval: {SCRAPE_INTERVAL_S}s
rule_files:
  - {alerts_copy}
scrape_configs:
  - job_name: dnd-cache
    metrics_path: /health/metrics
    static_configs:
      - targets: ["{open_server.http_addr}"]
  - job_name: dnd-cache-auth
    metrics_path: /health/metrics
    authorization:
      type: Bearer
      credentials_file: {work / 'scrape.token'}
    static_configs:
      - targets: ["{auth_server.http_addr}"]
  - job_name: dnd-cache-auth-no-token
    metrics_path: /health/metrics
    static_configs:
      - targets: ["{auth_server.http_addr}"]
"""
        prom = Prometheus(work, config)
        p = prom
        # Three scrapes of each job, so that rate() has points to work on.
        p.wait_until("three scrapes of every job",
                     lambda: len(p.query("count_over_time(up[1m]) >= 3")) == 3)

        check(p.value('up{job="dnd-cache"}') == 1, "the open server is up")
        check(p.value('up{job="dnd-cache-auth"}') == 1, "the authenticated server is up with a bearer token")
        check(p.value('up{job="dnd-cache-auth-no-token"}') == 0,
              "the authenticated server is down for a scrape without a token")

        # cache_hit_rate: 10 hits of 15 lookups, 4 of 4.
        rate = p.value('cache_hit_rate{job="dnd-cache", service="character_service", operation="get"}')
        check(abs(rate - 10 / 15) < 1e-9, f"cache_hit_rate of character_service get = 10/15 (got {rate})")
        rate = p.value('cache_hit_rate{job="dnd-cache", service="campaign_service", operation="get"}')
        check(rate == 1.0, f"cache_hit_rate of campaign_service get = 1 (got {rate})")
        rate = p.value('cache_hit_rate{job="dnd-cache-auth", service="character_service", operation="get"}')
        check(rate == 0.5, f"cache_hit_rate through the bearer scrape = 1/2 (got {rate})")
        gets = p.value('cache_latency_count{job="dnd-cache", service="character_service", operation="get"}')
        check(gets == 16, f"cache_latency_count of character_service get = 16 lookups (got {gets})")
        sets = p.value('sum(cache_requests_total{job="dnd-cache", service="character_service", operation="set"})')
        check(sets == 10, f"cache_requests_total of character_service set = 10 (got {sets})")
        invalid = p.value('cache_errors_total{job="dnd-cache", service="character_service", code="CACHE_004"}')
        check(invalid == 1, f"cache_errors_total CACHE_004 = 1 (got {invalid})")
        misses = p.value('cache_errors_total{job="dnd-cache", service="character_service", operation="get", code="CACHE_001"}')
        check(misses == 5, f"cache_errors_total CACHE_001 of get = 5 misses (got {misses})")

        # cache_latency quantiles: Prometheus's histogram_quantile over the
        # scraped buckets equals the same computation on the exposition.
        for q in (0.5, 0.9, 0.99):
            got = p.value(f'histogram_quantile({q}, sum by (le) (cache_latency_bucket{{job="dnd-cache", '
                          f'service="character_service", operation="get"}}))')
            want = exposition_quantile(exposition, q, "character_service", "get")
            check(abs(got - want) < 1e-12 and 0 < got <= 1,
                  f"p{int(q * 100)} of character_service get = {want:.6f}s from the exposition (got {got:.6f}s)")

        # cache_memory_usage: the limit is --max-memory; used grew with the items.
        limit = p.value('cache_memory_usage{job="dnd-cache", type="limit"}')
        check(limit == 64 << 20, f"cache_memory_usage limit = 64 MiB (got {limit})")
        used = p.value('cache_memory_usage{job="dnd-cache", type="used"}')
        shard_used = p.value('sum(cache_shard_memory_bytes{job="dnd-cache", type="used"})')
        check(0 < used <= limit and used == shard_used,
              f"cache_memory_usage used = sum of the shards' used bytes, within the limit ({used})")
        items = p.value('sum(cache_items{job="dnd-cache"})')
        check(items == 12, f"cache_items = 12 items written (got {items})")

        # Dashboard and alert rules: parse, name exported metrics, return data.
        known = exported_metrics(exposition) | PROMETHEUS_SERIES
        for title, expr in dashboard_queries():
            query = expand(expr)
            answer = p.api("query", query=query)
            parsed = answer.get("status") == "success"
            unknown = metric_names(query) - known
            check(parsed and not unknown,
                  f"dashboard [{title}] parses and names exported metrics: {query}"
                  + ("" if parsed else f" -- {answer.get('error')}")
                  + (f" -- unknown {sorted(unknown)}" if unknown else ""))
            if parsed:
                check(len(answer["data"]["result"]) > 0, f"dashboard [{title}] returns data: {query}")
        p.wait_until("alert rules loaded", lambda: len(p.api("rules")["data"]["groups"]) > 0)
        rules = [r for g in p.api("rules")["data"]["groups"] for r in g["rules"]]
        check(len(rules) == ALERTS.read_text().count("- alert:"),
              f"Prometheus loaded every alert rule ({len(rules)})")
        for rule in rules:
            unknown = metric_names(rule["query"]) - known
            check(rule["health"] != "err" and not unknown,
                  f"alert {rule['name']} evaluates and names exported metrics"
                  + (f" -- unknown {sorted(unknown)}" if unknown else "")
                  + (f" -- {rule.get('lastError')}" if rule["health"] == "err" else ""))
        firing = [r["name"] for r in rules if r["state"] != "inactive"]
        check(not firing, f"no alert is pending or firing on a healthy server ({firing})")
    finally:
        if prom is not None:
            prom.stop()
        for server in servers:
            server.stop()
        if failures:
            print(f"(Prometheus files kept in {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if failures:
        print(f"{len(failures)} check(s) failed", file=sys.stderr)
        return 1
    print("all Prometheus checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
