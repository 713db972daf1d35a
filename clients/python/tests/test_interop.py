"""What one language writes, the others read: Python, Go (clients/go) and
Rust (prost types over a TcpStream, tests/golden_vectors.rs::interop_peer)
against one real cache-server.

Needs `go` and `cargo`; without them the tests skip, unless
DND_INTEROP_REQUIRED is set (tests/suites/20-clients.sh sets it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

from dnd_cache import CacheClient
from server import REPO, Server

GO_DIR = REPO / "clients" / "go"


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("DND_INTEROP_REQUIRED"):
            pytest.fail(f"{tool} is required for the cross-language tests")
        pytest.skip(f"{tool} not installed")
    return path


@pytest.fixture(scope="module")
def go_cli(tmp_path_factory: pytest.TempPathFactory) -> str:
    go = need("go")
    out = tmp_path_factory.mktemp("go") / "dnd-cache"
    subprocess.run([go, "build", "-o", str(out), "./cmd/dnd-cache"], cwd=GO_DIR, check=True)
    return str(out)


def go_get(cli: str, addr: str, key: bytes) -> Optional[bytes]:
    run = subprocess.run([cli, "-addr", addr, "-hex", "get", key.hex()], capture_output=True, text=True)
    if run.returncode == 1:
        return None
    assert run.returncode == 0, run.stderr
    return bytes.fromhex(run.stdout.strip())


def go_set(cli: str, addr: str, key: bytes, value: bytes) -> None:
    run = subprocess.run([cli, "-addr", addr, "-hex", "set", key.hex(), value.hex(), "600"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def rust_peer(addr: str, sets: Dict[bytes, bytes], gets: List[bytes]) -> Dict[bytes, Optional[bytes]]:
    cargo = need("cargo")
    env = dict(
        os.environ,
        DND_INTEROP_ADDR=addr,
        DND_INTEROP_SET=",".join(f"{k.hex()}={v.hex()}" for k, v in sets.items()),
        DND_INTEROP_GET=",".join(k.hex() for k in gets),
    )
    run = subprocess.run(
        [cargo, "test", "-q", "--test", "golden_vectors", "interop_peer", "--", "--exact", "--nocapture"],
        cwd=REPO, env=env, capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    found: Dict[bytes, Optional[bytes]] = {}
    for line in run.stdout.splitlines():
        parts = line.split()
        if parts and parts[0] == "INTEROP_VALUE":
            found[bytes.fromhex(parts[1])] = bytes.fromhex(parts[2]) if len(parts) > 2 else b""
        elif parts and parts[0] == "INTEROP_MISS":
            found[bytes.fromhex(parts[1])] = None
    assert set(found) == set(gets), run.stdout
    return found


@pytest.fixture
def client(server: Server) -> Iterator[CacheClient]:
    with CacheClient("interop_py", address=server.address) as c:
        yield c


ALL_BYTES = bytes(range(256))


def test_python_writes_go_and_rust_read(server: Server, client: CacheClient, go_cli: str) -> None:
    client.set("xl:py:json", {"from": "python", "hp": 12})
    client.set("xl:py:bin", ALL_BYTES)
    client.set("xl:py:str", "héllo ✓")
    expected = {
        b"xl:py:json": b'{"from":"python","hp":12}',
        b"xl:py:bin": ALL_BYTES,
        b"xl:py:str": "héllo ✓".encode(),
    }
    for key, value in expected.items():
        assert go_get(go_cli, server.address, key) == value
    assert rust_peer(server.address, {}, list(expected)) == expected


def test_go_writes_python_and_rust_read(server: Server, client: CacheClient, go_cli: str) -> None:
    go_set(go_cli, server.address, b"xl:go:bin", ALL_BYTES)
    go_set(go_cli, server.address, b"xl:go:json", b'{"from":"go"}')
    assert client.get("xl:go:bin") == ALL_BYTES
    assert client.get_json("xl:go:json") == {"from": "go"}
    assert rust_peer(server.address, {}, [b"xl:go:bin"]) == {b"xl:go:bin": ALL_BYTES}


def test_rust_writes_python_and_go_read(server: Server, client: CacheClient, go_cli: str) -> None:
    sets = {b"xl:rs:bin": ALL_BYTES, b"xl:rs:str": "from rust".encode()}
    assert rust_peer(server.address, sets, [b"xl:rs:absent"]) == {b"xl:rs:absent": None}
    assert client.get_many(["xl:rs:bin", "xl:rs:str"]) == {"xl:rs:bin": ALL_BYTES, "xl:rs:str": b"from rust"}
    assert go_get(go_cli, server.address, b"xl:rs:bin") == ALL_BYTES
    assert go_get(go_cli, server.address, b"xl:rs:absent") is None
