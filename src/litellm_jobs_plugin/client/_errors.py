"""The client's errors and retries: the one place that maps answers to exceptions and decides
what may be sent again."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import httpx
import openai

from ..errors import ERRORS_BY_TYPE, JobsError, StoreUnavailable

T = TypeVar("T")


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
def sdk_errors() -> Iterator[None]:
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


def never_reached_the_proxy(exc: BaseException) -> bool:
    """A call that failed like this made no upstream call, so sending it again cannot cost twice:
    the connection was never made, or the plugin refused it before routing (store starting)."""
    if isinstance(exc, openai.APIConnectionError) and not isinstance(exc, openai.APITimeoutError):
        return isinstance(exc.__cause__, httpx.ConnectError | httpx.ConnectTimeout)
    return isinstance(exc, StoreUnavailable)


async def with_retries(max_retries: int, send: Callable[[], Awaitable[T]]) -> T:
    attempt = 0
    while True:
        try:
            with sdk_errors():
                return await send()
        except Exception as exc:
            if attempt >= max_retries or not never_reached_the_proxy(exc):
                raise
            attempt += 1
            await asyncio.sleep(backoff(attempt, None))


def backoff(attempt: int, retry_after: str | None) -> float:
    if retry_after is not None:
        with contextlib.suppress(ValueError):
            return min(float(retry_after), 10.0)
    return min(0.25 * 2.0 ** (attempt - 1), 4.0) * (0.5 + random.random() / 2)
