"""Processes of the benchmark, started and stopped by PID: fake upstream, bare and plugin proxies.

Both proxies get the test config of ``tests/support/services.proxy_config`` (same models, same
router settings, same ``custom_auth`` from ``tests/support/test_auth.py``); the bare proxy's
config only lacks the plugin callback. A proxy may run under ``valgrind --tool=callgrind
--instr-atstart=no`` so that instructions can be counted for a window of requests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import yaml  # type: ignore[import-untyped]
from tests.support.services import SUPPORT, FakeUpstream, clean_env, free_port, proxy_config, wait_for

ROOT = Path(__file__).resolve().parents[1]
ADMIN_DB = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
MASTER_KEY = "sk-master"
TEAM_KEY = "sk-team-a"
TEAM = "team-a"
#: ``JOBS_STORE_CHECK_INTERVAL_S`` for the proxies under callgrind only (empty: the plugin's default).
CG_STORE_CHECK_INTERVAL_S = os.environ.get("BENCH_CG_STORE_CHECK_INTERVAL_S", "")


@dataclass(frozen=True)
class Variant:
    """One proxy configuration under test."""

    name: str
    plugin: bool
    redis: bool = False
    untagged: str = "single_call_job"  # JOBS_UNTAGGED
    extra_env: tuple[tuple[str, str], ...] = ()
    #: A callback module loaded instead of the plugin (``null_plugin``: the hooks' floor); the
    #: proxy is then treated as a bare one (no database, no grants).
    callback: str | None = None
    #: A module of ``bench/`` loaded instead of ``litellm_jobs_plugin.plugin`` that exposes the plugin
    #: wrapped (``hook_timer``: its hooks timed), for a plugin variant.
    wrap: str | None = None
    #: Webhooks and usage export on: an endpoint for every event and a CloudEvents sink, both on the
    #: fake upstream's receiver (registered by :meth:`ProxyProc.turn_on_billing`).
    billing: bool = False


@dataclass
class ProxyProc:
    variant: Variant
    proc: subprocess.Popen[bytes]
    port: int
    workdir: Path
    log_path: Path
    callgrind: bool
    database: str | None = None
    redis_prefix: str | None = None
    dumps: list[Path] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, n: int = 60) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.variant.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
        path = "/api/jobs/health" if self.variant.plugin else "/health/liveliness"
        return httpx.get(self.url + path, timeout=5).status_code == 200

    def wait_ready(self, timeout: float) -> None:
        wait_for(self.ready, timeout=timeout, interval=0.5, what=f"{self.variant.name} to answer")

    def writer_health(self) -> dict[str, Any]:
        if not self.variant.plugin:
            return {}
        body: dict[str, Any] = httpx.get(self.url + "/api/jobs/health", timeout=30).json()
        return dict(body.get("writer") or {})

    def grant(self, amount: str = "1000000000") -> None:
        if not self.variant.plugin:
            return
        r = httpx.post(
            f"{self.url}/api/teams/{TEAM}/credits",
            headers={"Authorization": f"Bearer {MASTER_KEY}"},
            json={"amount": amount, "idempotency_key": f"bench-{uuid.uuid4().hex}"},
            timeout=120,
        )
        r.raise_for_status()

    def turn_on_billing(self, receiver: str) -> None:
        """Register a webhook endpoint for every event and a CloudEvents usage sink at ``receiver``."""
        if not self.variant.billing:
            return
        headers = {"Authorization": f"Bearer {MASTER_KEY}"}
        r = httpx.post(
            f"{self.url}/api/webhooks/endpoints",
            headers=headers,
            json={"url": f"{receiver}/_sink/webhooks"},
            timeout=60,
        )
        r.raise_for_status()
        r = httpx.put(
            f"{self.url}/api/billing/sinks/bench",
            headers=headers,
            json={"kind": "cloudevents", "url": f"{receiver}/_sink/usage"},
            timeout=60,
        )
        r.raise_for_status()

    def cpu_seconds(self) -> float:
        """utime + stime of the proxy process (all its threads), from /proc."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def store_outages(self) -> int:
        """How often the store watch declared PostgreSQL unreachable (its warning in the proxy's log)."""
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace").count("PostgreSQL is unreachable")
        return 0

    def stop(self) -> None:
        stop(self.proc)


