"""The LiteLLM callback: thin hooks that hand over to the adapter, the job rules and the writer.

LiteLLM loads it with ``litellm_settings: callbacks: ["litellm_jobs_plugin.plugin"]``. Data flows
one way: request → :meth:`JobsPlugin.async_pre_call_hook` (validate, decide, stash) → logging
events → :class:`~litellm_jobs_plugin.writer.Writer` buffer → store.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sys
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

from litellm.integrations.custom_logger import CustomLogger

from . import __version__
from . import litellm_adapter as adapter
from .billing.exporter import Exporter
from .credits import CreditService, PostgresCredits, RedisCredits
from .credits.base import CreditBackend
from .credits.local import choose_backend, describe
from .credits.policies import TeamPolicies
from .errors import JobsError, StoreUnavailable, to_proxy_exception
from .jobs import Caller, decide_call
from .journal import UNAVAILABLE, RedisJournal
from .metadata import parse_job_tag
from .metrics import process_metrics
from .models import CallEvent, CallStatus, JobStatus
from .reconcile import drift_check_forever
from .settings import Settings
from .store.embedded import EmbeddedPostgres
from .store.postgres import PostgresStore
from .store.watch import StoreWatch
from .webhooks.worker import DeliveryPolicy, WebhookWorker
from .writer import Writer

_log = logging.getLogger("litellm_jobs_plugin")


class JobsPlugin(CustomLogger):
    """Job tracking for the LiteLLM proxy. One instance per process: :data:`plugin`."""

    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__()
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
        self._attached = False
        #: Tasks that outlive the request that started them (in-process calls, stream relays);
        #: shutdown waits for them before flushing.
        self.background: set[asyncio.Task[Any]] = set()
        self._awaited_calls: dict[str, asyncio.Future[CallEvent]] = {}
        #: Non-streamed calls whose success record one side (the answer or LiteLLM's success event) has
        #: handed over or is handing over, until the other side has seen it: each is recorded once.
        self._handovers: dict[str, _Handover] = {}

    # -- life cycle ---------------------------------------------------------------------------

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

    def attach_to_proxy(self) -> None:
        """Mount our routes on the proxy's app, hook its shutdown, and start connecting.

        Called when LiteLLM imports the package inside a running proxy; does nothing elsewhere
        (importing the package in a script or the CLI does no I/O).
        """
        if self._attached:
            return
        self._attached = True
        _show_our_log_lines()
        import litellm.proxy.proxy_server as proxy_server

        from .routes import build_router

        proxy_server.app.include_router(build_router(self))
        original_shutdown = proxy_server.proxy_shutdown_event

        # LiteLLM has no shutdown hook for callbacks (LITELLM-NOTES): wrap its shutdown event so
        # the buffer is flushed before the process exits. Covered by tests/contract.
        async def proxy_shutdown_event(*args: Any, **kwargs: Any) -> None:
            try:
                await self.aclose()
            finally:
                await original_shutdown(*args, **kwargs)

        proxy_server.proxy_shutdown_event = proxy_shutdown_event
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
        self._awaited_calls[call_id] = future
        return future

    def forget_call(self, call_id: str) -> None:
        future = self._awaited_calls.pop(call_id, None)
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

    # -- LiteLLM hooks (defined here, on the instantiated class: inherited hooks are skipped) ---

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: Any
    ) -> dict[str, Any]:
        adapter.pop_stash(data)  # never trust a client-supplied stash
        team_id, key_hash, user_id = adapter.key_identity(user_api_key_dict)
        caller = Caller(
            team_id=team_id, key_hash=key_hash, user_id=user_id, is_admin=adapter.is_proxy_admin(user_api_key_dict)
        )
        call_id = str(data.get("litellm_call_id"))
        record_id = adapter.record_call_id(data, call_id)  # set when the client chose the call id
        model = data.get("model")
        try:
            tag = parse_job_tag(adapter.client_metadata(data), adapter.job_headers(data))
            context = decide_call(
                tag,
                caller,
                call_id=call_id,
                settings=self.settings,
                requested_model=model if isinstance(model, str) else None,
                record_call_id=record_id,
            )
            remaining = None
            if context.job_key is not None:
                admission = await (await self.credits()).admit_call(context)
                # formatted once, for the x-credits-remaining header
                remaining = f"{Decimal(admission.credits_remaining).normalize():f}"
        except JobsError as exc:
            raise to_proxy_exception(exc) from exc
        adapter.put_stash(data, context, credits_remaining=remaining)
        if self._journal is not None:
            # the answer waits for its record's Redis round trip: LiteLLM's logging must not run meanwhile
            adapter.defer_success_logging(data, call_type)
        if context.job_type is not None and self.settings.tag_job_type:
            adapter.add_request_tag(data, f"job_type:{context.job_type}")
        return data

    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        await self._record(kwargs, start_time, end_time, CallStatus.SUCCESS)

    async def async_log_failure_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        await self._record(kwargs, start_time, end_time, CallStatus.FAILURE)

    async def _record(self, kwargs: dict[str, Any], start_time: Any, end_time: Any, status: CallStatus) -> None:
        if status is CallStatus.SUCCESS and self._handovers:
            handover = self._handovers.get(adapter.logged_record_id(kwargs) or "")
            if handover is not None and handover.by_answer:
                del self._handovers[handover.call_id]  # recorded from its answer already
                return
        try:
            event = adapter.call_event(kwargs, start_time, end_time, status)
        except Exception:
            _log.exception("litellm-jobs: could not read a LiteLLM %s event", status.value)
            return
        if event is None:
            return
        if status is CallStatus.SUCCESS and self._awaited_calls:
            awaited = self._awaited_calls.get(str(kwargs.get("litellm_call_id")))
            if awaited is not None and not awaited.done():
                awaited.get_loop().call_soon_threadsafe(_resolve, awaited, event)
        if status is not CallStatus.SUCCESS or event.stream:
            await self._hand_over(event)
            return
        # A non-streamed success logged before its answer left (LiteLLM 1.108 and before may): the answer
        # (post-call hook) waits for this record rather than recording it again.
        handover = self._handovers.get(event.call_id)
        if handover is None:
            handover = self._new_handover(event.call_id, by_answer=False)
        try:
            await self._hand_over(event)
        finally:
            if not handover.done.done():
                handover.done.set_result(None)

    async def _hand_over(self, event: CallEvent) -> None:
        """Record ``event`` and settle its job: the record with the job's cost, or the single-call job's closure."""
        key = event.context.job_key
        if key is not None and event.context.single_call and event.status is CallStatus.SUCCESS:
            await self._record_single_call(event, key)
            return
        if key is None:
            await self.writer.put(event)
            return
        # with Redis credits, the record and the job's cost go in one script
        if await self.writer.put_call(event, key[0], key[1]):
            return
        try:
            await (await self.credits()).add_cost(key[0], key[1], event.cost_usd)
        except JobsError as exc:
            _log.warning("litellm-jobs: could not settle job %s after its call: %s", key[1], exc.message)

    async def _record_single_call(self, event: CallEvent, key: tuple[str, str]) -> None:
        """The call is its own job: its success completes it (a replay is a no-op).

        Its record goes out with the closure's entries (one journal round trip with Redis); its cost
        is not added to a job that closes now (the closure carries it, for the cost metric).
        """
        recorded = False
        try:
            credits = await self.credits()
            closure = await credits.close_job(
                key[0],
                key[1],
                JobStatus.COMPLETED,
                single_call=True,
                via_writer=True,
                cost_usd=event.cost_usd,
                records=(event,),
                job_type=event.context.job_type,
            )
            recorded = closure is not None and credits.closes_through_writer
        except JobsError as exc:
            _log.warning("litellm-jobs: could not settle job %s after its call: %s", key[1], exc.message)
        finally:
            if not recorded:
                await self.writer.put(event)

    # -- a 200 means recorded: a non-streamed answer's record is handed over before the answer leaves --

    #: Bound on handovers awaiting their other side (calls LiteLLM never logs must not grow the map).
    _MAX_HANDOVERS = 100_000

    def _new_handover(self, call_id: str, *, by_answer: bool) -> _Handover:
        if len(self._handovers) >= self._MAX_HANDOVERS:
            oldest = self._handovers.pop(next(iter(self._handovers)))
            if not oldest.done.done():
                oldest.done.set_result(None)  # whoever waits stops waiting (never a CancelledError in a hook)
        handover = _Handover(call_id, asyncio.get_running_loop().create_future(), by_answer)
        self._handovers[call_id] = handover
        return handover

    async def async_post_call_success_hook(self, data: dict[str, Any], user_api_key_dict: Any, response: Any) -> Any:
        """Record a non-streamed answer before it leaves, from the answer itself.

        LiteLLM logs a call's success in a background worker, before or (1.109 and later) after this hook;
        recording here puts neither its logging on the answer's path nor the answer before its record:
        with Redis a 200 means the record is in the journal. The success event that follows finds the
        record handed over and does nothing. An answer this cannot read (not a chat completion) is
        recorded by its success event, which the answer waits for (bounded) when LiteLLM logs first.
        """
        context = adapter.stash_of_request(data)
        if context is None:
            return None  # not a call of ours
        call_id = context.call_id or data.get("litellm_call_id")
        if not isinstance(call_id, str):
            return None
        handover = self._handovers.get(call_id)
        if handover is None:
            try:
                event = adapter.answer_event(data, response, context)
            except Exception:
                _log.exception("litellm-jobs: could not read the answer of call %s", call_id)
                event = None
            if event is not None:
                handover = self._new_handover(call_id, by_answer=True)
                try:
                    await self._hand_over(event)
                finally:
                    if not handover.done.done():
                        handover.done.set_result(None)
                return None
            if self._journal is None or adapter.success_logging_deferred(data):
                return None  # nothing to wait for (in process), or its success event comes after this hook
            handover = self._new_handover(call_id, by_answer=False)
        elif handover.by_answer:
            return None
        # its success event records it: with Redis, the answer waits (bounded) until it is in the journal; the
        # handover stays in the map meanwhile, so that the event finds it and resolves it
        try:
            if self._journal is None or handover.done.done() or self.settings.durable_ack_timeout_s <= 0:
                return None
            async with asyncio.timeout(self.settings.durable_ack_timeout_s):
                await asyncio.shield(handover.done)
        except TimeoutError:
            _log.warning("litellm-jobs: call %s answered before its record was journaled", call_id)
        finally:
            self._handovers.pop(call_id, None)
        return None

    async def async_post_call_failure_hook(
        self,
        request_data: dict[str, Any],
        original_exception: Exception,
        user_api_key_dict: Any,
        traceback_str: str | None = None,
    ) -> Any:
        """The request failed for good (after fallbacks): a single-call job fails, its hold released."""
        context = adapter.stash_of_request(request_data)
        if context is None:
            return None  # rejected before admission (by us or by LiteLLM's auth): nothing was held
        call_id = context.call_id or request_data.get("litellm_call_id")
        if isinstance(call_id, str):
            self._handovers.pop(call_id, None)
        if context.single_call and context.job_key is not None:
            try:
                await (await self.credits()).close_job(
                    context.job_key[0], context.job_key[1], JobStatus.FAILED, single_call=True, via_writer=True
                )
            except JobsError as exc:
                _log.warning("litellm-jobs: could not fail job %s: %s", context.job_key[1], exc.message)
        return None

    async def async_post_call_response_headers_hook(
        self,
        data: dict[str, Any],
        user_api_key_dict: Any,
        response: Any,
        request_headers: dict[str, str] | None = None,
        litellm_call_info: dict[str, Any] | None = None,
    ) -> dict[str, str] | None:
        context = adapter.stash_of_request(data)
        if context is None or context.job_id is None:
            return None
        status = "in_progress"
        if context.single_call:
            status = "completed" if response is not None else "failed"
        headers = {"x-job-id": context.job_id, "x-job-type": context.job_type or "", "x-job-status": status}
        if context.call_id is not None:
            headers["x-job-call-id"] = context.call_id  # the record's id, when the client chose LiteLLM's
        if context.credits_remaining is not None:
            headers["x-credits-remaining"] = context.credits_remaining
        return headers


@dataclasses.dataclass(slots=True)
class _Handover:
    """One non-streamed call's success record, handed over by its answer or by its success event."""

    call_id: str
    done: asyncio.Future[None]
    by_answer: bool


def _resolve(future: asyncio.Future[CallEvent], event: CallEvent) -> None:
    if not future.done():
        future.set_result(event)


plugin = JobsPlugin()


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


def _show_our_log_lines() -> None:
    """Print this package's INFO lines (ready, shutdown) on stderr unless logging is configured already."""
    if _log.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    _log.addHandler(handler)
    _log.setLevel(logging.INFO)
    _log.propagate = False


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


def _inside_running_proxy() -> bool:
    if "litellm.proxy.proxy_server" not in sys.modules:
        return False
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


if _inside_running_proxy():
    plugin.attach_to_proxy()
