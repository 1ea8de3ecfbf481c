"""A job as an ``async with`` (or ``with``) block, and its chat calls through the OpenAI SDK.

:class:`JobRun` and :class:`ChatStream` are the async client's, :class:`SyncJobRun` and
:class:`SyncChatStream` the sync client's; what they send and how they read it is in ``_requests.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from openai import AsyncOpenAI, AsyncStream, OpenAI, Stream
from openai.types.chat import ChatCompletionChunk
from openai.types.completion_usage import CompletionUsage

from . import _requests as ops
from ._errors import aretry, retry, sdk_errors, sdk_retries
from ._models import CompletedJob

if TYPE_CHECKING:
    from ._client import JobsClient, SyncJobsClient

T = TypeVar("T")


class JobRun(ops.JobRunBase["JobsClient"]):
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

    async def _chat(self, call: ops.ChatCall[T]) -> T:
        create: Any = self._client.openai.chat.completions.create  # free-form params: not the typed overloads
        completion = await aretry(lambda: create(**call.request), sdk_retries(self._client.max_retries))
        return call.parse(completion)

    def _stream(self, request: dict[str, Any]) -> ChatStream:
        return ChatStream(self._client.openai, max_retries=self._client.max_retries, request=request)

    complete = ops.operation(ops.JobRunBase._complete, _finish)
    fail = ops.operation(ops.JobRunBase._fail, _finish)
    chat = ops.operation(ops.chat, _chat)
    structured = ops.operation(ops.structured, _chat)
    chat_stream = ops.operation(ops.chat_stream, _stream)


class SyncJobRun(ops.JobRunBase["SyncJobsClient"]):
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

    def _chat(self, call: ops.ChatCall[T]) -> T:
        create: Any = self._client.openai.chat.completions.create  # free-form params: not the typed overloads
        completion = retry(lambda: create(**call.request), sdk_retries(self._client.max_retries))
        return call.parse(completion)

    def _stream(self, request: dict[str, Any]) -> SyncChatStream:
        return SyncChatStream(self._client.openai, max_retries=self._client.max_retries, request=request)

    complete = ops.operation(ops.JobRunBase._complete, _finish)
    fail = ops.operation(ops.JobRunBase._fail, _finish)
    chat = ops.operation(ops.chat, _chat)
    structured = ops.operation(ops.structured, _chat)
    chat_stream = ops.operation(ops.chat_stream, _stream)


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