def stop(proc: subprocess.Popen[Any], timeout: float = 60.0) -> None:
    """SIGTERM the process group we started (by its PID), SIGKILL after ``timeout``."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def create_database(prefix: str = "jobs_bench") -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_DB, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return database_url(name)


def database_url(name: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(ADMIN_DB)
    params["dbname"] = name
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in params.items() if v is not None})


def drop_database(url: str) -> None:
    """Drop a database this benchmark created (never any other)."""
    name = str(psycopg.conninfo.conninfo_to_dict(url)["dbname"])
    if not name.startswith("jobs_bench"):
        raise ValueError(f"refusing to drop {name}: not a benchmark database")
    with psycopg.connect(ADMIN_DB, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def drop_redis_prefix(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        batch = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        while batch:
            client.delete(*batch[:500])
            batch = batch[500:]
    finally:
        client.close()


def config_for(upstream: FakeUpstream, variant: Variant) -> dict[str, Any]:
    config = proxy_config(upstream)
    if not variant.plugin:
        callbacks = [f"{variant.callback}.plugin"] if variant.callback else []
        config["litellm_settings"] = {**config["litellm_settings"], "callbacks": callbacks}
    elif variant.wrap:
        config["litellm_settings"] = {**config["litellm_settings"], "callbacks": [f"{variant.wrap}.plugin"]}
    return config


def start_proxy(
    tmp: Path,
    upstream: FakeUpstream,
    variant: Variant,
    *,
    callgrind: bool,
    database: str | None = None,
) -> ProxyProc:
    """Start one proxy (not waiting for it); the caller owns the database it passes."""
    workdir = tmp / f"{variant.name}-{'cg' if callgrind else 'native'}-{uuid.uuid4().hex[:6]}"
    workdir.mkdir(parents=True)
    shutil.copy(SUPPORT / "test_auth.py", workdir / "test_auth.py")
    for module in (variant.callback, variant.wrap):
        if module:
            shutil.copy(ROOT / "bench" / f"{module}.py", workdir / f"{module}.py")
    (workdir / "config.yaml").write_text(yaml.safe_dump(config_for(upstream, variant), sort_keys=False))
    port = free_port()
    env = clean_env()
    env["LITELLM_LOG"] = "ERROR"
    # a crash of the interpreter (the plugin proxy segfaulted once under load) leaves its Python stacks in the log
    env["PYTHONFAULTHANDLER"] = "1"
    redis_prefix: str | None = None
    if variant.plugin:
        if database is None:
            database = create_database()
        env["JOBS_DATABASE_URL"] = database
        env["JOBS_UNTAGGED"] = variant.untagged
        if variant.redis:
            redis_prefix = f"bench-{uuid.uuid4().hex[:8]}"
            env["JOBS_REDIS_URL"] = REDIS_URL
            env["JOBS_REDIS_PREFIX"] = redis_prefix
        if callgrind and CG_STORE_CHECK_INTERVAL_S:
            # The first run needed 5 s under valgrind (the store watch's 1 s ping timeout through the
            # busy pool declared PostgreSQL down: 503 for new jobs). Since the watch pings on its own
            # connection and needs two 5 s timeouts in a row, the default is kept; this is the way back.
            env["JOBS_STORE_CHECK_INTERVAL_S"] = CG_STORE_CHECK_INTERVAL_S
        env.update(dict(variant.extra_env))
    litellm_bin = str(Path(sys.executable).with_name("litellm"))
    cmd = [sys.executable, litellm_bin, "--config", "config.yaml", "--host", "127.0.0.1", "--port", str(port)]
    if callgrind:
        cmd = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={workdir}/callgrind.out",
            "--log-file=" + str(workdir / "valgrind.log"),
            *cmd,
        ]
    log_path = workdir / "proxy.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return ProxyProc(variant, proc, port, workdir, log_path, callgrind, database, redis_prefix)


def cleanup(proxy: ProxyProc, *, keep_database: bool = False) -> None:
    proxy.stop()
    if proxy.database and not keep_database:
        with contextlib.suppress(Exception):
            drop_database(proxy.database)
    if proxy.redis_prefix:
        with contextlib.suppress(Exception):
            drop_redis_prefix(proxy.redis_prefix)


def now() -> float:
    return time.monotonic()


def clean_env_for(database: str) -> dict[str, str]:
    env = clean_env()
    env["JOBS_DATABASE_URL"] = database
    return env


def db_backend_cpu(database: str | None) -> dict[int, float]:
    """CPU seconds of every PostgreSQL backend connected to ``database`` (its pool), by PID."""
    if database is None:
        return {}
    name = str(psycopg.conninfo.conninfo_to_dict(database)["dbname"])
    with psycopg.connect(ADMIN_DB, autocommit=True) as conn:
        pids = [r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (name,))]
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[pid] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def db_cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())
