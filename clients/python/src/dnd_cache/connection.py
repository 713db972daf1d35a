"""One handshaken connection, and a pool of them per server endpoint."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections import deque
from typing import Callable, Deque, List, Sequence

from . import wire
from .routing import Endpoint
from .errors import (
    CLOSING_STATUSES,
    CacheConnectionError,
    OperationTimeoutError,
    ProtocolError,
    error_for_status,
)


# Before the handshake the server caps frames at 16 KiB; after it, at the
# handshake's max_frame_bytes. Anything longer from the server is garbage.
DEFAULT_MAX_FRAME = 16 << 20


def frame_length(header: bytes, max_frame: int) -> int:
    """The body length a frame header announces; a length past the limit is
    not the protocol."""
    (length,) = struct.unpack(">I", header)
    if length > max_frame + 1024:
        raise ProtocolError(f"frame of {length} bytes exceeds the limit")
    return int(length)


def decode_response(body: bytes) -> wire.CacheResponse:
    try:
        return wire.decode(wire.CacheResponse, body)
    except wire.WireError as exc:
        raise ProtocolError(f"undecodable response: {exc}") from exc


def handshake_of(answer: wire.CacheResponse) -> wire.Handshake:
    """The handshake of the server's first answer, or its refusal as an error."""
    if answer.status != 0:
        raise error_for_status(answer.status, answer.data.decode("utf-8", "replace"))
    if answer.handshake is None:
        raise ProtocolError("handshake answer without `handshake`")
    return answer.handshake


class Connection:
    """A TCP connection that has completed the handshake.

    Not thread-safe: the pool hands it to one caller at a time. Any transport
    or framing error marks it ``broken``: the response stream may be out of
    step with the requests, so it must not be reused.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        hello: wire.CacheConnection,
        connect_timeout: float,
        request_timeout: float,
    ) -> None:
        self.endpoint = endpoint
        self.broken = False
        self.last_used = time.monotonic()
        self._request_timeout = request_timeout
        self._max_frame = DEFAULT_MAX_FRAME
        try:
            self._sock = socket.create_connection(endpoint, timeout=connect_timeout)
        except OSError as exc:
            raise CacheConnectionError(f"connect to {endpoint[0]}:{endpoint[1]}: {exc}") from exc
        try:
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock.settimeout(connect_timeout)
            self._send(wire.frame(hello))
            self.handshake: wire.Handshake = handshake_of(self._read_response())
            if self.handshake.max_frame_bytes:
                self._max_frame = self.handshake.max_frame_bytes
            self._sock.settimeout(request_timeout)
        except BaseException:
            self.close()
            raise

    def roundtrip(self, ops: Sequence[wire.CacheOperation]) -> List[wire.CacheResponse]:
        """Sends every operation at once (pipelined), then reads their answers."""
        try:
            self._send(b"".join(wire.frame(op) for op in ops))
            answers = [self._read_response() for _ in ops]
        except BaseException:
            self.close()
            raise
        self.last_used = time.monotonic()
        if any(a.status in CLOSING_STATUSES for a in answers):
            self.close()
        return answers

    def close(self) -> None:
        self.broken = True
        try:
            self._sock.close()
        except (OSError, AttributeError):
            pass

    def _send(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except socket.timeout as exc:
            raise OperationTimeoutError(f"send blocked for {self._request_timeout}s", status=0) from exc
        except OSError as exc:
            raise CacheConnectionError(f"connection lost: {exc}") from exc

    def _read_response(self) -> wire.CacheResponse:
        length = frame_length(self._read_exact(4), self._max_frame)
        return decode_response(self._read_exact(length))

    def _read_exact(self, n: int) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            try:
                k = self._sock.recv_into(view[got:])
            except socket.timeout as exc:
                raise OperationTimeoutError(
                    f"no answer within {self._request_timeout}s", status=0
                ) from exc
            except OSError as exc:
                raise CacheConnectionError(f"connection lost: {exc}") from exc
            if k == 0:
                raise CacheConnectionError("connection closed by the server")
            got += k
        return bytes(buf)


class ConnectionPool:
    """Connections to one endpoint (ICD 9.2 ``pool``).

    Connections open on demand, at most ``max_size`` at once; a caller waits
    up to ``acquire_timeout`` for one to come back. Idle connections beyond
    ``min_size`` are closed after ``idle_timeout`` seconds; the most recently
    used idle connection is handed out first so the others can age out.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        factory: Callable[[Endpoint], Connection],
        min_size: int,
        max_size: int,
        idle_timeout: float,
        acquire_timeout: float,
    ) -> None:
        self.endpoint = endpoint
        self._factory = factory
        self._min = min_size
        self._max = max_size
        self._idle_timeout = idle_timeout
        self._acquire_timeout = acquire_timeout
        self._idle: Deque[Connection] = deque()
        self._open = 0
        self._closed = False
        self._cond = threading.Condition()

    @property
    def size(self) -> int:
        """Connections open, idle or in use."""
        with self._cond:
            return self._open

    @property
    def idle_count(self) -> int:
        with self._cond:
            return len(self._idle)

    def acquire(self) -> Connection:
        deadline = time.monotonic() + self._acquire_timeout
        with self._cond:
            while True:
                if self._closed:
                    raise CacheConnectionError("client closed")
                self._reap_locked()
                if self._idle:
                    return self._idle.pop()
                if self._open < self._max:
                    self._open += 1
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CacheConnectionError(f"pool exhausted ({self._max} connections in use)")
                self._cond.wait(left)
        try:
            return self._factory(self.endpoint)
        except BaseException:
            with self._cond:
                self._open -= 1
                self._cond.notify()
            raise

    def release(self, conn: Connection) -> None:
        with self._cond:
            if conn.broken or self._closed:
                conn.close()
                self._open -= 1
            else:
                self._idle.append(conn)
            self._reap_locked()
            self._cond.notify()

    def adopt(self, conn: Connection) -> None:
        """Takes in a connection opened outside the pool (the one a seed walk
        opened), idle, unless the pool is closed or full."""
        with self._cond:
            if self._closed or self._open >= self._max:
                conn.close()
                return
            self._open += 1
            self._idle.append(conn)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            while self._idle:
                self._idle.popleft().close()
                self._open -= 1
            self._cond.notify_all()

    def _reap_locked(self) -> None:
        cutoff = time.monotonic() - self._idle_timeout
        while self._idle and self._open > self._min and self._idle[0].last_used < cutoff:
            self._idle.popleft().close()
            self._open -= 1
