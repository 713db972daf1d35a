"""The seed addresses a client enters a cluster by (docs/cluster.md, "Routing").

``address`` (or ``$DND_CACHE_ADDR``) may list several seeds. A client talks
to one of them, the seed in use: its public port takes any key, and its
handshake gives the shard ports. Which seed that is gets decided by a walk:
the seeds are tried in the order given, each bounded by the connect timeout,
and the first that answers the handshake is used. A seed that refuses the
connection, times out, or answers with a retryable error (CACHE_009,
CACHE_011) is skipped; any other refusal of the handshake (a bad token) is
raised at once, since every node of a cluster would refuse it too.

Both clients (``client.py`` and ``async_client.py``) keep a :class:`Seeds`;
only the way they connect differs.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

from .errors import CacheConnectionError, CacheError
from .routing import Endpoint


class Seeds:
    """The seeds of a client and the one in use.

    With one seed, ``current`` is that seed from the start and never
    changes: the client behaves as it did before seed lists. With several,
    ``current`` is ``None`` until a walk finds one, and again after a
    connection error (:meth:`forget`): the next request walks the seeds
    again, from the seed last used, so a seed that went down is left behind
    while a live one is kept.
    """

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        if not endpoints:
            raise ValueError("no seed address")
        self.endpoints: Tuple[Endpoint, ...] = tuple(endpoints)
        self.current: Optional[Endpoint] = self.endpoints[0] if len(self.endpoints) == 1 else None
        self._start = 0

    def walk(self) -> List[Endpoint]:
        """The order of the next walk: from the seed last used, around the list."""
        n = self._start
        return list(self.endpoints[n:] + self.endpoints[:n])

    def chose(self, endpoint: Endpoint) -> None:
        """``endpoint`` answered the handshake: it is the seed in use."""
        self.current = endpoint
        self._start = self.endpoints.index(endpoint)

    def forget(self) -> None:
        """After a connection error: with several seeds, walk them again."""
        if len(self.endpoints) > 1:
            self.current = None


def skips_seed(exc: CacheError) -> bool:
    """Whether the walk goes on to the next seed after ``exc``: the seed did
    not answer (refused, timed out, not the protocol) or answered that it
    cannot take the connection now (CACHE_009, CACHE_011)."""
    return exc.retryable


def no_seed_answered(failures: Sequence[Tuple[Endpoint, CacheError]]) -> CacheConnectionError:
    """The error of a walk in which every seed failed, naming each seed tried."""
    tried = "; ".join(f"{format_endpoint(seed)} ({exc})" for seed, exc in failures)
    return CacheConnectionError(f"no seed answered the handshake: tried {tried}")


def format_endpoint(endpoint: Endpoint) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
