"""Typed errors carrying the ICD code (section 8.1 and docs/protocol.md).

Every error the client raises is a :class:`CacheError` with ``code`` (e.g.
``"CACHE_003"``), ``status`` (the wire status, 0 for errors found by the
client itself) and ``message``. Errors found by the client use the codes
``CLIENT_001`` (connection failed or lost), ``CLIENT_002`` (circuit breaker
open) and ``CLIENT_003`` (the server sent bytes that are not the protocol);
a request that outlives ``request_timeout`` raises
:class:`OperationTimeoutError` (``CACHE_005``) like a server-side timeout.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Type, Union

Key = Union[str, bytes]


class CacheError(Exception):
    """Base of every error raised by :class:`dnd_cache.CacheClient`."""

    code: str = "CACHE_ERROR"
    status: int = 0

    def __init__(self, message: str = "", *, code: Optional[str] = None, status: Optional[int] = None):
        super().__init__(message or type(self).__name__)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" if self.message else self.code

    @property
    def retryable(self) -> bool:
        """Whether the same request may succeed when sent again."""
        return False


class KeyNotFoundError(CacheError):
    code, status = "CACHE_001", 1


class KeyExpiredError(CacheError):
    code, status = "CACHE_002", 2


class StorageFullError(CacheError):
    code, status = "CACHE_003", 3


class InvalidKeyError(CacheError):
    code, status = "CACHE_004", 4


class OperationTimeoutError(CacheError):
    code, status = "CACHE_005", 5

    @property
    def retryable(self) -> bool:
        return True


class MalformedRequestError(CacheError):
    code, status = "CACHE_006", 6


class UnknownOperationError(CacheError):
    code, status = "CACHE_007", 7


class FrameTooLargeError(CacheError):
    code, status = "CACHE_008", 8


class TooManyConnectionsError(CacheError):
    code, status = "CACHE_009", 9

    @property
    def retryable(self) -> bool:
        return True


class HandshakeError(CacheError):
    code, status = "CACHE_010", 10


class UnavailableError(CacheError):
    code, status = "CACHE_011", 11

    @property
    def retryable(self) -> bool:
        return True


class BatchTooLargeError(CacheError):
    code, status = "CACHE_012", 12


class MovedError(CacheError):
    """The key's slot belongs to another node of the cluster (docs/cluster.md);
    the clients follow it themselves, so callers see this only past three
    redirections."""

    code, status = "CACHE_013", 13


class InvalidCredentialsError(CacheError):
    code, status = "AUTH_001", 101


class PermissionDeniedError(CacheError):
    code, status = "AUTH_002", 102


class CacheConnectionError(CacheError):
    """The connection could not be opened, or broke during a request."""

    code = "CLIENT_001"

    @property
    def retryable(self) -> bool:
        return True


class CircuitOpenError(CacheError):
    """The circuit breaker is open: the call failed without reaching the server."""

    code = "CLIENT_002"


class ProtocolError(CacheError):
    """The server answered with bytes that are not the protocol."""

    code = "CLIENT_003"

    @property
    def retryable(self) -> bool:
        return True


class BatchError(CacheError):
    """Some items of a batch failed: ``errors`` maps each such key to its error.

    ``code`` and ``status`` are those of the first failed item.
    """

    def __init__(self, errors: Mapping[Key, CacheError]):
        self.errors: Dict[Key, CacheError] = dict(errors)
        first = next(iter(self.errors.values()))
        super().__init__(
            f"{len(self.errors)} item(s) failed, first: {first}",
            code=first.code,
            status=first.status,
        )


_BY_STATUS: Dict[int, Type[CacheError]] = {
    cls.status: cls
    for cls in (
        KeyNotFoundError,
        KeyExpiredError,
        StorageFullError,
        InvalidKeyError,
        OperationTimeoutError,
        MalformedRequestError,
        UnknownOperationError,
        FrameTooLargeError,
        TooManyConnectionsError,
        HandshakeError,
        UnavailableError,
        BatchTooLargeError,
        MovedError,
        InvalidCredentialsError,
        PermissionDeniedError,
    )
}

# Statuses after which the server closes the connection (docs/protocol.md).
CLOSING_STATUSES = frozenset({8, 9, 10, 11, 101})


def error_for_status(status: int, message: str = "") -> CacheError:
    """The typed error of a non-zero wire status; unknown ones keep their number."""
    cls = _BY_STATUS.get(status)
    if cls is None:
        return CacheError(message, code=f"STATUS_{status}", status=status)
    return cls(message)
