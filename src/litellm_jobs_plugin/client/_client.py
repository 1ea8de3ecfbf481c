"""The async client: the plugin's routes over httpx, and the seed system's methods."""

from __future__ import annotations

import asyncio
import enum
import json
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from decimal import Decimal
from types import TracebackType
from typing import Any, Literal, TypeVar

import httpx
import openai
import pydantic
from httpx_sse import aconnect_sse

from ._errors import backoff, error_from
from ._job import JobRun, response_format_of, validated
from ._models import (
    Call,
    CompletedJob,
    CreatedJob,
    Job,
    JobCostBreakdown,
    JobPage,
    LLMCallResponse,
    StreamEvent,
    TeamBalance,
)

__all__ = ["JobsClient", "SaasLiteLLMClient"]

M = TypeVar("M", bound=pydantic.BaseModel)

DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
DEFAULT_MAX_RETRIES = 2
#: Statuses worth retrying for idempotent requests: the proxy or its store was briefly unavailable.
_RETRY_STATUSES = frozenset({429, 502, 503, 504})


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

    def _call_body(
        self, messages: Iterable[Mapping[str, Any]], model: str | None, purpose: str | None, params: Mapping[str, Any]
    ) -> dict[str, Any]:
        return self._body(
            {**params, "messages": list(messages), "model": model or self.default_model, "purpose": purpose}
        )

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
                    await asyncio.sleep(backoff(attempt, None))
                    continue
                raise
            if response.status_code in _RETRY_STATUSES and idempotent and attempt < self.max_retries:
                attempt += 1
                await asyncio.sleep(backoff(attempt, response.headers.get("retry-after")))
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
        body = self._call_body(messages, model, purpose, params)
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
        body = self._call_body(messages, model, purpose, params)
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
            job_id, messages, model=model, purpose=purpose, response_format=response_format_of(response_model), **params
        )
        return validated(response_model, response.response.content)

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


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


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
