"""HTTP routes mounted on the proxy's own FastAPI app, behind LiteLLM's key auth (DESIGN §8).

Handlers parse, authorise (a team sees only its own jobs; the admin may act for any team), call
the store or the credit service, and shape the answer. Every client mistake is a JobsError,
answered as OpenAI's error JSON by LiteLLM's ProxyException handler.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import time
import uuid
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from . import litellm_adapter
from .errors import (
    Forbidden,
    InvalidJobMetadata,
    JobNotFound,
    JobsError,
    TeamRequired,
    to_proxy_exception,
)
from .jobs import Caller, paying_team
from .metadata import check_job_id, check_job_metadata, check_job_type, check_team_id
from .models import Balance, Job, JobCaps, JobStatus, JobTag

if TYPE_CHECKING:
    from .hooks import JobsPlugin

MAX_BODY_BYTES = 64 * 1024


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class CreateJobBody(_Body):
    job_type: str
    job_id: str | None = None
    metadata: dict[str, Any] | None = None
    max_calls: int | None = Field(default=None, ge=1, le=1_000_000)
    max_cost_usd: Decimal | None = Field(default=None, gt=0, max_digits=30)
    team_id: str | None = None
    user_id: str | None = Field(default=None, max_length=128)


class CompleteJobBody(_Body):
    status: Literal["completed", "failed"]
    result: Any = None
    metadata: dict[str, Any] | None = None
    error_message: str | None = Field(default=None, max_length=4096)
    team_id: str | None = None


class GrantBody(_Body):
    amount: Decimal = Field(max_digits=20, decimal_places=6)
    idempotency_key: str = Field(min_length=1, max_length=128)
    kind: Literal["grant", "adjust"] = "grant"
    note: str | None = Field(default=None, max_length=1024)

    @field_validator("amount")
    @classmethod
    def _finite(cls, v: Decimal) -> Decimal:
        if not v.is_finite():
            raise ValueError("amount must be a finite number")
        return v


def _problem(exc: ValidationError) -> InvalidJobMetadata:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "body"
    return InvalidJobMetadata(f"{where}: {first.get('msg', 'invalid value')}", param=where)


async def json_object_body(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, checked before LiteLLM's auth reads it (LITELLM-NOTES:
    a JSON body that is not an object makes its auth dependency fail with a 500)."""
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise to_proxy_exception(InvalidJobMetadata(f"The body is over {MAX_BODY_BYTES} bytes.", param="body"))
    if not raw.strip():
        return {}
    if b"\\u0000" in raw or b"\x00" in raw:
        # PostgreSQL text and jsonb cannot hold NUL: refuse it here rather than fail later.
        raise to_proxy_exception(InvalidJobMetadata("The body must not contain NUL characters.", param="body"))
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise to_proxy_exception(InvalidJobMetadata("The body is not valid JSON.", param="body")) from None
    if not isinstance(body, dict):
        raise to_proxy_exception(InvalidJobMetadata("The body must be a JSON object.", param="body"))
    return body


def _user_api_key_auth() -> Any:
    from litellm.proxy.auth.user_api_key_auth import user_api_key_auth

    return user_api_key_auth


