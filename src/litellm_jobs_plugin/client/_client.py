"""The async client: jobs as context managers on the OpenAI SDK, and the seed system's methods."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from decimal import Decimal
from types import TracebackType
from typing import Any, Literal, TypeVar

import httpx
import openai
import pydantic
from httpx_sse import aconnect_sse
from openai import AsyncStream
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.completion_usage import CompletionUsage

from ..errors import ERRORS_BY_TYPE, InvalidStructuredOutput, JobsError, StoreUnavailable
from ._models import (
    Call,
    CompletedJob,
    CreatedJob,
    Job,
    JobCostBreakdown,
    JobCosts,
    JobPage,
    LLMCallResponse,
    StreamEvent,
    TeamBalance,
)

M = TypeVar("M", bound=pydantic.BaseModel)
T = TypeVar("T")

DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
DEFAULT_MAX_RETRIES = 2
#: Statuses worth retrying for idempotent requests: the proxy or its store was briefly unavailable.
_RETRY_STATUSES = frozenset({429, 502, 503, 504})


class APIError(JobsError):
    """The proxy answered with an error that is not one of the jobs plugin's (LiteLLM's own, a provider's)."""

    type = "api_error"
    status = 500

    def __init__(self, message: str | None = None, *, param: str | None = None, error_type: str | None = None) -> None:
        super().__init__(message, param=param)
        self.error_type = error_type


