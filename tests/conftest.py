from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.support.services import FakeUpstream, Fleet, PostgresServer, Proxy, proxy_config, start_proxies

# The plugin's settings come from JOBS_* variables: tests set them explicitly, never inherit them.
for _name in [n for n in os.environ if n.startswith("JOBS_") and not n.startswith("JOBS_TEST_")]:
    del os.environ[_name]
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = PostgresServer.from_env(tmp_path_factory.mktemp("pg"))
    yield server
    server.close()


@pytest.fixture
def database_url(pg_server: PostgresServer) -> Iterator[str]:
    """A fresh database for one test."""
    url = pg_server.create_database()
    yield url
    pg_server.drop_database(url)


@pytest.fixture(scope="module")
def module_database_url(pg_server: PostgresServer) -> Iterator[str]:
    url = pg_server.create_database()
    yield url
    pg_server.drop_database(url)


@pytest.fixture(scope="session")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstream]:
    with FakeUpstream.run(tmp_path_factory.mktemp("upstream")) as server:
        yield server


#: The three places credit decisions are made: this process's memory (one replica alone on its
#: database), PostgreSQL (row locks; what a replica decides once it shares the database) and Redis.
CREDIT_MODES = ("in_process", "postgres", "redis")
DEFAULT_CREDIT_MODE = "in_process"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--credit-mode",
        choices=CREDIT_MODES,
        default=None,
        help="the credit mode of the proxies start_proxy and shared_proxy start: in_process (one proxy, the "
        "default), postgres or redis (two replicas on one database behind a round-robin front); "
        "default: $JOBS_TEST_CREDIT_MODE, else in_process",
    )


def suite_credit_mode(config: pytest.Config) -> str:
    """The run's credit mode: --credit-mode, else JOBS_TEST_CREDIT_MODE, else in_process."""
    mode = config.getoption("credit_mode") or os.environ.get("JOBS_TEST_CREDIT_MODE") or DEFAULT_CREDIT_MODE
    if mode not in CREDIT_MODES:
        raise pytest.UsageError(f"JOBS_TEST_CREDIT_MODE={mode!r}: not one of {', '.join(CREDIT_MODES)}")
    return str(mode)


def pytest_configure(config: pytest.Config) -> None:
    suite_credit_mode(config)  # a bad JOBS_TEST_CREDIT_MODE fails the run at once


def pytest_report_header(config: pytest.Config) -> str:
    return f"credit mode: {suite_credit_mode(config)}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In the postgres and redis modes, the tests that run once skip: those marked ``single_mode``, those
    that take the ``credit_mode`` fixture (they run in every mode already, from the default run) and those
    that start no proxy in the run's mode (no ``start_in_mode`` among their fixtures: the same in every mode)."""
    mode = suite_credit_mode(config)
    if mode == DEFAULT_CREDIT_MODE:
        return
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        marker = item.get_closest_marker("single_mode")
        if marker is not None:
            why = marker.args[0] if marker.args else marker.kwargs.get("reason", "")
            item.add_marker(pytest.mark.skip(reason=f"single mode, runs in {DEFAULT_CREDIT_MODE}: {why}"))
        elif "credit_mode" in fixtures:
            item.add_marker(pytest.mark.skip(reason="parametrized over the credit modes itself"))
        elif "start_in_mode" not in fixtures:
            item.add_marker(pytest.mark.skip(reason="starts no proxy in the run's credit mode: the same in every mode"))


@pytest.fixture(scope="session")
def start_in_mode(request: pytest.FixtureRequest, redis_server_url: str | None) -> Callable[..., Proxy | Fleet]:
    """Starts "the proxy" of a test in the run's credit mode: one process (in_process), or two replicas
    on the same database and Redis prefix behind a round-robin front (postgres, redis). The caller stops it."""
    mode = suite_credit_mode(request.config)

    def start(
        tmp: Path,
        config: dict[str, Any],
        *,
        env: dict[str, str],
        redis_prefix: str | None = None,
        wait: bool = True,
        support_files: tuple[str, ...] = (),
        args: tuple[str, ...] = (),
    ) -> Proxy | Fleet:
        mode_env = credit_mode_env(mode, redis_server_url, redis_prefix or new_redis_prefix())
        return start_proxies(
            tmp,
            config,
            env={**mode_env, **env},
            replicas=1 if mode == DEFAULT_CREDIT_MODE else 2,
            wait=wait,
            support_files=support_files,
            args=args,
        )

    return start


