from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from server import Server, require_binary  # noqa: E402


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    srv = Server(require_binary()).start()
    yield srv
    srv.stop()