def error_from(status_code: int, body: object) -> JobsError:
    """The typed exception for an error answer (OpenAI's error JSON)."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = body if isinstance(body, dict) and "type" in body else {}
    kind = error.get("type")
    message = str(error.get("message") or f"HTTP {status_code}")
    param = error.get("param") if isinstance(error.get("param"), str) else None
    cls = ERRORS_BY_TYPE.get(kind) if isinstance(kind, str) else None
    exc = (
        cls(message, param=param)
        if cls is not None
        else APIError(message, param=param, error_type=kind if isinstance(kind, str) else None)
    )
    exc.status_code = status_code
    exc.body = body
    return exc


@contextlib.contextmanager
def _sdk_errors() -> Iterator[None]:
    """OpenAI SDK errors → our typed exceptions (a 402 from the proxy is InsufficientCredits)."""
    try:
        yield
    except openai.APIStatusError as exc:
        raise error_from(exc.status_code, {"error": exc.body} if isinstance(exc.body, dict) else None) from exc
    except openai.APIConnectionError:
        raise  # transport trouble: the caller decides
    except openai.APIError as exc:  # an error event inside a stream
        body = exc.body if isinstance(exc.body, dict) else {"message": exc.message}
        raise error_from(502, {"error": body}) from exc


def _never_reached_the_proxy(exc: BaseException) -> bool:
    """A call that failed like this made no upstream call, so sending it again cannot cost twice:
    the connection was never made, or the plugin refused it before routing (store starting)."""
    if isinstance(exc, openai.APIConnectionError) and not isinstance(exc, openai.APITimeoutError):
        return isinstance(exc.__cause__, httpx.ConnectError | httpx.ConnectTimeout)
    return isinstance(exc, StoreUnavailable)


async def _with_retries(max_retries: int, send: Callable[[], Awaitable[T]]) -> T:
    attempt = 0
    while True:
        try:
            with _sdk_errors():
                return await send()
        except Exception as exc:
            if attempt >= max_retries or not _never_reached_the_proxy(exc):
                raise
            attempt += 1
            await asyncio.sleep(_backoff(attempt, None))


class _State(enum.Enum):
    UNOPENED = 1
    OPENED = 2
    CLOSED = 3


class JobsClient:
    """Jobs, credits and calls through a LiteLLM proxy running the jobs plugin.

    Example::

        async with JobsClient("http://127.0.0.1:4000", "sk-my-team-key") as client:
            async with client.job("document_analysis") as job:   # completes on exit, fails on exception
                r = await job.chat(model="ChatAgent", messages=[{"role": "user", "content": "Hi"}])
                async for delta in job.chat_stream(model="ChatAgent", messages=[...]):
                    print(delta, end="")
            print(job.costs.credits_remaining)

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

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        team_id: str | None = None,
        default_model: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.team_id = team_id
        self.default_model = default_model
        self.max_retries = max_retries
        self._timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(timeout=self._timeout)
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._openai = openai.AsyncOpenAI(
            base_url=f"{self.base_url}/v1",
            api_key=api_key,
            timeout=self._timeout,
            # The SDK would retry timeouts and 5xx answers: each retry a second upstream call. Our
            # own retries (_with_retries) resend only what never reached an upstream.
            max_retries=0,
            http_client=self._http,
        )
        self._state = _State.UNOPENED

    async def __aenter__(self) -> JobsClient:
        if self._state is _State.CLOSED:
            raise RuntimeError("A JobsClient cannot be reopened once closed.")
        self._state = _State.OPENED
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._state = _State.CLOSED
        if self._owns_http:
            await self._http.aclose()

    @property
    def openai(self) -> openai.AsyncOpenAI:
        """The OpenAI SDK client pointed at the proxy (same key, same connection pool)."""
        return self._openai

    # -- plumbing ---------------------------------------------------------------------------------

    def _body(self, values: Mapping[str, Any]) -> dict[str, Any]:
        body = {k: v for k, v in values.items() if v is not None}
        if self.team_id is not None:
            body.setdefault("team_id", self.team_id)
        return json.loads(json.dumps(body, default=str))  # type: ignore[no-any-return]  # Decimals as strings

    def _query(self, values: Mapping[str, Any]) -> dict[str, Any]:
        query = {k: v for k, v in values.items() if v is not None}
        if self.team_id is not None:
            query.setdefault("team_id", self.team_id)
        return query

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        idempotent: bool,
    ) -> Any:
        if self._state is _State.CLOSED:
            raise RuntimeError("This JobsClient is closed.")
        attempt = 0
        while True:
            try:
                response = await self._http.request(
                    method,
                    f"{self.base_url}{path}",
                    json=json_body,
                    params=params,
                    headers=self._headers,
                    timeout=self._timeout,
                )
            except httpx.TransportError as exc:
                # A request that never reached the proxy is safe to send again; one that may have
                # reached it is sent again only if it is idempotent.
                never_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                if attempt < self.max_retries and (idempotent or never_sent):
                    attempt += 1
                    await asyncio.sleep(_backoff(attempt, None))
                    continue
                raise
            if response.status_code in _RETRY_STATUSES and idempotent and attempt < self.max_retries:
                attempt += 1
                await asyncio.sleep(_backoff(attempt, response.headers.get("retry-after")))
                continue
            body = _json_or_none(response)
            if response.status_code >= 400:
                raise error_from(response.status_code, body)
            return body

    # -- seed-compatible methods ------------------------------------------------------------------

    async def create_job(
        self,
        job_type: str,
        *,
        job_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        max_calls: int | None = None,
        max_cost_usd: Decimal | float | None = None,
        user_id: str | None = None,
    ) -> CreatedJob:
        """Create a job (its price is held now, charged only if it completes).

        The job id is chosen here when not given, so a retried creation is the same job.
        """
        body = self._body(
            {
                "job_type": job_type,
                "job_id": job_id or f"job-{uuid.uuid4().hex}",
                "metadata": metadata,
                "max_calls": max_calls,
                "max_cost_usd": max_cost_usd,
                "user_id": user_id,
            }
        )
        return CreatedJob.model_validate(
            await self._request("POST", "/api/jobs/create", json_body=body, idempotent=True)
        )

    async def llm_call(
        self,
        job_id: str,
        messages: Iterable[Mapping[str, Any]],
        *,
        model: str | None = None,
        purpose: str | None = None,
        **params: Any,
    ) -> LLMCallResponse:
        """One call in the job, through ``POST /api/jobs/{job_id}/llm-call`` (not retried once sent)."""
        body = self._body(
            {**params, "messages": list(messages), "model": model or self.default_model, "purpose": purpose}
        )
        raw = await self._request("POST", f"/api/jobs/{job_id}/llm-call", json_body=body, idempotent=False)
        return LLMCallResponse.model_validate(raw)

    async def llm_call_stream(
        self,
        job_id: str,
        messages: Iterable[Mapping[str, Any]],
        *,
        model: str | None = None,
        purpose: str | None = None,
        **params: Any,
    ) -> AsyncIterator[StreamEvent]:
        """The events of ``POST /api/jobs/{job_id}/llm-call-stream``; the last has usage and cost."""
        body = self._body(
            {**params, "messages": list(messages), "model": model or self.default_model, "purpose": purpose}
        )
        async for event in self._sse(f"/api/jobs/{job_id}/llm-call-stream", body):
            yield event

    def _create_and_call_body(
        self,
        job_type: str,
        messages: Iterable[Mapping[str, Any]],
        *,
        model: str | None,
        job_id: str | None,
        metadata: Mapping[str, Any] | None,
        purpose: str | None,
        params: Mapping[str, Any],
    ) -> dict[str, Any]:
        if "stream" in params:
            raise ValueError("Use create_and_call_stream() for a streamed create-and-call.")
        return self._body(
            {
                **params,
                "job_type": job_type,
                "job_id": job_id,
                "metadata": metadata,
                "messages": list(messages),
                "model": model or self.default_model,
                "purpose": purpose,
            }
        )

    async def create_and_call(
        self,
        job_type: str,
        messages: Iterable[Mapping[str, Any]],
        *,
        model: str | None = None,
        job_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        purpose: str | None = None,
        **params: Any,
    ) -> LLMCallResponse:
        """Create a job, make its one call and close it, in one request (``status`` and ``costs`` set)."""
        body = self._create_and_call_body(
            job_type, messages, model=model, job_id=job_id, metadata=metadata, purpose=purpose, params=params
        )
        raw = await self._request("POST", "/api/jobs/create-and-call", json_body=body, idempotent=False)
        return LLMCallResponse.model_validate(raw)

    async def create_and_call_stream(
        self,
        job_type: str,
        messages: Iterable[Mapping[str, Any]],
        *,
        model: str | None = None,
        job_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        purpose: str | None = None,
        **params: Any,
    ) -> AsyncIterator[StreamEvent]:
        """create-and-call as a stream; the last event also has the closed job's ``status`` and ``costs``."""
        body = self._create_and_call_body(
            job_type, messages, model=model, job_id=job_id, metadata=metadata, purpose=purpose, params=params
        )
        async for event in self._sse("/api/jobs/create-and-call", {**body, "stream": True}):
            yield event

    async def structured_call(
        self,
        job_id: str,
        messages: Iterable[Mapping[str, Any]],
        response_model: type[M],
        *,
        model: str | None = None,
        purpose: str | None = None,
        **params: Any,
    ) -> M:
        """A call whose answer is an instance of ``response_model`` (JSON-schema response_format)."""
        response = await self.llm_call(
            job_id, messages, model=model, purpose=purpose, response_format=_response_format(response_model), **params
        )
        return _validated(response_model, response.response.content)

    async def complete_job(
        self,
        job_id: str,
        status: Literal["completed", "failed"] = "completed",
        *,
        result: Any = None,
        metadata: Mapping[str, Any] | None = None,
        error_message: str | None = None,
    ) -> CompletedJob:
        """Close a job: ``completed`` charges its price, ``failed`` releases it. Idempotent."""
        body = self._body({"status": status, "result": result, "metadata": metadata, "error_message": error_message})
        raw = await self._request("POST", f"/api/jobs/{job_id}/complete", json_body=body, idempotent=True)
        return CompletedJob.model_validate(raw)

    async def get_job(self, job_id: str) -> Job:
        return Job.model_validate(
            await self._request("GET", f"/api/jobs/{job_id}", params=self._query({}), idempotent=True)
        )

    async def list_jobs(
        self,
        *,
        status: str | None = None,
        job_type: str | None = None,
        since: str | None = None,
        until: str | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> JobPage:
        query = self._query(
            {"status": status, "job_type": job_type, "since": since, "until": until, "cursor": cursor, "limit": limit}
        )
        return JobPage.model_validate(await self._request("GET", "/api/jobs", params=query, idempotent=True))

    async def get_calls(self, job_id: str) -> list[Call]:
        raw = await self._request("GET", f"/api/jobs/{job_id}/calls", params=self._query({}), idempotent=True)
        return [Call.model_validate(c) for c in raw["calls"]]

    async def get_costs(self, job_id: str) -> JobCostBreakdown:
        raw = await self._request("GET", f"/api/jobs/{job_id}/costs", params=self._query({}), idempotent=True)
        return JobCostBreakdown.model_validate(raw)

    async def get_team(self, team_id: str | None = None) -> TeamBalance:
        team = team_id or self.team_id
        if team is None:
            raise ValueError("get_team needs a team_id (or a client created with team_id=...).")
        return TeamBalance.model_validate(await self._request("GET", f"/api/teams/{team}", idempotent=True))

    async def grant_credits(
        self,
        team_id: str,
        amount: Decimal | int | str,
        *,
        idempotency_key: str,
        kind: Literal["grant", "adjust"] = "grant",
        note: str | None = None,
    ) -> TeamBalance:
        """Proxy admin only: grant (or, with ``kind="adjust"``, take back) credits, once per key."""
        body = {"amount": str(amount), "idempotency_key": idempotency_key, "kind": kind, "note": note}
        raw = await self._request(
            "POST",
            f"/api/teams/{team_id}/credits",
            json_body={k: v for k, v in body.items() if v is not None},
            idempotent=True,
        )
        return TeamBalance.model_validate(raw)

    async def _sse(self, path: str, body: Mapping[str, Any]) -> AsyncIterator[StreamEvent]:
        if self._state is _State.CLOSED:
            raise RuntimeError("This JobsClient is closed.")
        async with aconnect_sse(
            self._http, "POST", f"{self.base_url}{path}", json=body, headers=dict(self._headers), timeout=self._timeout
        ) as source:
            if source.response.status_code >= 400:
                await source.response.aread()
                raise error_from(source.response.status_code, _json_or_none(source.response))
            async for sse in source.aiter_sse():
                if sse.data.strip() == "[DONE]":
                    return
                data = json.loads(sse.data)
                if isinstance(data, dict) and "error" in data and "choices" not in data:
                    raise error_from(502, data)
                yield StreamEvent.model_validate(data)

    # -- jobs as context managers -------------------------------------------------------------------

    def job(
        self,
        job_type: str,
        *,
        job_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        max_calls: int | None = None,
        max_cost_usd: Decimal | float | None = None,
    ) -> JobRun:
        """A job for an ``async with`` block: created on entry (402 early if the team has no
        credits), completed on normal exit, failed (and not charged) if the block raises."""
        return JobRun(self, job_type, job_id=job_id, metadata=metadata, max_calls=max_calls, max_cost_usd=max_cost_usd)


class JobRun:
    """One job, used as ``async with client.job("...") as job:``; see :meth:`JobsClient.job`."""

    def __init__(
        self,
        client: JobsClient,
        job_type: str,
        *,
        job_id: str | None,
        metadata: Mapping[str, Any] | None,
        max_calls: int | None,
        max_cost_usd: Decimal | float | None,
    ) -> None:
        self._client = client
        self.job_type = job_type
        self.job_id = job_id or f"job-{uuid.uuid4().hex}"
        self._create = {"metadata": metadata, "max_calls": max_calls, "max_cost_usd": max_cost_usd}
        self.created: CreatedJob | None = None
        self.result: CompletedJob | None = None

    async def __aenter__(self) -> JobRun:
        self.created = await self._client.create_job(self.job_type, job_id=self.job_id, **self._create)  # type: ignore[arg-type]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.result is not None:
            return  # closed inside the block
        if exc is None:
            await self.complete()
        else:
            # Fail the job (its hold released, nothing charged) and let the exception go on.
            await self.fail(f"{type(exc).__name__}: {exc}"[:4096])

    async def complete(self, *, result: Any = None, metadata: Mapping[str, Any] | None = None) -> CompletedJob:
        self.result = await self._client.complete_job(self.job_id, "completed", result=result, metadata=metadata)
        return self.result

    async def fail(self, error_message: str | None = None) -> CompletedJob:
        self.result = await self._client.complete_job(self.job_id, "failed", error_message=error_message)
        return self.result

    @property
    def costs(self) -> JobCosts:
        """The job's totals and the team's remaining credits, once the job is closed."""
        if self.result is None:
            raise RuntimeError("The job is still open: costs are known once it is completed or failed.")
        return self.result.costs

    def _tag(self, purpose: str | None, extra_body: Mapping[str, Any] | None) -> dict[str, Any]:
        body = dict(extra_body or {})
        metadata = dict(body.get("metadata") or {})
        metadata.update(job_id=self.job_id, job_type=self.job_type)
        if purpose is not None:
            metadata["purpose"] = purpose
        if self._client.team_id is not None:
            metadata["team_id"] = self._client.team_id
        body["metadata"] = metadata
        return body

    def _model(self, model: str | None) -> str:
        chosen = model or self._client.default_model
        if chosen is None:
            raise ValueError("Name a model (or create the client with default_model=...).")
        return chosen

    async def chat(
        self,
        *,
        messages: Iterable[Mapping[str, Any]],
        model: str | None = None,
        purpose: str | None = None,
        extra_body: Mapping[str, Any] | None = None,
        **params: Any,
    ) -> ChatCompletion:
        """A chat completion in this job, through the OpenAI SDK on the proxy's ``/v1``."""
        create: Any = self._client.openai.chat.completions.create  # free-form params: not the typed overloads
        request = {
            "model": self._model(model),
            "messages": list(messages),
            "extra_body": self._tag(purpose, extra_body),
        }
        completion: ChatCompletion = await _with_retries(self._client.max_retries, lambda: create(**request, **params))
        return completion

    def chat_stream(
        self,
        *,
        messages: Iterable[Mapping[str, Any]],
        model: str | None = None,
        purpose: str | None = None,
        extra_body: Mapping[str, Any] | None = None,
        **params: Any,
    ) -> ChatStream:
        """A streamed chat completion in this job: ``async for delta in job.chat_stream(...)``
        gives the text as it comes; ``usage`` is set at the end."""
        return ChatStream(
            self._client.openai,
            max_retries=self._client.max_retries,
            model=self._model(model),
            messages=list(messages),
            extra_body=self._tag(purpose, extra_body),
            params=params,
        )

    async def structured(
        self,
        response_model: type[M],
        *,
        messages: Iterable[Mapping[str, Any]],
        model: str | None = None,
        purpose: str | None = None,
        extra_body: Mapping[str, Any] | None = None,
        **params: Any,
    ) -> M:
        """A call whose answer is validated into ``response_model``; raises InvalidStructuredOutput."""
        completion = await self.chat(
            messages=messages,
            model=model,
            purpose=purpose,
            extra_body=extra_body,
            response_format=_response_format(response_model),
            **params,
        )
        return _validated(response_model, completion.choices[0].message.content if completion.choices else None)


class ChatStream:
    """The text deltas of one streamed call; ``usage``, ``text`` and ``call_id`` once it has ended.

    Iterate it once (``async for delta in stream``); ``await stream.aclose()`` (or ``async with``)
    ends it early and frees its connection.
    """

    def __init__(
        self,
        sdk: openai.AsyncOpenAI,
        *,
        max_retries: int,
        model: str,
        messages: list[Mapping[str, Any]],
        extra_body: dict[str, Any],
        params: dict[str, Any],
    ) -> None:
        options = dict(params.get("stream_options") or {})
        options["include_usage"] = True
        self._request = {
            **params,
            "model": model,
            "messages": messages,
            "extra_body": extra_body,
            "stream": True,
            "stream_options": options,
        }
        self._sdk = sdk
        self._max_retries = max_retries
        self._stream: AsyncStream[ChatCompletionChunk] | None = None
        self._started = False
        self.usage: CompletionUsage | None = None
        self.call_id: str | None = None
        self.text = ""

    def __aiter__(self) -> AsyncIterator[str]:
        if self._started:
            raise RuntimeError("A ChatStream is iterated once; start another with job.chat_stream(...).")
        self._started = True
        return self._deltas()

    async def __aenter__(self) -> ChatStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._stream is not None:
            await self._stream.close()

    async def _deltas(self) -> AsyncIterator[str]:
        create: Any = self._sdk.chat.completions.create  # free-form params: not the typed overloads
        stream: AsyncStream[ChatCompletionChunk] = await _with_retries(
            self._max_retries, lambda: create(**self._request)
        )
        self._stream = stream
        self.call_id = stream.response.headers.get("x-litellm-call-id")
        parts: list[str] = []
        with _sdk_errors():
            async with stream:
                async for chunk in stream:
                    if chunk.usage is not None:
                        self.usage = chunk.usage
                    for choice in chunk.choices:
                        if choice.delta.content:
                            parts.append(choice.delta.content)
                            yield choice.delta.content
        self.text = "".join(parts)


def _response_format(response_model: type[pydantic.BaseModel]) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": response_model.__name__, "schema": response_model.model_json_schema()},
    }


def _validated(response_model: type[M], content: str | None) -> M:
    if content is None:
        raise InvalidStructuredOutput("The model returned no text for a structured response.")
    try:
        return response_model.model_validate_json(content)
    except pydantic.ValidationError as exc:
        raise InvalidStructuredOutput(
            f"The model's answer is not a valid {response_model.__name__}: {exc.errors()[0].get('msg')}"
        ) from exc


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _backoff(attempt: int, retry_after: str | None) -> float:
    if retry_after is not None:
        with contextlib.suppress(ValueError):
            return min(float(retry_after), 10.0)
    return min(0.25 * 2.0 ** (attempt - 1), 4.0) * (0.5 + random.random() / 2)


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
