"""A job as an ``async with`` block, and its chat calls through the OpenAI SDK."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import openai
import pydantic
from openai import AsyncStream
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.completion_usage import CompletionUsage

from ..errors import InvalidStructuredOutput
from ._errors import sdk_errors, with_retries
from ._models import CompletedJob, CreatedJob, JobCosts

if TYPE_CHECKING:
    from ._client import JobsClient

M = TypeVar("M", bound=pydantic.BaseModel)


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
        completion: ChatCompletion = await with_retries(self._client.max_retries, lambda: create(**request, **params))
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
            response_format=response_format_of(response_model),
            **params,
        )
        return validated(response_model, completion.choices[0].message.content if completion.choices else None)


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
        stream: AsyncStream[ChatCompletionChunk] = await with_retries(
            self._max_retries, lambda: create(**self._request)
        )
        self._stream = stream
        self.call_id = stream.response.headers.get("x-litellm-call-id")
        parts: list[str] = []
        with sdk_errors():
            async with stream:
                async for chunk in stream:
                    if chunk.usage is not None:
                        self.usage = chunk.usage
                    for choice in chunk.choices:
                        if choice.delta.content:
                            parts.append(choice.delta.content)
                            yield choice.delta.content
        self.text = "".join(parts)


def response_format_of(response_model: type[pydantic.BaseModel]) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": response_model.__name__, "schema": response_model.model_json_schema()},
    }


def validated(response_model: type[M], content: str | None) -> M:
    if content is None:
        raise InvalidStructuredOutput("The model returned no text for a structured response.")
    try:
        return response_model.model_validate_json(content)
    except pydantic.ValidationError as exc:
        raise InvalidStructuredOutput(
            f"The model's answer is not a valid {response_model.__name__}: {exc.errors()[0].get('msg')}"
        ) from exc
