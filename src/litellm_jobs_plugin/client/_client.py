"""The clients: :class:`JobsClient` (async) and :class:`SyncJobsClient`, twins in the style of httpx's
``AsyncClient`` and ``Client``. Both do only the I/O; what each operation sends and how its answer is
read is in ``_requests.py``, the retry policy in ``_errors.py``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import Any, TypeVar

import httpx
import openai
from httpx_sse import aconnect_sse, connect_sse

from . import _requests as ops
from ._errors import aretry, retry, route_retries
from ._job import JobRun, SyncJobRun
from ._models import StreamEvent

__all__ = ["JobsClient", "SaasLiteLLMClient", "SyncJobsClient"]

T = TypeVar("T")

DEFAULT_TIMEOUT = ops.DEFAULT_TIMEOUT
DEFAULT_MAX_RETRIES = ops.DEFAULT_MAX_RETRIES


class JobsClient(ops.ClientBase[httpx.AsyncClient, openai.AsyncOpenAI]):
    """Jobs, credits and calls through a LiteLLM proxy running the jobs plugin (async).

    Example::

        async with JobsClient("http://127.0.0.1:4000", "sk-my-team-key") as client:
            async with client.job("document_analysis") as job:   # completes on exit, fails on exception
                r = await job.chat(model="ChatAgent", messages=[{"role": "user", "content": "Hi"}])
                async for delta in job.chat_stream(model="ChatAgent", messages=[...]):
                    print(delta, end="")
            print(job.costs.credits_remaining)

    :class:`SyncJobsClient` is its synchronous twin (the same methods, parameters, models, errors
    and retries, without ``await``), as httpx's ``Client`` is to ``AsyncClient``. ``JobsClient``
    keeps its name, async, for the code written against it.

    Parameters
    ----------
    base_url:
        The proxy, e.g. ``http://127.0.0.1:4000``.
    api_key:
        A LiteLLM key; its team pays for the jobs.
    team_id:
        Sent with every request. A team key may only name its own team; the proxy admin's key
        names the team it acts for.
    default_model:
        The model group of calls that name none.
    timeout, max_retries:
        Per request. Only requests that cannot cost or charge twice are retried: reads, creating a
        job under the id the client chose, completing, grants with their idempotency key, and any
        call that never reached an upstream (no connection, or the plugin's store still starting).
    http_client:
        An ``httpx.AsyncClient`` to use (and not close); tests pass one with a custom transport.
    """

    _http_class = httpx.AsyncClient
    _sdk_class = openai.AsyncOpenAI

    async def __aenter__(self) -> JobsClient:
        self._open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._state = ops.State.CLOSED
        if self._owns_http:
            await self._http.aclose()

    async def _send(self, call: ops.RouteCall[T]) -> T:
        args = self._http_args(call)
        response = await aretry(
            lambda: self._http.request(**args), route_retries(self.max_retries, idempotent=call.idempotent)
        )
        return call.answer(response)

    async def _events(self, stream: ops.EventStream) -> AsyncIterator[StreamEvent]:
        async with aconnect_sse(self._http, **self._http_args(stream)) as source:
            if source.response.status_code >= 400:
                await source.response.aread()
                raise ops.stream_refused(source.response)
            async for sse in source.aiter_sse():
                if (event := ops.stream_event(sse.data)) is None:
                    return
                yield event

    def _job(self, spec: ops.JobSpec) -> JobRun:
        return JobRun(self, spec)

    create_job = ops.operation(ops.create_job, _send)
    llm_call = ops.operation(ops.llm_call, _send)
    llm_call_stream = ops.operation(ops.llm_call_stream, _events)
    create_and_call = ops.operation(ops.create_and_call, _send)
    create_and_call_stream = ops.operation(ops.create_and_call_stream, _events)
    structured_call = ops.operation(ops.structured_call, _send)
    complete_job = ops.operation(ops.complete_job, _send)
    get_job = ops.operation(ops.get_job, _send)
    list_jobs = ops.operation(ops.list_jobs, _send)
    get_calls = ops.operation(ops.get_calls, _send)
    get_costs = ops.operation(ops.get_costs, _send)
    get_team = ops.operation(ops.get_team, _send)
    grant_credits = ops.operation(ops.grant_credits, _send)
    job = ops.operation(ops.job, _job)


class SyncJobsClient(ops.ClientBase[httpx.Client, openai.OpenAI]):
    """The synchronous twin of :class:`JobsClient`: the same methods, parameters, models, errors and
    retries, without ``await`` (as httpx's ``Client`` is to ``AsyncClient``).

    Example::

        with SyncJobsClient("http://127.0.0.1:4000", "sk-my-team-key") as client:
            with client.job("document_analysis") as job:   # completes on exit, fails on exception
                r = job.chat(model="ChatAgent", messages=[{"role": "user", "content": "Hi"}])
                for delta in job.chat_stream(model="ChatAgent", messages=[...]):
                    print(delta, end="")
            print(job.costs.credits_remaining)

    Parameters are :class:`JobsClient`'s; ``http_client`` is an ``httpx.Client`` here. Its
    ``openai`` is the SDK's sync ``OpenAI`` client, on the same connection pool. Use one client
    per thread or share it: httpx's ``Client`` is thread-safe.
    """

    _http_class = httpx.Client
    _sdk_class = openai.OpenAI

    def __enter__(self) -> SyncJobsClient:
        self._open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._state = ops.State.CLOSED
        if self._owns_http:
            self._http.close()

    def _send(self, call: ops.RouteCall[T]) -> T:
        args = self._http_args(call)
        response = retry(
            lambda: self._http.request(**args), route_retries(self.max_retries, idempotent=call.idempotent)
        )
        return call.answer(response)

    def _events(self, stream: ops.EventStream) -> Iterator[StreamEvent]:
        with connect_sse(self._http, **self._http_args(stream)) as source:
            if source.response.status_code >= 400:
                source.response.read()
                raise ops.stream_refused(source.response)
            for sse in source.iter_sse():
                if (event := ops.stream_event(sse.data)) is None:
                    return
                yield event

    def _job(self, spec: ops.JobSpec) -> SyncJobRun:
        return SyncJobRun(self, spec)

    create_job = ops.operation(ops.create_job, _send)
    llm_call = ops.operation(ops.llm_call, _send)
    llm_call_stream = ops.operation(ops.llm_call_stream, _events)
    create_and_call = ops.operation(ops.create_and_call, _send)
    create_and_call_stream = ops.operation(ops.create_and_call_stream, _events)
    structured_call = ops.operation(ops.structured_call, _send)
    complete_job = ops.operation(ops.complete_job, _send)
    get_job = ops.operation(ops.get_job, _send)
    list_jobs = ops.operation(ops.list_jobs, _send)
    get_calls = ops.operation(ops.get_calls, _send)
    get_costs = ops.operation(ops.get_costs, _send)
    get_team = ops.operation(ops.get_team, _send)
    grant_credits = ops.operation(ops.grant_credits, _send)
    job = ops.operation(ops.job, _job)


class SaasLiteLLMClient(JobsClient):
    """The seed system's client, kept for code written against it.

    ``SaasLiteLLMClient(base_url=..., team_id=..., virtual_key=...)`` — only the base URL (the
    proxy) and the key change; its methods (``create_job``, ``llm_call``, ``complete_job``,
    ``structured_call``, ...) are :class:`JobsClient`'s.
    """

    def __init__(
        self,
        base_url: str,
        team_id: str | None = None,
        virtual_key: str | None = None,
        *,
        api_key: str | None = None,
        **kwargs: Any,
    ) -> None:
        key = virtual_key or api_key
        if key is None:
            raise ValueError("Pass virtual_key (a LiteLLM key of the team).")
        super().__init__(base_url, key, team_id=team_id, **kwargs)
