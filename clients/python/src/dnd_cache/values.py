"""How values become bytes, the same in every client library.

* ``bytes``, ``bytearray``, ``memoryview``: stored as they are;
* ``str``: stored as UTF-8;
* anything else: stored as compact JSON in UTF-8 (``json.dumps``).

Reading returns bytes; :meth:`CacheClient.get_str` decodes UTF-8 and
:meth:`CacheClient.get_json` parses JSON. The Go client follows the same
rules (``[]byte`` raw, ``string`` UTF-8, other values ``json.Marshal``), so a
value written by one is read by the other.
"""

from __future__ import annotations

import json
from typing import Any, Union

Key = Union[str, bytes]


def encode_value(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def encode_key(key: Key) -> bytes:
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key)
    raise TypeError(f"a key is str or bytes, not {type(key).__name__}")