def _parse(model: type[_Body], body: dict[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise _problem(exc) from None


def _time(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise InvalidJobMetadata(f"{name} must be an ISO 8601 time.", param=name) from None


def _cursor(value: str | None) -> tuple[datetime, str] | None:
    if value is None:
        return None
    try:
        at, job_id = json.loads(base64.urlsafe_b64decode(value.encode()).decode())
        return datetime.fromisoformat(at), check_job_id(job_id)
    except (ValueError, TypeError, UnicodeDecodeError):
        raise InvalidJobMetadata("cursor is not one this API returned.", param="cursor") from None


def _next_cursor(job: Job) -> str:
    return base64.urlsafe_b64encode(json.dumps([job.created_at.isoformat(), job.job_id]).encode()).decode()


def _money(value: Decimal) -> float:
    return float(value)


def build_router(plugin: JobsPlugin) -> APIRouter:
    router = APIRouter(tags=["litellm-jobs"])
    body_dep = Depends(json_object_body)  # resolved before auth: declared first
    auth = Depends(_user_api_key_auth())

    def caller_of(key: Any) -> Caller:
        team_id, key_hash, user_id = litellm_adapter.key_identity(key)
        return Caller(team_id=team_id, key_hash=key_hash, user_id=user_id, is_admin=litellm_adapter.is_proxy_admin(key))

    def team_for(key: Any, team_id: object) -> str:
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

    async def job_or_404(team: str, job_id: str) -> Job:
        store = await plugin.ready()
        job = await store.get_job(team, job_id)
        if job is None:
            raise JobNotFound(f"No job {job_id!r} for team {team!r}.", param="job_id")
        return job

    def answer(fn: Any) -> Any:
        """Turn JobsError into OpenAI's error JSON."""

        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except JobsError as exc:
                raise to_proxy_exception(exc) from exc

        return wrapper

    @router.get("/api/jobs/health")
    async def health() -> JSONResponse:
        body: dict[str, Any] = {"status": "ok", "store": "ok", "writer": plugin.writer_health()}
        try:
            store = await plugin.ready()
            await store.ping()
        except JobsError as exc:
            body.update(status="unavailable", store=exc.message)
            return JSONResponse(body, status_code=503)
        return JSONResponse(body)

    @router.post("/api/jobs/create", status_code=201)
    @answer
    async def create_job(body: dict[str, Any] = body_dep, key: Any = auth) -> JSONResponse:
        req: CreateJobBody = _parse(CreateJobBody, body)
        team = team_for(key, req.team_id)
        job_type = check_job_type(req.job_type, param="job_type")
        job_id = check_job_id(req.job_id, param="job_id") if req.job_id is not None else f"job-{uuid.uuid4().hex}"
        metadata = check_job_metadata(req.metadata, param="metadata") if req.metadata is not None else None
        credits = await plugin.credits()
        created, job = await credits.create_job(
            team_id=team,
            job_id=job_id,
            job_type=job_type,
            metadata=metadata,
            caps=JobCaps(max_calls=req.max_calls, max_cost_usd=req.max_cost_usd),
            user_id=req.user_id or caller_of(key).user_id,
        )
        payload = {
            "job_id": job.job_id,
            "team_id": job.team_id,
            "job_type": job.job_type,
            "status": job.status.value,
            "created_at": job.created_at.isoformat(),
            "max_calls": job.max_calls,
            "max_cost_usd": job.max_cost_usd,
            "credits_held": _money(job.credits_held),
        }
        return JSONResponse(json.loads(json.dumps(payload, default=str)), status_code=201 if created else 200)

    @router.get("/api/jobs")
    @answer
    async def list_jobs(
        status: str | None = Query(default=None),
        job_type: str | None = Query(default=None),
        since: str | None = Query(default=None),
        until: str | None = Query(default=None),
        cursor: str | None = Query(default=None),
        limit: int = Query(default=50, ge=1, le=500),
        team_id: str | None = Query(default=None),
        key: Any = auth,
    ) -> JSONResponse:
        team = team_for(key, team_id)
        if status is not None and status not in {s.value for s in JobStatus}:
            raise InvalidJobMetadata(f"status must be one of {', '.join(s.value for s in JobStatus)}.", param="status")
        if job_type is not None:
            check_job_type(job_type, param="job_type")
        store = await plugin.ready()
        jobs = await store.list_jobs(
            team,
            status=status,
            job_type=job_type,
            since=_time(since, "since"),
            until=_time(until, "until"),
            cursor=_cursor(cursor),
            limit=limit,
        )
        return JSONResponse(
            {
                "jobs": [j.model_dump(mode="json") for j in jobs],
                "next_cursor": _next_cursor(jobs[-1]) if len(jobs) == limit else None,
            }
        )

    @router.get("/api/jobs/{job_id}")
    @answer
    async def get_job(job_id: str, team_id: str | None = Query(default=None), key: Any = auth) -> JSONResponse:
        team = team_for(key, team_id)
        job = await job_or_404(team, check_job_id(job_id, param="job_id"))
        return JSONResponse(job.model_dump(mode="json"))

    @router.get("/api/jobs/{job_id}/calls")
    @answer
    async def get_job_calls(job_id: str, team_id: str | None = Query(default=None), key: Any = auth) -> JSONResponse:
        team = team_for(key, team_id)
        await job_or_404(team, check_job_id(job_id, param="job_id"))
        calls = await (await plugin.ready()).list_calls(team, job_id)
        return JSONResponse({"job_id": job_id, "team_id": team, "calls": [c.model_dump(mode="json") for c in calls]})

    @router.post("/api/jobs/{job_id}/complete")
    @answer
    async def complete_job(job_id: str, body: dict[str, Any] = body_dep, key: Any = auth) -> JSONResponse:
        req: CompleteJobBody = _parse(CompleteJobBody, body)
        team = team_for(key, req.team_id)
        check_job_id(job_id, param="job_id")
        credits = await plugin.credits()
        store = await plugin.ready()
        metadata = check_job_metadata(req.metadata, param="metadata") if req.metadata is not None else None
        closure = await credits.close_job(
            team, job_id, JobStatus(req.status), result=req.result, error_message=req.error_message, metadata=metadata
        )
        if closure is None:
            raise JobNotFound(f"No job {job_id!r} for team {team!r}.", param="job_id")
        # Totals include every call that finished before complete was asked for: wait (bounded)
        # until the calls admitted to the job are recorded.
        deadline = time.monotonic() + plugin.settings.complete_wait_s
        # The condition lives in PostgreSQL (any replica may write the calls), so it is polled.
        while await store.count_calls(team, job_id) < closure.admitted_calls:
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.02)
        job = await job_or_404(team, job_id)
        calls = await store.list_calls(team, job_id)
        balance = await credits.balance(team)
        ok = [c for c in calls if c.status.value == "success"]
        costs = {
            "total_calls": job.total_calls,
            "successful_calls": job.successful_calls,
            "failed_calls": job.failed_calls,
            "prompt_tokens": job.prompt_tokens,
            "completion_tokens": job.completion_tokens,
            "total_tokens": job.prompt_tokens + job.completion_tokens,
            "total_cost_usd": _money(job.total_cost_usd),
            "avg_latency_ms": round(job.total_latency_ms / job.total_calls, 1) if job.total_calls else 0.0,
            "credits_charged": _money(job.credits_charged),
            "credit_applied": job.credits_charged > 0,
            "credits_remaining": _money(balance.credits_remaining),
        }
        return JSONResponse(
            {
                "job_id": job.job_id,
                "status": job.status.value,
                "completed_at": job.completed_at.isoformat() if job.completed_at else None,
                "costs": costs,
                "calls": [c.model_dump(mode="json") for c in calls],
                "successful_call_ids": [c.call_id for c in ok],
            }
        )

    @router.get("/api/teams/{team_id}")
    @answer
    async def get_team(team_id: str, key: Any = auth) -> JSONResponse:
        team = team_for(key, team_id)
        return JSONResponse(_balance_json(await (await plugin.credits()).balance(team)))

    @router.post("/api/teams/{team_id}/credits")
    @answer
    async def grant_credits(team_id: str, body: dict[str, Any] = body_dep, key: Any = auth) -> JSONResponse:
        if not caller_of(key).is_admin:
            raise Forbidden("Only the proxy admin may grant or adjust credits.")
        team = check_team_id(team_id, param="team_id")
        req: GrantBody = _parse(GrantBody, body)
        if req.kind == "grant" and req.amount <= 0:
            raise InvalidJobMetadata("A grant must be positive; use kind=adjust to take credits back.", param="amount")
        balance = await (await plugin.credits()).grant(
            team, req.amount, kind=req.kind, idempotency_key=req.idempotency_key, note=req.note
        )
        return JSONResponse(_balance_json(balance))

    return router


def _balance_json(balance: Balance) -> dict[str, Any]:
    return {
        "team_id": balance.team_id,
        "credits_allocated": _money(balance.credits_allocated),
        "credits_remaining": _money(balance.credits_remaining),
        "credits_held": _money(balance.credits_held),
        "credits_charged": _money(balance.credits_charged),
    }
