"""A job as an ``async with`` (or ``with``) block, and its chat calls through the OpenAI SDK.

:class:`JobRun` and :class:`ChatStream` are the async client's, :class:`SyncJobRun` and
:class:`SyncChatStream` the sync client's. What a job's calls send and how their answers are read is
written once, in :class:`JobRunBase` and the operations after it; the twins only do the I/O.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import pydantic
from openai import AsyncOpenAI, AsyncStream, OpenAI, Stream
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.completion_usage import CompletionUsage

from . import _requests as ops
from ._errors import aretry, retry, sdk_errors, sdk_retries
from ._models import CompletedJob, CreatedJob, JobCosts

if TYPE_CHECKING:
    from ._client import JobsClient, SyncJobsClient

T = TypeVar("T")
C = TypeVar("C", bound="ops.ClientBase[Any, Any]")
M = TypeVar("M", bound=pydantic.BaseModel)


class JobRunBase(Generic[C]):
    """What :class:`JobRun` and :class:`SyncJobRun` share: the job's ids and how its calls are tagged."""

    def __init__(self, client: C, spec: ops.JobSpec) -> None:
        self._client = client
        self._spec = spec
        self.job_type = spec.job_type
        self.job_id = spec.job_id
        self.created: CreatedJob | None = None
        self.result: CompletedJob | None = None

    @property
    def costs(self) -> JobCosts:
        """The job's totals and the team's remaining credits, once the job is closed."""
        if self.result is None:
            raise RuntimeError("The job is still open: costs are known once it is completed or failed.")
        return self.result.costs

    def _create_job(self) -> ops.RouteCall[CreatedJob]:
        spec = self._spec
        return ops.create_job(
            self._client,
            spec.job_type,
            job_id=spec.job_id,
            metadata=spec.metadata,
            max_calls=spec.max_calls,
            max_cost_usd=spec.max_cost_usd,
        )

    def _close(self, exc: BaseException | None) -> ops.RouteCall[CompletedJob] | None:
        """What leaving the block sends: nothing if the job was closed inside it, else complete it, or
        fail it (its hold released, nothing charged) if the block raised."""
        if self.result is not None:
            return None
        if exc is None:
            return self._complete()
        return self._fail(f"{type(exc).__name__}: {exc}"[:4096])

    def _complete(
        self, *, result: Any = None, metadata: Mapping[str, Any] | None = None
    ) -> ops.RouteCall[CompletedJob]:
        return ops.complete_job(self._client, self.job_id, "completed", result=result, metadata=metadata)

    def _fail(self, error_message: str | None = None) -> ops.RouteCall[CompletedJob]:
        return ops.complete_job(self._client, self.job_id, "failed", error_message=error_message)

    def _closed(self, result: CompletedJob) -> CompletedJob:
        self.result = result
        return result

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


@dataclass(frozen=True)
class ChatCall(Generic[T]):
    """A chat completion through the OpenAI SDK (keyword arguments of ``chat.completions.create``)."""

    request: dict[str, Any]
    parse: Callable[[ChatCompletion], T]


def _chat_request(
    run: JobRunBase[Any],
    /,
    messages: Iterable[Mapping[str, Any]],
    model: str | None,
    purpose: str | None,
    extra_body: Mapping[str, Any] | None,
    params: Mapping[str, Any],
) -> dict[str, Any]:
    return {
        **params,
        "model": run._model(model),
        "messages": list(messages),
        "extra_body": run._tag(purpose, extra_body),
    }


def _completion(completion: ChatCompletion) -> ChatCompletion:
    return completion


def chat(
    run: JobRunBase[Any],
    /,
    *,
    messages: Iterable[Mapping[str, Any]],
    model: str | None = None,
    purpose: str | None = None,
    extra_body: Mapping[str, Any] | None = None,
    **params: Any,
) -> ChatCall[ChatCompletion]:
    """A chat completion in this job, through the OpenAI SDK on the proxy's ``/v1``."""
    return ChatCall(_chat_request(run, messages, model, purpose, extra_body, params), _completion)


def structured(
    run: JobRunBase[Any],
    /,
    response_model: type[M],
    *,
    messages: Iterable[Mapping[str, Any]],
    model: str | None = None,
    purpose: str | None = None,
    extra_body: Mapping[str, Any] | None = None,
    **params: Any,
) -> ChatCall[M]:
    """A call whose answer is validated into ``response_model``; raises InvalidStructuredOutput."""
    params = {**params, "response_format": ops.response_format_of(response_model)}

    def parse(completion: ChatCompletion) -> M:
        return ops.validated(response_model, completion.choices[0].message.content if completion.choices else None)

    return ChatCall(_chat_request(run, messages, model, purpose, extra_body, params), parse)


def chat_stream(
    run: JobRunBase[Any],
    /,
    *,
    messages: Iterable[Mapping[str, Any]],
    model: str | None = None,
    purpose: str | None = None,
    extra_body: Mapping[str, Any] | None = None,
    **params: Any,
) -> dict[str, Any]:
    """A streamed chat completion in this job: iterate it for the text as it comes; ``usage`` is set
    at the end (the request asks for it)."""
    options = dict(params.get("stream_options") or {})
    options["include_usage"] = True
    request = chat(run, messages=messages, model=model, purpose=purpose, extra_body=extra_body, **params).request
    return {**request, "stream": True, "stream_options": options}


