"""Python client of the dnd-cache binary protocol (Cache Service ICD, section 5.1).

    from dnd_cache import CacheClient

    client = CacheClient(service_id="character_service",
                         options={"consistency": "strong"})
    client.set("character:1234", {"name": "Aria"}, ttl=3600)
    client.get_json("character:1234")

    # asyncio: the same methods as coroutines, pipelined on shared connections
    from dnd_cache import AsyncCacheClient

    async with AsyncCacheClient(service_id="character_service") as client:
        await client.set("character:1234", {"name": "Aria"}, ttl=3600)
"""

from .async_client import AsyncCacheClient
from .breaker import CircuitBreaker
from .client import CacheClient, owner_shard
from .cluster import RoutingStats
from .config import ClientConfig
from .errors import (
    BatchError,
    BatchTooLargeError,
    CacheConnectionError,
    CacheError,
    CircuitOpenError,
    FrameTooLargeError,
    HandshakeError,
    InvalidCredentialsError,
    InvalidKeyError,
    KeyExpiredError,
    KeyNotFoundError,
    MalformedRequestError,
    OperationTimeoutError,
    PermissionDeniedError,
    ProtocolError,
    StorageFullError,
    TooManyConnectionsError,
    UnavailableError,
    UnknownOperationError,
    error_for_status,
)
from .values import encode_value
from .wire import Metadata, Options

__version__ = "0.1.0"

__all__ = [
    "AsyncCacheClient",
    "BatchError",
    "BatchTooLargeError",
    "CacheClient",
    "CacheConnectionError",
    "CacheError",
    "CircuitBreaker",
    "CircuitOpenError",
    "ClientConfig",
    "FrameTooLargeError",
    "HandshakeError",
    "InvalidCredentialsError",
    "InvalidKeyError",
    "KeyExpiredError",
    "KeyNotFoundError",
    "MalformedRequestError",
    "Metadata",
    "OperationTimeoutError",
    "Options",
    "PermissionDeniedError",
    "ProtocolError",
    "RoutingStats",
    "StorageFullError",
    "TooManyConnectionsError",
    "UnavailableError",
    "UnknownOperationError",
    "encode_value",
    "error_for_status",
    "owner_shard",
]
