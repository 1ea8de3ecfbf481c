"""The client's errors and retries: the one place that maps answers to exceptions and decides
what may be sent again."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
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


#: A retry policy: after attempt ``n`` (from 0) ended with this outcome (an answer or an exception),
#: the seconds to wait before sending again, or None to settle on the outcome.
RetryPolicy = Callable[[int, object], float | None]
#: Statuses worth retrying for idempotent requests: the proxy or its store was briefly unavailable.
RETRY_STATUSES = frozenset({429, 502, 503, 504})


def route_retries(max_retries: int, *, idempotent: bool) -> RetryPolicy:
    """Requests to our routes: an idempotent one is sent again after a transport error or a 429/502/503/504;
    any other only if it never reached the proxy (no connection made)."""

    def wait(attempt: int, outcome: object) -> float | None:
        if attempt >= max_retries:
            return None
        if isinstance(outcome, httpx.TransportError):
            never_sent = isinstance(outcome, httpx.ConnectError | httpx.ConnectTimeout)
            return backoff(attempt + 1, None) if idempotent or never_sent else None
        if isinstance(outcome, httpx.Response) and idempotent and outcome.status_code in RETRY_STATUSES:
            return backoff(attempt + 1, outcome.headers.get("retry-after"))
        return None

    return wait


def sdk_retries(max_retries: int) -> RetryPolicy:
    """Chat calls through the OpenAI SDK: sent again only when they never reached an upstream."""

    def wait(attempt: int, outcome: object) -> float | None:
        if attempt < max_retries and isinstance(outcome, Exception) and never_reached_the_proxy(outcome):
            return backoff(attempt + 1, None)
        return None

    return wait


def settled(outcome: T | Exception) -> T:
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


async def aretry(send: Callable[[], Awaitable[T]], policy: RetryPolicy) -> T:
    """``send()`` until ``policy`` settles; the async client's one retry loop (SDK errors mapped)."""
    attempt = 0
    while True:
        try:
            with sdk_errors():
                outcome: T | Exception = await send()
        except Exception as exc:
            outcome = exc
        if (delay := policy(attempt, outcome)) is None:
            return settled(outcome)
        attempt += 1
        await asyncio.sleep(delay)


def retry(send: Callable[[], T], policy: RetryPolicy) -> T:
    """``send()`` until ``policy`` settles; the sync client's one retry loop (SDK errors mapped)."""
    attempt = 0
    while True:
        try:
            with sdk_errors():
                outcome: T | Exception = send()
        except Exception as exc:
            outcome = exc
        if (delay := policy(attempt, outcome)) is None:
            return settled(outcome)
        attempt += 1
        time.sleep(delay)


def backoff(attempt: int, retry_after: str | None) -> float:
    if retry_after is not None:
        with contextlib.suppress(ValueError):
            return min(float(retry_after), 10.0)
    return min(0.25 * 2.0 ** (attempt - 1), 4.0) * (0.5 + random.random() / 2)
