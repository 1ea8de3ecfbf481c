"""The plugin's services in one process: the store, the credits, the writer and the background workers.

:class:`JobsRuntime` starts them (connect and migrate, choose the credit backend, start the writer, the
webhook worker, the usage exporter and the drift check), hands them to whoever needs them — the LiteLLM
hooks (:mod:`~litellm_jobs_plugin.hooks`) and the routes — and closes them at shutdown. The routes
depend on it alone; the hooks module is the only one that knows LiteLLM's callback interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from . import __version__
from .billing.exporter import Exporter
from .credits import CreditService, PostgresCredits, RedisCredits
from .credits.base import CreditBackend
from .credits.local import choose_backend, describe
from .credits.policies import TeamPolicies
from .errors import JobsError, StoreUnavailable
from .journal import UNAVAILABLE, RedisJournal
from .metrics import process_metrics
from .models import CallEvent
from .reconcile import drift_check_forever
from .settings import Settings
from .store.embedded import EmbeddedPostgres
from .store.postgres import PostgresStore
from .store.watch import StoreWatch
from .webhooks.worker import DeliveryPolicy, WebhookWorker
from .writer import Writer

_log = logging.getLogger("litellm_jobs_plugin")


class JobsRuntime:
    """The services of one process (see the module docstring); :class:`~litellm_jobs_plugin.hooks.JobsPlugin` has one.

    Example (outside a proxy: tests, scripts)::

        runtime = JobsRuntime(Settings())
        store = await runtime.start()       # connect, migrate, start the workers
        credits = await runtime.credits()
        await runtime.aclose()              # flush, then disconnect
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings
        self._writer: Writer | None = None
        self._store: PostgresStore | None = None
        self._embedded: EmbeddedPostgres | None = None
        self._credits: CreditService | None = None
        self._watch: StoreWatch | None = None
        self._journal: RedisJournal | None = None
        self._drift_task: asyncio.Task[None] | None = None
        self._exporter: Exporter | None = None
        self._webhooks: WebhookWorker | None = None
        self._start_task: asyncio.Task[PostgresStore] | None = None
        #: Tasks that outlive the request that started them (in-process calls, stream relays);
        #: shutdown waits for them before flushing.
        self.background: set[asyncio.Task[Any]] = set()
        #: Calls whose success event a route waits for (:meth:`expect_call`), by LiteLLM call id.
        self.awaited_calls: dict[str, asyncio.Future[CallEvent]] = {}

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = Settings()
        return self._settings

    @property
    def writer(self) -> Writer:
        if self._writer is None:
            s = self.settings
            self._writer = Writer(
                max_size=s.buffer_max,
                batch_size=s.batch_size,
                enqueue_timeout_s=s.enqueue_timeout_s,
                linger_s=s.batch_linger_ms / 1000,
            )
        return self._writer

    @property
    def journal(self) -> RedisJournal | None:
        """The writer's journal (with Redis), once started."""
        return self._journal

    def start_in_background(self) -> None:
        """Start connecting (inside the proxy: requests wait for :meth:`ready`)."""
        if self._start_task is None:
            self._start_task = asyncio.get_running_loop().create_task(self._start(), name="litellm-jobs-start")

    async def _start(self) -> PostgresStore:
        s = self.settings
        url = s.database_url
        if url is None:
            self._embedded = EmbeddedPostgres(s.data_dir)
            url = await self._embedded.start()
        store = PostgresStore(url, schema=s.db_schema, min_size=s.pool_min_size, max_size=s.pool_max_size)
        deadline = asyncio.get_running_loop().time() + s.startup_timeout_s
        while True:
            try:
                await store.open(timeout_s=max(1.0, deadline - asyncio.get_running_loop().time()))
                break
            except StoreUnavailable:
                await store.close()
                if asyncio.get_running_loop().time() >= deadline:
                    raise
                store = PostgresStore(url, schema=s.db_schema, min_size=s.pool_min_size, max_size=s.pool_max_size)
                await asyncio.sleep(1.0)
        backend: CreditBackend
        redis_backend: RedisCredits | None = None
        if s.redis_url:
            # With Redis the writer's records go to the journal first (a Redis stream), holds included.
            redis_backend = RedisCredits(
                s.redis_url,
                store,
                prefix=s.redis_prefix,
                closed_ttl_s=s.closed_job_ttl_s,
                shards=s.redis_shards,
                max_connections=s.redis_max_connections,
            )
            redis_backend.settle = self.writer.settle  # a rebuild of a Redis that lost its data waits for it
            self._journal = redis_backend.journal(claim_idle_s=s.journal_claim_idle_s)
            await _until_redis_answers("set up the journal", self._journal.setup)
            self.writer.journal = self._journal
        # Started first: the in-process credit backend writes its ledger entries through it.
        self.writer.start(store)
        if redis_backend is not None:
            await _until_redis_answers("load the credit state", redis_backend.load_accounts)
            backend = redis_backend
        elif s.local_credits:
            backend = await choose_backend(store, self.writer, url, closed_ttl_s=s.closed_job_ttl_s)
        else:
            backend = PostgresCredits(store)
        metrics = process_metrics(
            max_job_types=s.metrics_max_job_types, known_job_types=s.job_prices, team_labels=s.metrics_team_labels
        )
        self.writer.observer = metrics.writer_progress
        self.writer.journal_observer = metrics.journal_progress
        writer = self.writer
        self._watch = StoreWatch(url, interval_s=s.store_check_interval_s, answered_at=lambda: writer.last_written_at)
        self._watch.start()
        policies = TeamPolicies(
            store, refresh_s=s.policy_refresh_s, window_s=s.failure_window_s, observer=metrics.failure_use
        )
        self._credits = CreditService(
            s, store, self.writer, backend, metrics=metrics, watch=self._watch, policies=policies
        )
        self._credits.start_reaper()
        self._drift_task = asyncio.get_running_loop().create_task(
            drift_check_forever(store, metrics, s.reconcile_interval_s), name="litellm-jobs-drift-check"
        )
        self._exporter = Exporter(store, s)  # usage export (docs/usage-export.md)
        self._exporter.start()
        if s.webhooks_enabled:
            self._webhooks = WebhookWorker(
                store,
                DeliveryPolicy.from_settings(s),
                metrics=metrics,
                allowance=(s.failure_allowance_usd, s.failure_window_s),
            )
            await self._webhooks.start()
        self._store = store
        _log.info(
            "litellm-jobs %s: ready on %s (database: %s, schema %s; credits: %s; Redis: %s). Next: grant a team "
            "credits (POST /api/teams/<team>/credits with the master key, or `litellm-jobs credits grant`), tag calls "
            "with metadata.job_id; dashboard at %s/jobs/ui",
            __version__,
            _listen_url(),
            _describe_database(url, s.data_dir if self._embedded is not None else None),
            s.db_schema,
            describe(backend),
            "on" if s.redis_url else "off",
            _listen_url(),
        )
        return store

    async def start(self) -> PostgresStore:
        """Connect and migrate outside the proxy (tests, scripts); idempotent."""
        if self._start_task is None:
            self._start_task = asyncio.get_running_loop().create_task(self._start())
        return await self.ready(self.settings.startup_timeout_s)

    async def ready(self, timeout_s: float | None = None) -> PostgresStore:
        """The store, once start-up has finished; a request waits for it at most ``timeout_s`` (default
        :data:`_REQUEST_START_WAIT_S`), then gets 503: a start-up waiting for Redis can take long."""
        if self._store is not None:
            return self._store
        if self._start_task is None:
            raise StoreUnavailable("The jobs plugin is not started.")
        try:
            return await asyncio.wait_for(asyncio.shield(self._start_task), timeout=timeout_s or _REQUEST_START_WAIT_S)
        except TimeoutError as exc:
            raise StoreUnavailable("The jobs store is still starting; retry shortly.") from exc
        except StoreUnavailable:
            raise
        except Exception as exc:
            raise StoreUnavailable(f"The jobs store failed to start: {exc}") from exc

    async def credits(self) -> CreditService:
        await self.ready()
        assert self._credits is not None
        return self._credits

    def expect_call(self, call_id: str) -> asyncio.Future[CallEvent]:
        """A future resolved with the success event of ``call_id`` when this process logs it.

        The seed stream route runs its call in this process, so its success event (the one that
        carries LiteLLM's cost of a stream) is logged here; :meth:`forget_call` when done.
        """
        future: asyncio.Future[CallEvent] = asyncio.get_running_loop().create_future()
        self.awaited_calls[call_id] = future
        return future

    def forget_call(self, call_id: str) -> None:
        future = self.awaited_calls.pop(call_id, None)
        if future is not None:
            future.cancel()

    async def aclose(self) -> None:
        """Flush LiteLLM's pending logging events and our buffer, then disconnect."""
        timeout = self.settings.shutdown_timeout_s
        if self.background:
            # In-process calls still streaming: let them end (and be logged) first; past the
            # timeout they are cancelled (the store is about to close under them).
            _, pending = await asyncio.wait(set(self.background), timeout=timeout)
            for task in pending:
                task.cancel()
        try:
            from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER

            await asyncio.wait_for(GLOBAL_LOGGING_WORKER.flush(), timeout=timeout)
        except Exception:
            _log.exception("litellm-jobs: flushing LiteLLM's logging worker failed")
        if self._writer is not None:
            before = self._writer.stats.written
            await self._writer.aclose(timeout_s=timeout)
            stats = self._writer.stats
            _log.info(
                "litellm-jobs: shutting down: flushed %d record(s), %d still unwritten, %d written since start",
                stats.written - before,
                self._writer.depth,
                stats.written,
            )
        if self._credits is not None:
            await self._credits.aclose()
            self._credits = None
        if self._watch is not None:
            await self._watch.aclose()
            self._watch = None
        if self._webhooks is not None:
            await self._webhooks.aclose()
            self._webhooks = None
        if self._exporter is not None:
            await self._exporter.aclose()
            self._exporter = None
        if self._drift_task is not None:
            self._drift_task.cancel()
            with contextlib.suppress(BaseException):
                await self._drift_task
            self._drift_task = None
        if self._start_task is not None and not self._start_task.done():
            self._start_task.cancel()
            with contextlib.suppress(BaseException):
                await self._start_task
        if self._store is not None:
            await self._store.close()
            self._store = None
        if self._embedded is not None:
            await self._embedded.stop()
            self._embedded = None
        self._start_task = None

    async def health(self, *, replica_only: bool = False) -> tuple[dict[str, Any], int]:
        """``GET /api/jobs/health``: (body, status); 503 when the store or Redis does not answer.

        ``replica_only`` (``?scope=replica``, the Kubernetes readiness probe): 503 only for what is
        wrong with this replica — not started, or its in-memory buffer nearly full. A database or
        Redis outage is everyone's: taking every replica out of the Service would stop the calls
        of open jobs, which go on through it.
        """
        body: dict[str, Any] = {"status": "ok", "store": "ok", "redis": None, "writer": None}
        failing = False
        try:
            store = await self.ready(timeout_s=2.0)
            await asyncio.wait_for(store.ping(), timeout=2.0)
        except (JobsError, TimeoutError) as exc:
            body["store"] = exc.message if isinstance(exc, JobsError) else "PostgreSQL did not answer in 2 s."
            failing = True
        try:
            body["writer"] = await asyncio.wait_for(self.writer_health(), timeout=2.0)
            if self._journal is not None:
                body["redis"] = "ok"
        except (JobsError, TimeoutError) as exc:
            body["redis"] = exc.message if isinstance(exc, JobsError) else "Redis did not answer in 2 s."
            body["writer"] = await self.writer_health(journal=False)
            failing = True
        if replica_only:
            full = self.writer.depth >= 0.9 * self.settings.buffer_max
            failing = self._store is None or full
            if full:
                body["writer"]["buffer"] = "nearly full"
        if failing:
            body["status"] = "unavailable"
        return body, 503 if failing else 200

    async def writer_health(self, *, journal: bool = True) -> dict[str, Any]:
        """The writer's part of ``/api/jobs/health``: what waits to be written, in memory and in the journal.

        Raises StoreUnavailable when the journal (Redis) cannot be read.
        """
        w = self.writer
        body: dict[str, Any] = {
            "buffer_depth": w.depth,
            "oldest_unwritten_age_s": round(w.oldest_pending_age_s, 3),
            "written": w.stats.written,
            "dropped": w.stats.dropped,
            "store_errors": w.stats.store_errors,
            "journal": None,
        }
        if self._journal is not None and journal:
            length, age = await self._journal.backlog()
            body["journal"] = {"backlog": length, "oldest_age_s": round(age, 3), "errors": w.stats.journal_errors}
            body["buffer_depth"] += length
            body["oldest_unwritten_age_s"] = max(body["oldest_unwritten_age_s"], round(age, 3))
        return body


