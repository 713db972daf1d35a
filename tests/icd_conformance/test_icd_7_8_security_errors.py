"""ICD sections 7 (authentication, authorization) and 8 (error codes and
the error body)."""

from __future__ import annotations

import json
import socket
import time
from typing import Dict, Iterator, List, Tuple

import pytest

from conftest import KEYS, Server, hs256_secret, is_rfc3339, jwt_hs256
from dnd_cache import wire


@pytest.fixture(scope="module")
def auth_server() -> Iterator[Server]:
    s = Server("--auth-hs256-secret-file", str(KEYS / "hs256.secret"))
    yield s
    s.stop()


def bearer(**claims: object) -> Dict[str, str]:
    return {"Authorization": f"Bearer {jwt_hs256(claims, hs256_secret())}"}


def put(s: Server, key: str, headers: Dict[str, str]) -> int:
    return s.rest("PUT", f"/api/v2/cache/{key}", {"cache_request": {"value": 1}}, headers).status


def test_s7_1_jwt_with_the_icd_claims_and_scope(auth_server: Server) -> None:
    token = bearer(service_id="character_service", roles=[], permissions=[], scope="cache:read cache:write")
    assert put(auth_server, "character:71", token) == 200
    assert auth_server.rest("GET", "/api/v2/cache/character:71", headers=token).status == 200
    denied = auth_server.rest("DELETE", "/api/v2/cache/character:71", headers=token)
    assert denied.status == 403 and denied.json()["error"]["code"] == "AUTH_002"
    # The binary protocol checks the token once, in the handshake, and the
    # token's service_id must be the connection's.
    raw = jwt_hs256({"service_id": "character_service", "scope": "cache:read cache:write"}, hs256_secret())
    conn = auth_server.connect("character_service", auth_token=raw)
    assert conn.handshake.status == 0
    assert conn.call(wire.CacheOperation(operation="get", key=b"character:71")).status == 0
    assert conn.call(wire.CacheOperation(operation="delete", key=b"character:71")).status == 102
    other = auth_server.connect("campaign_service", auth_token=raw)
    assert other.handshake.status == 101


# ICD 7.2 as written: role → permissions it grants → a REST request each needs.
REQUESTS = {
    "cache:read": ("GET", "/api/v2/cache/perm:k"),
    "metrics:read": ("GET", "/health/metrics"),
    "cache:write": ("PUT", "/api/v2/cache/perm:k"),
    "cache:delete": ("DELETE", "/api/v2/cache/perm:k"),
    "cache:flush": ("POST", "/api/v2/cache/flush"),
    "cache:reload": ("POST", "/api/v2/cache/reload"),
}
ROLES = {
    "read": {"cache:read", "metrics:read"},
    "write": {"cache:write", "cache:delete"},
    "admin": {"cache:flush", "cache:reload"},
}


@pytest.mark.parametrize("role", list(ROLES))
def test_s7_2_permissions_of_each_role(auth_server: Server, role: str) -> None:
    headers = bearer(roles=[role])
    for permission, (method, path) in REQUESTS.items():
        # Each request starts from a stored key, so that a granted GET or
        # DELETE finds it.
        assert put(auth_server, "perm:k", bearer(permissions=["cache:write"])) == 200
        body = {"cache_request": {"value": 1}} if method == "PUT" else None
        status = auth_server.rest(method, path, body, headers).status
        if permission in ROLES[role]:
            assert status == 200, (role, permission, status)
        else:
            assert status == 403, (role, permission, status)


def test_s7_2_permissions_by_name(auth_server: Server) -> None:
    for permission, (method, path) in REQUESTS.items():
        assert put(auth_server, "perm:k", bearer(permissions=["cache:write"])) == 200
        body = {"cache_request": {"value": 1}} if method == "PUT" else None
        assert auth_server.rest(method, path, body, bearer(permissions=[permission])).status == 200, permission


def error_of(reply) -> Dict[str, object]:  # type: ignore[no-untyped-def]
    body = reply.json()
    assert set(body) == {"error"}, body
    return body["error"]


def test_s8_1_cache_001_key_not_found(server: Server) -> None:
    r = server.rest("GET", "/api/v2/cache/absent:81")
    assert r.status == 404 and error_of(r)["code"] == "CACHE_001"


