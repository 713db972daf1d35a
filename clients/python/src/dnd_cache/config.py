"""Client configuration: the defaults are those of ICD section 9.2."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Tuple, Union

from .routing import Endpoint
from .wire import Options

DEFAULT_ADDRESS = "127.0.0.1:7000"
ADDRESS_ENV = "DND_CACHE_ADDR"
CONSISTENCY_LEVELS = ("", "strong", "eventual")


@dataclass
class ClientConfig:
    """Timeouts in seconds. ``retries`` is the number of extra attempts."""

    connect_timeout: float = 5.0
    request_timeout: float = 5.0
    retries: int = 3
    backoff_base: float = 0.05
    backoff_max: float = 2.0
    pool_min_size: int = 5
    pool_max_size: int = 50
    pool_idle_timeout: float = 300.0
    breaker_threshold: float = 0.5
    breaker_window: float = 60.0
    breaker_min_requests: int = 20
    breaker_cooldown: float = 5.0
    # Send each key to the port of its owner shard when the server lists them.
    shard_aware: bool = True
    # AsyncCacheClient only: requests in flight on one connection before
    # another connection to the same port is opened.
    max_pipeline: int = 100

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError("retries must be >= 0")
        if not 0 < self.pool_min_size <= self.pool_max_size:
            raise ValueError("need 0 < pool_min_size <= pool_max_size")
        if self.max_pipeline < 1:
            raise ValueError("max_pipeline must be >= 1")
        if not 0 < self.breaker_threshold <= 1:
            raise ValueError("breaker_threshold must be in (0, 1]")


def resolve_seeds(address: Optional[str]) -> Tuple[Endpoint, ...]:
    """``address``, else ``$DND_CACHE_ADDR``, else 127.0.0.1:7000, as the
    (host, port) of each seed.

    The text is one ``host:port`` or a comma-separated list of them
    (whitespace around the commas is ignored). An empty entry or one that is
    not ``host:port`` is a ``ValueError`` naming that entry.
    """
    text = address or os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS
    entries = [entry.strip() for entry in text.split(",")]
    where = f" in {text!r}" if len(entries) > 1 else ""
    return tuple(_endpoint_of(entry, where) for entry in entries)


def _endpoint_of(entry: str, where: str) -> Endpoint:
    if not entry:
        raise ValueError(f"empty seed address{where}")
    host, sep, port = entry.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"address must be host:port, got {entry!r}{where}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def make_options(options: Union[None, Options, Mapping[str, Any]]) -> Optional[Options]:
    """Validates the ICD 5.1 options mapping (consistency, compression, encryption)."""
    if options is None or isinstance(options, Options):
        return options
    unknown = set(options) - {"consistency", "compression", "encryption"}
    if unknown:
        raise ValueError(f"unknown option(s): {sorted(unknown)}")
    consistency = options.get("consistency") or ""
    if consistency not in CONSISTENCY_LEVELS:
        raise ValueError(f"consistency must be 'strong' or 'eventual', got {consistency!r}")
    return Options(
        compression=bool(options.get("compression", False)),
        encryption=bool(options.get("encryption", False)),
        consistency=consistency,
    )
