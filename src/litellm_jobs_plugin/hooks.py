"""The LiteLLM callback: thin hooks that hand over to the adapter, the job rules and the writer.

LiteLLM loads it with ``litellm_settings: callbacks: ["litellm_jobs_plugin.plugin"]``. Data flows
one way: request → :meth:`JobsPlugin.async_pre_call_hook` (validate, decide, stash) → logging
events → :class:`~litellm_jobs_plugin.writer.Writer` buffer → store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
from decimal import Decimal
from typing import Any

from litellm.integrations.custom_logger import CustomLogger

from . import litellm_adapter as adapter
from .credits import CreditService
from .errors import JobsError, to_proxy_exception
from .jobs import Caller, decide_call
from .metadata import parse_job_tag
from .models import CallEvent, CallStatus, JobStatus
from .runtime import JobsRuntime
from .settings import Settings
from .store.postgres import PostgresStore
from .writer import Writer

_log = logging.getLogger("litellm_jobs_plugin")


class JobsPlugin(CustomLogger):
    """Job tracking for the LiteLLM proxy. One instance per process: :data:`plugin`."""

    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__()
        #: The store, credits, writer and workers: what the routes get (:func:`routes.build_router`).
        self.runtime = JobsRuntime(settings)
        self._attached = False
        #: Non-streamed calls whose success record one side (the answer or LiteLLM's success event) has
        #: handed over or is handing over, until the other side has seen it: each is recorded once.
        self._handovers: dict[str, _Handover] = {}
        self._answered: asyncio.Future[None] | None = None  # the done future of handovers by answer

    # -- the runtime's services, for callers that hold the plugin (tests, scripts, bench/) -------

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    @property
    def writer(self) -> Writer:
        return self.runtime.writer

    async def start(self) -> PostgresStore:
        """Connect and migrate outside the proxy (tests, scripts); idempotent."""
        return await self.runtime.start()

    async def credits(self) -> CreditService:
        return await self.runtime.credits()

    async def aclose(self) -> None:
        await self.runtime.aclose()

    # -- life cycle ---------------------------------------------------------------------------

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

        proxy_server.app.include_router(build_router(self.runtime))
        original_shutdown = proxy_server.proxy_shutdown_event

        # LiteLLM has no shutdown hook for callbacks (checked in its source): wrap its shutdown event so
        # the buffer is flushed before the process exits. Covered by tests/contract.
        async def proxy_shutdown_event(*args: Any, **kwargs: Any) -> None:
            try:
                await self.aclose()
            finally:
                await original_shutdown(*args, **kwargs)

        proxy_server.proxy_shutdown_event = proxy_shutdown_event
        self.runtime.start_in_background()

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
        if self.runtime.journal is not None:
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
        if status is CallStatus.SUCCESS and self.runtime.awaited_calls:
            awaited = self.runtime.awaited_calls.get(str(kwargs.get("litellm_call_id")))
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
        if by_answer:
            # its success event only needs to find it: nothing ever waits on it, so all share one done future
            done = self._answered
            if done is None:
                done = self._answered = asyncio.get_running_loop().create_future()
                done.set_result(None)
        else:
            done = asyncio.get_running_loop().create_future()
        handover = _Handover(call_id, done, by_answer)
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
                self._new_handover(call_id, by_answer=True)
                await self._hand_over(event)
                return None
            if self.runtime.journal is None or adapter.success_logging_deferred(data):
                return None  # nothing to wait for (in process), or its success event comes after this hook
            handover = self._new_handover(call_id, by_answer=False)
        elif handover.by_answer:
            return None
        # its success event records it: with Redis, the answer waits (bounded) until it is in the journal; the
        # handover stays in the map meanwhile, so that the event finds it and resolves it
        try:
            if self.runtime.journal is None or handover.done.done() or self.settings.durable_ack_timeout_s <= 0:
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


def _show_our_log_lines() -> None:
    """Print this package's INFO lines (ready, shutdown) on stderr unless logging is configured already."""
    if _log.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    _log.addHandler(handler)
    _log.setLevel(logging.INFO)
    _log.propagate = False


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
