"""Minimal pipelined clients for perf/memory-shift: dnd-cache's binary
protocol (hand-encoded protobuf, docs/protocol.md), Redis (RESP) and
memcached (text). Each offers set_many, hits and held over one connection."""
import json
import socket
import struct
import time

_values: dict = {}


def value(size: int) -> bytes:
    v = _values.get(size)
    if v is None:
        v = _values[size] = b"v" * size
    return v


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connect(port: int) -> socket.socket:
    deadline = time.time() + 10
    while True:
        try:
            s = socket.create_connection(("127.0.0.1", port))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return s
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.05)


class Reader:
    """Buffered reads of lines and byte counts from a socket."""

    def __init__(self, sock: socket.socket):
        self.sock, self.buf, self.pos = sock, bytearray(), 0

    def _more(self) -> None:
        if self.pos > 1 << 20:
            del self.buf[:self.pos]
            self.pos = 0
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise RuntimeError("connection closed")
        self.buf += chunk

    def exact(self, n: int) -> bytes:
        while len(self.buf) - self.pos < n:
            self._more()
        out = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return out

    def line(self) -> bytes:
        while True:
            end = self.buf.find(b"\r\n", self.pos)
            if end >= 0:
                out = bytes(self.buf[self.pos:end])
                self.pos = end + 2
                return out
            self._more()


# --- dnd-cache ---

def _varint(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append(v & 0x7F | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _field(field: int, data: bytes) -> bytes:
    return bytes([field << 3 | 2]) + _varint(len(data)) + data


def _frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def _status_and_len(body: bytes):
    """CacheResponse.status and the length of its data."""
    pos, status, data_len = 0, 0, None
    while pos < len(body):
        tag, pos = _read_varint(body, pos)
        if tag & 7 == 0:
            v, pos = _read_varint(body, pos)
            if tag >> 3 == 1:
                status = v
        elif tag & 7 == 2:
            n, pos = _read_varint(body, pos)
            if tag >> 3 == 2:
                data_len = n
            pos += n
        else:
            break
    return status, data_len


def _read_varint(b: bytes, pos: int):
    shift = v = 0
    while True:
        byte = b[pos]
        pos += 1
        v |= (byte & 0x7F) << shift
        if byte < 0x80:
            return v, pos
        shift += 7


class Dnd:
    def __init__(self, port: int):
        self.sock = connect(port)
        self.r = Reader(self.sock)
        self.sock.sendall(_frame(_field(1, b"memory_shift") + b"\x30\x01"))
        self._bodies(1)

    def _bodies(self, n: int) -> list:
        out = []
        for _ in range(n):
            size = struct.unpack(">I", self.r.exact(4))[0]
            out.append(self.r.exact(size))
        return out

    def set_many(self, pairs) -> int:
        self.sock.sendall(b"".join(_frame(b"\x0a\x03set" + _field(2, k) + _field(3, value(n))) for k, n in pairs))
        return sum(_status_and_len(b)[0] == 0 for b in self._bodies(len(pairs)))

    def _gets(self, keys) -> list:
        self.sock.sendall(b"".join(_frame(b"\x0a\x03get" + _field(2, k)) for k in keys))
        return [_status_and_len(b) for b in self._bodies(len(keys))]

    def hits(self, keys) -> list:
        return [status == 0 for status, _ in self._gets(keys)]

    def held(self, keys, size: int) -> int:
        return sum(status == 0 and n == size for status, n in self._gets(keys))

    def stats(self) -> dict:
        self.sock.sendall(_frame(_field(1, b"stats")))
        body = self._bodies(1)[0]
        return json.loads(body[body.index(b"{"):])

    def evictions(self) -> int:
        return self.stats()["total"]["evictions"]

    def close(self) -> None:
        self.sock.close()


# --- Redis ---

class Redis:
    def __init__(self, port: int):
        self.sock = connect(port)
        self.r = Reader(self.sock)

    def set_many(self, pairs) -> int:
        self.sock.sendall(b"".join(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(k), k, n, value(n))
                                   for k, n in pairs))
        return sum(self.r.line() == b"+OK" for _ in pairs)

    def _gets(self, keys) -> list:
        self.sock.sendall(b"".join(b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(k), k) for k in keys))
        out = []
        for _ in keys:
            n = int(self.r.line()[1:])
            if n >= 0:
                self.r.exact(n + 2)
            out.append(n)
        return out

    def hits(self, keys) -> list:
        return [n >= 0 for n in self._gets(keys)]

    def held(self, keys, size: int) -> int:
        return sum(n == size for n in self._gets(keys))

    def close(self) -> None:
        self.sock.close()


# --- memcached ---

class Memcached:
    def __init__(self, port: int):
        self.sock = connect(port)
        self.r = Reader(self.sock)

    def set_many(self, pairs) -> int:
        self.sock.sendall(b"".join(b"set %s 0 0 %d\r\n%s\r\n" % (k, n, value(n)) for k, n in pairs))
        return sum(self.r.line() == b"STORED" for _ in pairs)

    def _gets(self, keys) -> list:
        self.sock.sendall(b"".join(b"get %s\r\n" % k for k in keys))
        out = []
        for _ in keys:
            line = self.r.line()
            if line == b"END":
                out.append(-1)
                continue
            n = int(line.split()[3])
            self.r.exact(n + 2)
            assert self.r.line() == b"END"
            out.append(n)
        return out

    def hits(self, keys) -> list:
        return [n >= 0 for n in self._gets(keys)]

    def held(self, keys, size: int) -> int:
        return sum(n == size for n in self._gets(keys))

    def close(self) -> None:
        self.sock.close()
