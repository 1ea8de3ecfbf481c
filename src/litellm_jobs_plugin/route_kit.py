"""What every route shares: the body guard, LiteLLM's key auth, who the caller is and acts for,
the JobsError → OpenAI error JSON seam, and the shape of a closed job's costs."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Awaitable, Callable, Coroutine
from decimal import Decimal
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import JSONResponse as StarletteJSONResponse
from starlette.responses import Response

from . import litellm_adapter
from . import money as money_
from .errors import InvalidJobMetadata, JobNotFound, JobsError, TeamRequired, to_proxy_exception
from .jobs import Caller, new_job_id, paying_team
from .metadata import check_job_id, check_job_metadata, check_job_type, check_team_id, json_depth
from .models import Balance, Job, JobCaps, JobTag

if TYPE_CHECKING:
    from .credits.base import Closure
    from .runtime import JobsRuntime

#: Bodies of the job routes are small; the seed routes' bodies carry prompts (documents).
MAX_BODY_BYTES = 64 * 1024
MAX_CALL_BODY_BYTES = 16 * 1024 * 1024
#: Deeper bodies are refused before anything copies, validates or stores them (Python's json and
#: LiteLLM's deep copies of metadata fail with a RecursionError, a 500, at a few hundred levels).
MAX_BODY_DEPTH = 64

T = TypeVar("T", bound=BaseModel)
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


class Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class CreateJobBody(Body):
    job_type: str
    job_id: str | None = None
    metadata: dict[str, Any] | None = None
    max_calls: int | None = Field(default=None, ge=1, le=1_000_000)
    max_cost_usd: Decimal | None = Field(default=None, gt=0, max_digits=30)
    team_id: str | None = None
    user_id: str | None = Field(default=None, min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")


def documented_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` documenting a route's JSON body (read by :func:`json_object_body`, so
    FastAPI cannot infer it): /openapi.json, /docs and schema-driven tests see its fields."""
    schema = model.model_json_schema()
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def problem(exc: ValidationError) -> InvalidJobMetadata:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "body"
    return InvalidJobMetadata(f"{where}: {first.get('msg', 'invalid value')}", param=where)


def parse(model: type[T], body: dict[str, Any]) -> T:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise problem(exc) from None


class JobsRoute(APIRoute):
    """Our routes' class: FastAPI's own parameter errors (a query ``limit`` that is not a number, a
    missing ``period``) are OpenAI's error JSON too, not FastAPI's ``{"detail": [...]}``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                raise to_proxy_exception(parameter_problem(exc)) from None

        return handle


def parameter_problem(exc: RequestValidationError) -> InvalidJobMetadata:
    errors = exc.errors()
    first: dict[str, Any] = dict(errors[0]) if errors else {}
    loc = [str(p) for p in first.get("loc", ())]
    where = ".".join(loc[1:] if len(loc) > 1 and loc[0] in {"query", "path", "header", "body"} else loc) or "request"
    return InvalidJobMetadata(f"{where}: {first.get('msg', 'invalid value')}", param=where)


def json_object_body(max_bytes: int, *, refuse_nul: bool = True) -> Callable[[Request], Awaitable[dict[str, Any]]]:
    """A dependency giving the request body as a JSON object of at most ``max_bytes``, checked
    before LiteLLM's auth reads it (checked on LiteLLM 1.106: a JSON body that is not an object makes its
    auth dependency fail with a 500). NUL characters are refused where the body reaches
    PostgreSQL (text and jsonb cannot hold them); prompts passed on to LiteLLM may carry them.

    The body is read as it arrives and refused once past ``max_bytes`` (or at once, by its
    Content-Length): a larger body is never held in memory, whoever sends it (no key is needed
    to be refused)."""

    async def body_of(request: Request) -> dict[str, Any]:
        return _json_object(await read_body(request, max_bytes), max_bytes, refuse_nul)

    return body_of


def _too_large(max_bytes: int) -> Exception:
    return to_proxy_exception(InvalidJobMetadata(f"The body is over {max_bytes} bytes.", param="body"))


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, read chunk by chunk; a 400 as soon as it passes ``max_bytes``.

    The bytes read are left on the request (Starlette's ``Request.body()`` cache), so LiteLLM's
    auth dependency, which runs after this one on the same request, reads them from there
    instead of the consumed stream."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise to_proxy_exception(InvalidJobMetadata("The Content-Length header is not a number.", param="body"))
        if int(declared) > max_bytes:
            raise _too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
    raw = b"".join(chunks)
    request._body = raw  # what Request.body() returns from now on (it would re-read the consumed stream)
    return raw


class NonStandardConstant(ValueError):
    """A JSON body holds NaN, Infinity or -Infinity."""


def _non_standard_constant(name: str) -> NoReturn:
    raise NonStandardConstant(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: valid JSON, but an infinity once read
        raise NonStandardConstant(f"{text[:40]} is too large for a number")
    return value


def _json_object(raw: bytes, max_bytes: int, refuse_nul: bool) -> dict[str, Any]:
    if len(raw) > max_bytes:
        raise _too_large(max_bytes)
    if not raw.strip():
        return {}
    if refuse_nul and (b"\\u0000" in raw or b"\x00" in raw):
        raise to_proxy_exception(InvalidJobMetadata("The body must not contain NUL characters.", param="body"))
    try:
        # NaN, Infinity and -Infinity are refused: Python's json reads them, but nothing after it
        # (orjson, PostgreSQL's jsonb, Starlette's JSON responses) takes them back.
        body = json.loads(raw, parse_constant=_non_standard_constant, parse_float=_finite_float)
    except NonStandardConstant as exc:
        raise to_proxy_exception(
            InvalidJobMetadata(
                f"The body is not valid JSON: {exc}; send a finite number, a string or null.", param="body"
            )
        ) from None
    except (ValueError, UnicodeDecodeError):
        raise to_proxy_exception(InvalidJobMetadata("The body is not valid JSON.", param="body")) from None
    except RecursionError:  # e.g. 40,000 nested arrays: Python's parser gives up
        raise to_proxy_exception(InvalidJobMetadata("The body's JSON is nested too deeply.", param="body")) from None
    if not isinstance(body, dict):
        raise to_proxy_exception(InvalidJobMetadata("The body must be a JSON object.", param="body"))
    if json_depth(body, limit=MAX_BODY_DEPTH) > MAX_BODY_DEPTH:
        raise to_proxy_exception(
            InvalidJobMetadata(f"The body nests deeper than {MAX_BODY_DEPTH} levels.", param="body")
        )
    return body


def user_api_key_auth() -> Any:
    """LiteLLM's own key auth dependency (imported late: importing the package does no proxy I/O)."""
    from litellm.proxy.auth.user_api_key_auth import user_api_key_auth as auth

    return auth