@pytest.fixture
def start_proxy(
    tmp_path: Path,
    upstream: FakeUpstream,
    database_url: str,
    redis_prefix: str,
    start_in_mode: Callable[..., Proxy | Fleet],
) -> Iterator[Callable[..., Proxy | Fleet]]:
    """Start real ``litellm`` proxies for one test, in the run's credit mode; all are stopped by PID at its end.

    It depends on ``database_url`` so that its proxies stop before the test's database is dropped (a proxy
    whose database vanished under it spends its whole shutdown timeout retrying its last records). The
    proxies of one database share the test's Redis prefix (a proxy started again finds its Redis state).
    """
    started: list[Proxy | Fleet] = []
    prefixes: dict[str, str] = {database_url: redis_prefix}

    def start(
        database_url: str, *, env: dict[str, str] | None = None, wait: bool = True, **config_overrides: Any
    ) -> Proxy | Fleet:
        proxy = start_in_mode(
            tmp_path,
            proxy_config(upstream, **config_overrides),
            env={"JOBS_DATABASE_URL": database_url, **(env or {})},
            redis_prefix=prefixes.setdefault(database_url, new_redis_prefix()),
            wait=wait,
        )
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop(timeout=30)


@pytest.fixture(scope="module")
def shared_proxy(
    tmp_path_factory: pytest.TempPathFactory,
    upstream: FakeUpstream,
    module_database_url: str,
    start_in_mode: Callable[..., Proxy | Fleet],
) -> Iterator[Proxy | Fleet]:
    """One proxy (in the run's credit mode) for the tests of a module that only add data (each test
    uses its own job ids)."""
    proxy = start_in_mode(
        tmp_path_factory.mktemp("proxy"), proxy_config(upstream), env={"JOBS_DATABASE_URL": module_database_url}
    )
    for team in ("team-a", "team-b", "team-c"):
        proxy.grant(team, 100_000)
    yield proxy
    proxy.stop(timeout=30)


def query(url: str, sql: str, *params: Any) -> list[dict[str, Any]]:
    """Rows of ``sql`` in the litellm_jobs schema of ``url`` (tests read PostgreSQL directly)."""
    with psycopg.connect(url, autocommit=True, row_factory=dict_row, options="-c search_path=litellm_jobs") as conn:
        cur = conn.execute(sql, params or None)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description is not None else []


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str | None]:
    from tests.support.redis_server import redis_url

    with redis_url(tmp_path_factory.mktemp("redis")) as url:
        yield url


#: Every Redis key a test run writes starts with this; the run deletes them at its end (never FLUSHALL:
#: the Redis may be the machine's own).
REDIS_TEST_PREFIX = f"ljp-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A three-master Redis Cluster of the session's own (its JOBS_REDIS_URL); skips without the binaries."""
    from tests.support.redis_cluster import redis_cluster

    with redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        if cluster is None:
            pytest.skip("no redis-server/redis-cli binaries for a Redis Cluster")
        yield cluster.url


@pytest.fixture(scope="session", autouse=True)
def _clean_test_redis_keys(redis_server_url: str | None) -> Iterator[None]:
    yield
    if redis_server_url:
        import redis

        client = redis.Redis.from_url(redis_server_url)
        for key in client.scan_iter(f"{REDIS_TEST_PREFIX}*", count=1000):
            client.delete(key)
        client.close()


def new_redis_prefix() -> str:
    """A Redis key prefix of its own, under the run's (whose keys the run deletes at its end)."""
    return f"{REDIS_TEST_PREFIX}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix of this test's own."""
    return new_redis_prefix()


def credit_mode_env(mode: str, redis_url: str | None, prefix: str) -> dict[str, str]:
    """The JOBS_* settings that put a proxy in ``mode``; skips the test when Redis is missing."""
    if mode == "in_process":
        return {}
    if mode == "postgres":
        return {"JOBS_LOCAL_CREDITS": "false"}
    if redis_url is None:
        pytest.skip("no Redis server (JOBS_TEST_REDIS_URL unset and no redis-server binary)")
    return {"JOBS_REDIS_URL": redis_url, "JOBS_REDIS_PREFIX": prefix}


@pytest.fixture(params=CREDIT_MODES)
def credit_mode(request: pytest.FixtureRequest, redis_server_url: str | None, redis_prefix: str) -> dict[str, str]:
    """Parametrises a test over the three credit modes: the env to start its proxies with."""
    return credit_mode_env(str(request.param), redis_server_url, redis_prefix)
