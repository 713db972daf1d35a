"""Starts the real cache-server on ephemeral ports for the integration tests."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest

REPO = Path(__file__).resolve().parents[3]


def server_binary() -> Optional[str]:
    path = os.environ.get("DND_CACHE_SERVER_BIN") or str(REPO / "target" / "release" / "cache-server")
    return path if os.access(path, os.X_OK) else None


def require_binary() -> str:
    path = server_binary()
    if path is None:
        if os.environ.get("DND_CACHE_REQUIRE_SERVER"):
            pytest.fail("cache-server binary not found (DND_CACHE_SERVER_BIN)")
        pytest.skip("cache-server not built: cargo build --release --bin cache-server")
    return path


class Server:
    """One cache-server process; ``restart`` keeps the public port."""

    def __init__(self, binary: str, shards: int = 2, extra: Optional[List[str]] = None) -> None:
        self.binary = binary
        self.shards = shards
        self.extra = list(extra or [])
        self.port = 0
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.info: Dict[str, str] = {}

    @property
    def address(self) -> str:
        return self.info["binary"]

    @property
    def shard_ports(self) -> List[int]:
        return [int(p) for p in self.info["shard_ports"].split(",")]

    def start(self) -> "Server":
        args = [
            self.binary, "--bind", "127.0.0.1", "--port", str(self.port),
            "--shard-port-base", "0", "--http-port", "0", "--shards", str(self.shards),
            "--no-pin", "--max-memory", "64MiB", *self.extra,
        ]
        deadline = time.monotonic() + 20
        while True:
            self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            line = self._read_line(deadline)
            if line.startswith("LISTENING"):
                break
            self.proc.wait(5)
            # The old port may linger a moment after a stop: try again.
            if time.monotonic() > deadline:
                raise RuntimeError(f"cache-server did not start: {line!r}")
            time.sleep(0.2)
        self.info = dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)
        self.port = int(self.address.rsplit(":", 1)[1])
        return self

    def _read_line(self, deadline: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], max(0.1, deadline - time.monotonic()))
        if not ready:
            self.proc.kill()
            return ""
        return self.proc.stdout.readline().decode().strip()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()
