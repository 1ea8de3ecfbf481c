"""HTTP routes mounted on the proxy's own FastAPI app, behind LiteLLM's key auth.

Handlers parse, authorise (a team sees only its own jobs; the admin may act for any team), call
the store or the credit service, and shape the answer. Every client mistake is a JobsError,
answered as OpenAI's error JSON by LiteLLM's ProxyException handler.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import Field, field_validator

from .analytics import TeamSummary, analytics
from .billing_routes import add_billing_routes
from .call_routes import add_call_routes
from .errors import Forbidden, InvalidJobMetadata, JobNotFound
from .metadata import check_job_id, check_job_metadata, check_job_type, check_team_id
from .models import Job, JobStatus
from .money import exact
from .policy_routes import add_policy_routes, allowance_json, read_policy
from .route_kit import (
    MAX_BODY_BYTES,
    Body,
    CreateJobBody,
    JobsRoute,
    JSONResponse,
    answer,
    balance_json,
    caller_of,
    closed_job_answer,
    documented_body,
    job_or_404,
    json_object_body,
    money,
    open_job,
    parse,
    team_for,
    user_api_key_auth,
)
from .ui import add_ui_routes
from .webhooks.routes import add_webhook_routes

if TYPE_CHECKING:
    from .runtime import JobsRuntime


class CompleteJobBody(Body):
    status: Literal["completed", "failed"]
    result: Any = None
    metadata: dict[str, Any] | None = None
    error_message: str | None = Field(default=None, max_length=4096)
    team_id: str | None = None


class GrantBody(Body):
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


def _time(value: str | None, name: str) -> datetime | None:
    """An ISO 8601 time; one without a time zone is UTC (as periods are)."""
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidJobMetadata(f"{name} must be an ISO 8601 time.", param=name) from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


BUCKETS = ("hour", "day", "week", "month")


def _period(value: str) -> tuple[datetime, datetime]:
    """``YYYY-MM`` or ``YYYY-MM-DD`` → [start, end) in UTC."""
    try:
        if len(value) == 7:
            start = datetime.strptime(value, "%Y-%m").replace(tzinfo=UTC)
            end = (start + timedelta(days=32)).replace(day=1)
            return start, end
        start = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
        return start, start + timedelta(days=1)
    except (ValueError, OverflowError):
        raise InvalidJobMetadata("period must be YYYY-MM or YYYY-MM-DD.", param="period") from None


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


def build_router(runtime: JobsRuntime) -> APIRouter:
    router = APIRouter(tags=["litellm-jobs"], route_class=JobsRoute)
    body_dep = Depends(json_object_body(MAX_BODY_BYTES))  # resolved before auth: declared first
    auth = Depends(user_api_key_auth())

    @router.get("/api/jobs/health")
    async def health(scope: str | None = Query(default=None)) -> JSONResponse:
        """No auth (load balancers, Kubernetes probes): 503 names the failing part.

        ``?scope=replica`` fails only for this replica's own trouble (the readiness probe).
        """
        return JSONResponse(*await runtime.health(replica_only=scope == "replica"))

    @router.post("/api/jobs/create", status_code=201, openapi_extra=documented_body(CreateJobBody))
    @answer
    async def create_job(body: dict[str, Any] = body_dep, key: Any = auth) -> JSONResponse:
        created, job = await open_job(runtime, key, parse(CreateJobBody, body))
        payload = {
            "job_id": job.job_id,
            "team_id": job.team_id,
            "job_type": job.job_type,
            "status": job.status.value,
            "created_at": job.created_at.isoformat(),
            "max_calls": job.max_calls,
            "max_cost_usd": None if job.max_cost_usd is None else exact(job.max_cost_usd),
            "credits_held": exact(job.credits_held),
        }
        return JSONResponse(payload, status_code=201 if created else 200)

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
        store = await runtime.ready()
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
        job = await job_or_404(runtime, team, check_job_id(job_id, param="job_id"))
        return JSONResponse(job.model_dump(mode="json"))

    @router.get("/api/jobs/{job_id}/calls")
    @answer
    async def get_job_calls(job_id: str, team_id: str | None = Query(default=None), key: Any = auth) -> JSONResponse:
        team = team_for(key, team_id)
        await job_or_404(runtime, team, check_job_id(job_id, param="job_id"))
        calls = await (await runtime.ready()).list_calls(team, job_id)
        return JSONResponse({"job_id": job_id, "team_id": team, "calls": [c.model_dump(mode="json") for c in calls]})

    @router.get("/api/jobs/{job_id}/costs")
    @answer
    async def get_job_costs(job_id: str, team_id: str | None = Query(default=None), key: Any = auth) -> JSONResponse:
        team = team_for(key, team_id)
        job = await job_or_404(runtime, team, check_job_id(job_id, param="job_id"))
        calls = await (await runtime.ready()).list_calls(team, job_id)
        return JSONResponse(
            {
                "job_id": job.job_id,
                "team_id": job.team_id,
                "job_type": job.job_type,
                "status": job.status.value,
                "calls": [
                    {
                        "call_id": c.call_id,
                        "purpose": c.purpose,
                        "model_group": c.model_group,
                        "model": c.model,
                        "status": c.status.value,
                        "prompt_tokens": c.prompt_tokens,
                        "completion_tokens": c.completion_tokens,
                        "total_tokens": c.prompt_tokens + c.completion_tokens,
                        "cost_usd": money(c.cost_usd),
                        "cost_usd_exact": exact(c.cost_usd),  # the same text, as a string
                        "cache_hit": c.cache_hit,
                        "latency_ms": c.latency_ms,
                    }
                    for c in calls
                ],
                "total_calls": job.total_calls,
                "prompt_tokens": job.prompt_tokens,
                "completion_tokens": job.completion_tokens,
                "total_tokens": job.prompt_tokens + job.completion_tokens,
                "total_cost_usd": money(job.total_cost_usd),
                "total_cost_usd_exact": exact(job.total_cost_usd),  # the same text, as a string
                "credits_charged": money(job.credits_charged),
            }
        )

    @router.post("/api/jobs/{job_id}/complete", openapi_extra=documented_body(CompleteJobBody))
    @answer
    async def complete_job(job_id: str, body: dict[str, Any] = body_dep, key: Any = auth) -> JSONResponse:
        req: CompleteJobBody = parse(CompleteJobBody, body)
        team = team_for(key, req.team_id)
        check_job_id(job_id, param="job_id")
        credits = await runtime.credits()
        metadata = check_job_metadata(req.metadata, param="metadata") if req.metadata is not None else None
        closure = await credits.close_job(
            team, job_id, JobStatus(req.status), result=req.result, error_message=req.error_message, metadata=metadata
        )
        if closure is None:
            raise JobNotFound(f"No job {job_id!r} for team {team!r}.", param="job_id")
        return JSONResponse(await closed_job_answer(runtime, team, job_id, closure))

    @router.get("/api/teams")
    @answer
    async def list_teams(key: Any = auth) -> JSONResponse:
        """Teams with credits or jobs, and their balances: every team for the proxy admin, else the key's own."""
        scope = None if caller_of(key).is_admin else team_for(key, None)
        rows = await (await runtime.ready()).fetch_all(
            "team_summaries", {"team_id": scope, "since": None, "until": None}
        )
        teams = [TeamSummary.model_validate(r) for r in rows]
        return JSONResponse(
            {
                "teams": [
                    {
                        "team_id": t.team_id,
                        "credits_allocated": exact(t.credits_allocated),
                        "credits_remaining": exact(t.credits_remaining),
                        "credits_held": exact(t.credits_held),
                        "credits_charged": exact(t.credits_charged_total),
                        "jobs": t.jobs,
                    }
                    for t in sorted(teams, key=lambda t: t.team_id)
                ]
            }
        )

    @router.get("/api/teams/{team_id}")
    @answer
    async def get_team(team_id: str, key: Any = auth) -> JSONResponse:
        team = team_for(key, team_id)
        credits = await runtime.credits()
        policy, use = await read_policy(credits, team)
        body = balance_json(await credits.balance(team))
        return JSONResponse({**body, "failure_allowance": allowance_json(credits, policy, use)})

    @router.get("/api/whoami")
    @answer
    async def whoami(key: Any = auth) -> JSONResponse:
        caller = caller_of(key)
        return JSONResponse({"team_id": caller.team_id, "user_id": caller.user_id, "is_admin": caller.is_admin})

    @router.get("/api/analytics/job-types")
    @answer
    async def job_type_analytics(
        since: str | None = Query(default=None),
        until: str | None = Query(default=None),
        team_id: str | None = Query(default=None),
        bucket: str | None = Query(default=None),
        key: Any = auth,
    ) -> JSONResponse:
        # A team sees its own; the proxy admin sees every team, or the one named.
        scope = None if caller_of(key).is_admin and team_id is None else team_for(key, team_id)
        if bucket is not None and bucket not in BUCKETS:
            raise InvalidJobMetadata(f"bucket must be one of {', '.join(BUCKETS)}.", param="bucket")
        result = await analytics(
            await runtime.ready(),
            team_id=scope,
            since=_time(since, "since"),
            until=_time(until, "until"),
            bucket=bucket,  # type: ignore[arg-type]  # checked against BUCKETS above
        )
        return JSONResponse(result.model_dump(mode="json"))

    @router.get("/api/teams/{team_id}/usage")
    @answer
    async def team_usage(team_id: str, period: str = Query(), key: Any = auth) -> JSONResponse:
        team = team_for(key, team_id)
        since, until = _period(period)
        result = await analytics(await runtime.ready(), team_id=team, since=since, until=until)
        summary = (result.teams[0] if result.teams else TeamSummary.empty(team)).model_dump(mode="json")
        return JSONResponse(
            {
                **summary,
                "period": period,
                "since": since.isoformat(),
                "until": until.isoformat(),
                "job_types": [j.model_dump(mode="json") for j in result.job_types],
            }
        )

    @router.post("/api/teams/{team_id}/credits", openapi_extra=documented_body(GrantBody))
    @answer
    async def grant_credits(team_id: str, body: dict[str, Any] = body_dep, key: Any = auth) -> JSONResponse:
        if not caller_of(key).is_admin:
            raise Forbidden("Only the proxy admin may grant or adjust credits.")
        team = check_team_id(team_id, param="team_id")
        req: GrantBody = parse(GrantBody, body)
        if req.kind == "grant" and req.amount <= 0:
            raise InvalidJobMetadata("A grant must be positive; use kind=adjust to take credits back.", param="amount")
        balance = await (await runtime.credits()).grant(
            team, req.amount, kind=req.kind, idempotency_key=req.idempotency_key, note=req.note
        )
        return JSONResponse(balance_json(balance))

    add_call_routes(router, runtime)
    add_policy_routes(router, runtime)
    add_billing_routes(router, runtime)
    add_webhook_routes(router, runtime)
    add_ui_routes(router)
    return router
