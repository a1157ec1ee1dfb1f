from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import Server, start_server  # noqa: E402


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    """One server for a module's in-process workers; embedded workers run the built-in steps of
    pipelines in code, and values over 64 KiB go to the local object store."""
    with start_server(workers=2, env={"ORBIT_STORAGE_THRESHOLD": "64KiB"}) as s:
        yield s