def pipelined_gets(s: Server, paths: List[str]) -> List[Tuple[int, bytes]]:
    """Sends every GET in one write and reads the answers (status, body)."""
    host, port = s.http.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=15) as sock:
        sock.sendall(b"".join(f"GET {p} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for p in paths))
        buf, answers = b"", []
        while len(answers) < len(paths):
            while b"\r\n\r\n" not in buf:
                buf += sock.recv(65536)
            head, buf = buf.split(b"\r\n\r\n", 1)
            lines = head.decode().split("\r\n")
            length = next(int(l.split(":")[1]) for l in lines if l.lower().startswith("content-length:"))
            while len(buf) < length:
                buf += sock.recv(65536)
            answers.append((int(lines[0].split()[1]), buf[:length]))
            buf = buf[length:]
    return answers


def test_s8_1_cache_002_key_expired(server: Server) -> None:
    # An expired item still indexed answers 410 CACHE_002 until it is read
    # or swept. The sweep removes about 200,000 expired items a second per
    # shard, so write 100,000 and read a spread of them back at once right
    # after they expire; a round the sweep wins is tried again.
    conn = server.connect("icd_tests")
    for round in range(4):
        keys = [f"exp{round}:{i}".encode() for i in range(100_000)]
        for start in range(0, len(keys), 10_000):
            entries = [wire.Entry(key=k, value=b"v") for k in keys[start:start + 10_000]]
            answer = conn.call(wire.CacheOperation(operation="set_many", entries=entries, ttl=1))
            assert answer.status == 0 and all(i.status == 0 for i in answer.items)
        expires = answer.items[-1].metadata.expires_at
        while time.time() * 1000 <= expires + 20:
            time.sleep(0.01)
        answers = pipelined_gets(server, [f"/api/v2/cache/exp{round}:{i}" for i in range(99_700, 100_000)])
        codes = {(status, json.loads(body)["error"]["code"]) for status, body in answers}
        assert codes <= {(410, "CACHE_002"), (404, "CACHE_001")}, codes
        if (410, "CACHE_002") in codes:
            return
    pytest.fail("no expired item was found before the sweep removed it, in 4 rounds")


def test_s8_1_cache_003_storage_full(server: Server) -> None:
    r = server.rest("PUT", "/api/v2/cache/big:83", raw=b"x" * (1024 * 1024 + 1),
                    headers={"Content-Type": "application/octet-stream"})
    assert r.status == 507 and error_of(r)["code"] == "CACHE_003"


def test_s8_1_cache_004_invalid_key_format(server: Server) -> None:
    r = server.rest("GET", "/api/v2/cache/a%20b")
    assert r.status == 400 and error_of(r)["code"] == "CACHE_004"
    conn = server.connect("icd_tests")
    assert conn.call(wire.CacheOperation(operation="get", key=b"k" * 251)).status == 4


def test_s8_1_cache_005_operation_timeout() -> None:
    s = Server("--http-request-timeout-ms", "300")
    try:
        host, port = s.http.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=15) as sock:
            sock.sendall(b"GET /api/v2/cache/k HTTP/1.1\r\nHost: x\r\n")  # the head never ends
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b'"code":"CACHE_005"' in answer
    finally:
        s.stop()


def test_s8_1_auth_001_invalid_credentials(auth_server: Server) -> None:
    for headers in ({}, {"Authorization": "Bearer not-a-jwt"}):
        r = auth_server.rest("GET", "/api/v2/cache/k", headers=headers)
        assert r.status == 401 and error_of(r)["code"] == "AUTH_001"


def test_s8_1_auth_002_insufficient_permissions(auth_server: Server) -> None:
    r = auth_server.rest("POST", "/api/v2/cache/flush", headers=bearer(roles=["read"]))
    assert r.status == 403 and error_of(r)["code"] == "AUTH_002"


def test_s8_2_error_response_body(server: Server) -> None:
    r = server.rest("GET", "/api/v2/cache/character:404")
    error = error_of(r)
    assert error["code"] == "CACHE_001"
    assert isinstance(error["message"], str) and error["message"]
    details = error["details"]
    assert details["key"] == "character:404"
    assert details["operation"] == "get"
    assert is_rfc3339(details["timestamp"])
