"""Fixtures of the ICD conformance suite: the real cache-server on ephemeral
loopback ports, a real `nats-server -js`, and small clients for REST (the
standard library), the binary protocol (`dnd_cache.wire` of clients/python)
and NATS (nats-py).

Every test is named after the ICD section it shows (`test_s2_1_3_...` is
section 2.1.3). tests/suites/45-icd-conformance.sh runs the suite.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import http.client
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import nats
import pytest

from dnd_cache import wire

REPO = Path(__file__).resolve().parents[2]
KEYS = REPO / "tests" / "keys"


def server_binary() -> str:
    path = os.environ.get("DND_CACHE_SERVER_BIN") or str(REPO / "target" / "release" / "cache-server")
    if not os.access(path, os.X_OK):
        pytest.fail(f"cache-server not found at {path}: set DND_CACHE_SERVER_BIN")
    return path


def nats_binary() -> str:
    found = shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if os.access("/usr/sbin/nats-server", os.X_OK) else None
    )
    if found is None:
        pytest.fail("nats-server is required (apt-get install nats-server)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One cache-server process on ephemeral ports."""

    def __init__(self, *extra: str, env: Optional[Dict[str, str]] = None) -> None:
        args = [
            server_binary(), "--port", "0", "--shard-port-base", "0", "--http-port", "0",
            "--shards", "2", "--no-pin", "--max-memory", "64MiB", *extra,
        ]
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=self.stderr, env={**os.environ, **(env or {})}
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line.startswith("LISTENING "):
            self.proc.kill()
            self.stderr.seek(0)
            pytest.fail(f"cache-server did not start: {line!r} {self.stderr.read().decode()[-2000:]}")
        self.info = dict(part.split("=", 1) for part in line.split()[1:])
        self.http = self.info["http"]
        self.binary = self.info["binary"]

    @property
    def binary_addr(self) -> Tuple[str, int]:
        host, port = self.binary.rsplit(":", 1)
        return host, int(port)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(15)

    # -- REST ---------------------------------------------------------------

    def rest(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: Optional[Dict[str, str]] = None,
        raw: Optional[bytes] = None,
    ) -> "Reply":
        host, port = self.http.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=15)
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        hdrs = dict(headers or {})
        if data is not None and raw is None:
            hdrs.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=data, headers=hdrs)
        r = conn.getresponse()
        reply = Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        conn.close()
        return reply

    def metrics(self, headers: Optional[Dict[str, str]] = None) -> str:
        r = self.rest("GET", "/health/metrics", headers=headers)
        assert r.status == 200, r.body
        return r.body.decode()

    def metric(self, name: str, **labels: str) -> Optional[float]:
        """The sample of `name` with exactly these labels, or None."""
        for family in parse_exposition(self.metrics()).values():
            for sample_name, sample_labels, value in family["samples"]:
                if sample_name == name and sample_labels == labels:
                    return value
        return None

    def wait_hub_connected(self) -> None:
        deadline = time.monotonic() + 15
        while self.metric("cache_hub_connected") != 1:
            assert time.monotonic() < deadline, "the bridge did not connect to NATS"
            time.sleep(0.05)

    # -- binary protocol ------------------------------------------------------

    def connect(self, service_id: str = "icd_tests", **hello: Any) -> "Binary":
        return Binary(self.binary_addr, wire.CacheConnection(service_id=service_id, **hello))


class Reply:
    def __init__(self, status: int, headers: Dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.body[:300]!r})"