def caller_of(key: Any) -> Caller:
    team_id, key_hash, user_id = litellm_adapter.key_identity(key)
    return Caller(team_id=team_id, key_hash=key_hash, user_id=user_id, is_admin=litellm_adapter.is_proxy_admin(key))


def team_for(key: Any, team_id: object) -> str:
    """The team a route acts for: the key's, or (for the proxy admin only) the one named."""
    tag = JobTag(
        job_id=None,
        job_type=None,
        job_metadata=None,
        team_id=None if team_id is None else check_team_id(team_id, param="team_id"),
    )
    team = paying_team(tag, caller_of(key))
    if team is None:
        raise TeamRequired(
            "This key belongs to no team: use a team key, or pass team_id as the proxy admin.", param="team_id"
        )
    return team


def answer(fn: F) -> F:
    """Turn JobsError into OpenAI's error JSON."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except JobsError as exc:
            raise to_proxy_exception(exc) from exc

    return wrapper  # type: ignore[return-value]


async def open_job(runtime: JobsRuntime, key: Any, req: CreateJobBody) -> tuple[bool, Job]:
    """Create a pending job with its price held (``POST /api/jobs/create``); (created, job).

    A job id the client chose makes a retried creation the same job (200 instead of 201).
    """
    team = team_for(key, req.team_id)
    job_type = check_job_type(req.job_type, param="job_type")
    job_id = check_job_id(req.job_id, param="job_id") if req.job_id is not None else new_job_id()
    metadata = check_job_metadata(req.metadata, param="metadata") if req.metadata is not None else None
    credits = await runtime.credits()
    return await credits.create_job(
        team_id=team,
        job_id=job_id,
        job_type=job_type,
        metadata=metadata,
        caps=JobCaps(max_calls=req.max_calls, max_cost_usd=req.max_cost_usd),
        user_id=req.user_id or caller_of(key).user_id,
    )


async def job_or_404(runtime: JobsRuntime, team: str, job_id: str) -> Job:
    job = await (await runtime.credits()).job_row(team, job_id)
    if job is None:
        raise JobNotFound(f"No job {job_id!r} for team {team!r}.", param="job_id")
    return job


def money(value: Decimal) -> money_.Number:
    """A seed-compatible money field: a JSON number in plain notation, every digit kept (docs/money.md)."""
    return money_.number(value)


class JSONResponse(StarletteJSONResponse):
    """Starlette's JSONResponse, writing money as docs/money.md says (:func:`money_.dumps`)."""

    def render(self, content: Any) -> bytes:
        return money_.dumps(content, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def balance_json(balance: Balance) -> dict[str, Any]:
    return {
        "team_id": balance.team_id,
        "credits_allocated": money(balance.credits_allocated),
        "credits_remaining": money(balance.credits_remaining),
        "credits_held": money(balance.credits_held),
        "credits_charged": money(balance.credits_charged),
    }


async def closed_job_answer(runtime: JobsRuntime, team: str, job_id: str, closure: Closure) -> dict[str, Any]:
    """The answer to closing a job: its totals, calls and the team's balance after it.

    Totals include every call that finished before the close was asked for: this waits (bounded
    by ``JOBS_COMPLETE_WAIT_S``) until the calls admitted to the job are recorded.
    """
    store = await runtime.ready()
    await store.wait_for_calls(team, job_id, closure.admitted_calls, timeout_s=runtime.settings.complete_wait_s)
    job = await job_or_404(runtime, team, job_id)
    calls = await store.list_calls(team, job_id)
    balance = await (await runtime.credits()).balance(team)
    costs = {
        "total_calls": job.total_calls,
        "successful_calls": job.successful_calls,
        "failed_calls": job.failed_calls,
        "prompt_tokens": job.prompt_tokens,
        "completion_tokens": job.completion_tokens,
        "total_tokens": job.prompt_tokens + job.completion_tokens,
        "total_cost_usd": money(job.total_cost_usd),
        "avg_latency_ms": round(job.total_latency_ms / job.total_calls, 1) if job.total_calls else 0.0,
        "credits_charged": money(job.credits_charged),
        "credit_applied": job.credits_charged > 0,
        "credits_remaining": money(balance.credits_remaining),
    }
    return {
        "job_id": job.job_id,
        "team_id": job.team_id,
        "job_type": job.job_type,
        "status": job.status.value,
        "completed_at": job.completed_at.isoformat() if job.completed_at else None,
        "costs": costs,
        "calls": [c.model_dump(mode="json") for c in calls],
        "successful_call_ids": [c.call_id for c in calls if c.status.value == "success"],
    }