class JobRun(JobRunBase["JobsClient"]):
    """One job, used as ``async with client.job("...") as job:``; see :meth:`JobsClient.job`.

    Created on entry, completed on normal exit, failed (and not charged) if the block raises;
    ``complete()`` or ``fail()`` inside the block closes it there instead.
    """

    _client: JobsClient

    async def __aenter__(self) -> JobRun:
        self.created = await self._client._send(self._create_job())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if (close := self._close(exc)) is not None:
            await self._finish(close)

    async def _finish(self, call: ops.RouteCall[CompletedJob]) -> CompletedJob:
        return self._closed(await self._client._send(call))

    async def _chat(self, call: ChatCall[T]) -> T:
        create: Any = self._client.openai.chat.completions.create  # free-form params: not the typed overloads
        completion = await aretry(lambda: create(**call.request), sdk_retries(self._client.max_retries))
        return call.parse(completion)

    def _stream(self, request: dict[str, Any]) -> ChatStream:
        return ChatStream(self._client.openai, max_retries=self._client.max_retries, request=request)

    complete = ops.operation(JobRunBase._complete, _finish)
    fail = ops.operation(JobRunBase._fail, _finish)
    chat = ops.operation(chat, _chat)
    structured = ops.operation(structured, _chat)
    chat_stream = ops.operation(chat_stream, _stream)


class SyncJobRun(JobRunBase["SyncJobsClient"]):
    """One job, used as ``with client.job("...") as job:``; see :meth:`SyncJobsClient.job`.

    The same as :class:`JobRun`, without ``await``.
    """

    _client: SyncJobsClient

    def __enter__(self) -> SyncJobRun:
        self.created = self._client._send(self._create_job())
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if (close := self._close(exc)) is not None:
            self._finish(close)

    def _finish(self, call: ops.RouteCall[CompletedJob]) -> CompletedJob:
        return self._closed(self._client._send(call))

    def _chat(self, call: ChatCall[T]) -> T:
        create: Any = self._client.openai.chat.completions.create  # free-form params: not the typed overloads
        completion = retry(lambda: create(**call.request), sdk_retries(self._client.max_retries))
        return call.parse(completion)

    def _stream(self, request: dict[str, Any]) -> SyncChatStream:
        return SyncChatStream(self._client.openai, max_retries=self._client.max_retries, request=request)

    complete = ops.operation(JobRunBase._complete, _finish)
    fail = ops.operation(JobRunBase._fail, _finish)
    chat = ops.operation(chat, _chat)
    structured = ops.operation(structured, _chat)
    chat_stream = ops.operation(chat_stream, _stream)


class _ChatStreamBase:
    """What both streams keep: the request, and ``usage``, ``text`` and ``call_id`` once it has ended."""

    def __init__(self, *, max_retries: int, request: dict[str, Any]) -> None:
        self._request = request
        self._max_retries = max_retries
        self._started = False
        self._parts: list[str] = []
        self.usage: CompletionUsage | None = None
        self.call_id: str | None = None
        self.text = ""

    def _start(self) -> None:
        if self._started:
            raise RuntimeError("A chat stream is iterated once; start another with job.chat_stream(...).")
        self._started = True

    def _opened(self, headers: Any) -> None:
        self.call_id = headers.get("x-litellm-call-id")

    def _deltas_of(self, chunk: ChatCompletionChunk) -> Iterator[str]:
        if chunk.usage is not None:
            self.usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                self._parts.append(choice.delta.content)
                yield choice.delta.content

    def _ended(self) -> None:
        self.text = "".join(self._parts)


class ChatStream(_ChatStreamBase):
    """The text deltas of one streamed call; ``usage``, ``text`` and ``call_id`` once it has ended.

    Iterate it once (``async for delta in stream``); ``await stream.aclose()`` (or ``async with``)
    ends it early and frees its connection.
    """

    def __init__(self, sdk: AsyncOpenAI, *, max_retries: int, request: dict[str, Any]) -> None:
        super().__init__(max_retries=max_retries, request=request)
        self._sdk = sdk
        self._stream: AsyncStream[ChatCompletionChunk] | None = None

    def __aiter__(self) -> AsyncIterator[str]:
        self._start()
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
        self._stream = stream = await aretry(lambda: create(**self._request), sdk_retries(self._max_retries))
        self._opened(stream.response.headers)
        with sdk_errors():
            async with stream:
                async for chunk in stream:
                    for delta in self._deltas_of(chunk):
                        yield delta
        self._ended()


class SyncChatStream(_ChatStreamBase):
    """The sync client's :class:`ChatStream`: ``for delta in stream``; ``stream.close()`` (or ``with``)
    ends it early."""

    def __init__(self, sdk: OpenAI, *, max_retries: int, request: dict[str, Any]) -> None:
        super().__init__(max_retries=max_retries, request=request)
        self._sdk = sdk
        self._stream: Stream[ChatCompletionChunk] | None = None

    def __iter__(self) -> Iterator[str]:
        self._start()
        return self._deltas()

    def __enter__(self) -> SyncChatStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()

    def _deltas(self) -> Iterator[str]:
        create: Any = self._sdk.chat.completions.create  # free-form params: not the typed overloads
        self._stream = stream = retry(lambda: create(**self._request), sdk_retries(self._max_retries))
        self._opened(stream.response.headers)
        with sdk_errors(), stream:
            for chunk in stream:
                yield from self._deltas_of(chunk)
        self._ended()