class Binary:
    """One binary-protocol connection, handshaken."""

    def __init__(self, addr: Tuple[str, int], hello: wire.CacheConnection) -> None:
        self.sock = socket.create_connection(addr, timeout=15)
        self.handshake = self.call(hello)

    def call(self, msg: Any) -> wire.CacheResponse:
        self.sock.sendall(wire.frame(msg))
        return self.recv()

    def recv(self) -> wire.CacheResponse:
        (n,) = struct.unpack(">I", self._exactly(4))
        return wire.decode(wire.CacheResponse, self._exactly(n))

    def _exactly(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed by the server")
            buf += chunk
        return buf

    def close(self) -> None:
        self.sock.close()


def parse_exposition(text: str) -> Dict[str, Dict[str, Any]]:
    """Prometheus text format → {family: {"type", "help", "samples": [(name, labels, value)]}}."""
    families: Dict[str, Dict[str, Any]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            current = families.setdefault(name, {"samples": []})
            current["type"] = kind
        elif line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            families.setdefault(name, {"samples": []})["help"] = line.split(" ", 3)[3]
        elif line and not line.startswith("#"):
            head, value = line.rsplit(" ", 1)
            name, labels = head, {}
            if "{" in head:
                name, rest = head.split("{", 1)
                for part in _split_labels(rest.rstrip("}")):
                    k, v = part.split("=", 1)
                    labels[k] = json.loads(v)
            family = next(
                (f for f in (name, name.rsplit("_", 1)[0]) if f in families), name
            )
            families.setdefault(family, {"samples": []})["samples"].append((name, labels, float(value)))
    return families


def _split_labels(text: str) -> List[str]:
    parts, cur, quoted, escaped = [], "", False, False
    for ch in text:
        if escaped:
            cur += ch
            escaped = False
        elif ch == "\\":
            cur += ch
            escaped = True
        elif ch == '"':
            cur += ch
            quoted = not quoted
        elif ch == "," and not quoted:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        parts.append(cur)
    return parts


# -- NATS ---------------------------------------------------------------------


class Nats:
    """A real `nats-server -js` on a free loopback port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.store = tempfile.mkdtemp(prefix="icd-nats-")
        self.proc = subprocess.Popen(
            [nats_binary(), "-js", "-sd", self.store, "-a", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                assert self.proc.poll() is None, "nats-server exited"
                assert time.monotonic() < deadline, "nats-server did not start"
                time.sleep(0.02)
        self.url = f"nats://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.store, ignore_errors=True)


class Hub:
    """A synchronous NATS client for tests (nats-py on a private event loop)."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.nc = self.run(nats.connect(url))

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def subscribe(self, subject: str) -> Any:
        sub = self.run(self.nc.subscribe(subject))
        self.run(self.nc.flush())
        return sub

    def next(self, sub: Any, timeout: float = 10) -> Any:
        return self.run(sub.next_msg(timeout=timeout))

    def next_json(self, sub: Any, timeout: float = 10) -> Dict[str, Any]:
        return json.loads(self.next(sub, timeout).data)

    def request(
        self, subject: str, body: Dict[str, Any], headers: Optional[Dict[str, str]] = None
    ) -> Any:
        """A NATS request; retried while the bridge has not subscribed yet."""
        deadline = time.monotonic() + 10
        while True:
            try:
                return self.run(
                    self.nc.request(subject, json.dumps(body).encode(), timeout=10, headers=headers)
                )
            except nats.errors.NoRespondersError:
                assert time.monotonic() < deadline, f"nobody answers on {subject}"
                time.sleep(0.05)

    def close(self) -> None:
        self.run(self.nc.close())
        self.loop.close()


@pytest.fixture(scope="session")
def nats_server() -> Iterator[Nats]:
    n = Nats()
    yield n
    n.stop()


@pytest.fixture
def hub(nats_server: Nats) -> Iterator[Hub]:
    h = Hub(nats_server.url)
    yield h
    h.close()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    """A server started with the defaults (no key file, no auth, no NATS)."""
    s = Server()
    yield s
    s.stop()


@pytest.fixture
def hub_server(nats_server: Nats) -> Iterator[Server]:
    """A server publishing to the test's nats-server (health every second)."""
    s = Server("--nats-url", nats_server.url, "--health-interval", "1")
    s.wait_hub_connected()
    yield s
    s.stop()


# -- envelopes, times, tokens ---------------------------------------------------

ENVELOPE_FIELDS = ("correlation_id", "source", "event", "version", "timestamp", "ttl")


def is_rfc3339(text: Any) -> bool:
    import re

    return isinstance(text, str) and re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", text
    ) is not None


def assert_envelope(body: Dict[str, Any], event: str) -> None:
    """ICD 1.3: correlation id, source, type and version, timestamp, TTL."""
    for field in ENVELOPE_FIELDS:
        assert field in body, f"{field} missing from {body}"
    assert body["event"] == event
    assert isinstance(body["correlation_id"], str) and body["correlation_id"]
    assert isinstance(body["source"], str) and body["source"]
    assert isinstance(body["version"], str) and body["version"].split(".")[0].isdigit()
    assert is_rfc3339(body["timestamp"]), body["timestamp"]
    assert isinstance(body["ttl"], int) and body["ttl"] > 0


def jwt_hs256(claims: Dict[str, Any], secret: bytes) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps({"exp": int(time.time()) + 600, **claims}).encode())
    signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(signature)}"


def hs256_secret() -> bytes:
    return (KEYS / "hs256.secret").read_bytes()
