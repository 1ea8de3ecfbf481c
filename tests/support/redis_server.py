"""Redis for the tests: JOBS_TEST_REDIS_URL (the machine's server), else a redis-server we start."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import redis

from tests.support.services import free_port, stop_process, wait_for


@contextlib.contextmanager
def redis_url(tmp: Path) -> Iterator[str | None]:
    """A Redis URL, or None when neither a server nor the redis-server binary is available."""
    url = os.environ.get("JOBS_TEST_REDIS_URL")
    if url:
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        url = f"redis://127.0.0.1:{port}/0"
        wait_for(lambda: redis.Redis.from_url(url).ping(), timeout=20, what="redis-server")
        yield url
    finally:
        stop_process(proc, timeout=10)