#: How long a request waits for a start-up still in progress before its 503.
_REQUEST_START_WAIT_S = 10.0
_STARTUP_REDIS_ERRORS: tuple[type[BaseException], ...] = (StoreUnavailable, *UNAVAILABLE)


async def _until_redis_answers(what: str, step: Callable[[], Awaitable[object]]) -> None:
    """Run a start-up step that needs Redis until it succeeds: a proxy started while Redis is down (or
    slow to answer) starts once it answers; meanwhile tracked calls get 503 ("still starting")."""
    delay, failures = 0.5, 0
    while True:
        try:
            await step()
            return
        except _STARTUP_REDIS_ERRORS as exc:
            failures += 1
            if failures == 1 or failures % 10 == 0:
                _log.warning("litellm-jobs: cannot %s yet, Redis does not answer (%r); retrying", what, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def _describe_database(url: str, embedded_dir: Any) -> str:
    """``embedded PostgreSQL in <dir>`` or ``host:port/dbname``: never a password."""
    if embedded_dir is not None:
        return f"embedded PostgreSQL in {embedded_dir}"
    try:
        from psycopg.conninfo import conninfo_to_dict

        parts = conninfo_to_dict(url)
    except Exception:
        return "external"
    host, port, db = parts.get("host") or "localhost", parts.get("port"), parts.get("dbname") or ""
    return f"{host}{':' + str(port) if port else ''}/{db}"


def _listen_url() -> str:
    """Where ``litellm`` listens, from its ``--host``/``--port`` options (default 0.0.0.0:4000), as a URL to open."""
    options = {"--host": "0.0.0.0", "--port": "4000"}
    argv = sys.argv[1:]
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if name in options:
            options[name] = value if eq else (argv[i + 1] if i + 1 < len(argv) else options[name])
    host = options["--host"]
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{host}:{options['--port']}"
