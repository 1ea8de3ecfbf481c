"""HTTP routes mounted on the proxy's own FastAPI app, behind LiteLLM's key auth (DESIGN §8)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse

from . import litellm_adapter
from .errors import JobNotFound, JobsError, TeamRequired, to_proxy_exception
from .jobs import Caller, paying_team
from .metadata import check_job_id, check_team_id
from .models import JobTag

if TYPE_CHECKING:
    from .hooks import JobsPlugin


def _user_api_key_auth() -> Any:
    from litellm.proxy.auth.user_api_key_auth import user_api_key_auth

    return user_api_key_auth


def build_router(plugin: JobsPlugin) -> APIRouter:
    router = APIRouter(tags=["litellm-jobs"])
    auth = Depends(_user_api_key_auth())

    def caller_of(key: Any) -> Caller:
        team_id, key_hash, user_id = litellm_adapter.key_identity(key)
        return Caller(team_id=team_id, key_hash=key_hash, user_id=user_id, is_admin=litellm_adapter.is_proxy_admin(key))

    def team_for(key: Any, team_id: str | None) -> str:
        caller = caller_of(key)
        tag = JobTag(
            job_id=None,
            job_type=None,
            job_metadata=None,
            team_id=None if team_id is None else check_team_id(team_id, param="team_id"),
        )
        team = paying_team(tag, caller)
        if team is None:
            raise TeamRequired(
                "This key belongs to no team: use a team key, or pass team_id as the proxy admin.", param="team_id"
            )
        return team

    @router.get("/api/jobs/health", include_in_schema=True)
    async def health() -> JSONResponse:
        body: dict[str, Any] = {"status": "ok", "store": "ok", "writer": plugin.writer_health()}
        try:
            store = await plugin.ready()
            await store.ping()
        except JobsError as exc:
            body.update(status="unavailable", store=exc.message)
            return JSONResponse(body, status_code=503)
        return JSONResponse(body)

    @router.get("/api/jobs/{job_id}")
    async def get_job(job_id: str, team_id: str | None = Query(default=None), key: Any = auth) -> JSONResponse:
        try:
            team = team_for(key, team_id)
            check_job_id(job_id, param="job_id")
            store = await plugin.ready()
            job = await store.get_job(team, job_id)
            if job is None:
                raise JobNotFound(f"No job {job_id!r} for team {team!r}.", param="job_id")
        except JobsError as exc:
            raise to_proxy_exception(exc) from exc
        return JSONResponse(job.model_dump(mode="json"))

    @router.get("/api/jobs/{job_id}/calls")
    async def get_job_calls(job_id: str, team_id: str | None = Query(default=None), key: Any = auth) -> JSONResponse:
        try:
            team = team_for(key, team_id)
            check_job_id(job_id, param="job_id")
            store = await plugin.ready()
            if await store.get_job(team, job_id) is None:
                raise JobNotFound(f"No job {job_id!r} for team {team!r}.", param="job_id")
            calls = await store.list_calls(team, job_id)
        except JobsError as exc:
            raise to_proxy_exception(exc) from exc
        return JSONResponse({"job_id": job_id, "team_id": team, "calls": [c.model_dump(mode="json") for c in calls]})

    return router
