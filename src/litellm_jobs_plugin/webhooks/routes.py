"""``/api/webhooks/...``: the proxy admin's webhook endpoints, team thresholds and dead letters.

Every route is for the proxy admin only. Bodies go through the same guard as the other routes
(size, depth, NUL, non-standard numbers), and every mistake is OpenAI's error JSON with a 4xx.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Query
from pydantic import Field, field_validator

from ..errors import Forbidden
from ..metadata import check_team_id
from ..route_kit import (
    MAX_BODY_BYTES,
    Body,
    JSONResponse,
    answer,
    caller_of,
    documented_body,
    json_object_body,
    parse,
    user_api_key_auth,
)
from .events import EVENT_TYPES
from .registry import MAX_URL_CHARS, Registry, check_endpoint_id, check_event_types, check_url

if TYPE_CHECKING:
    from ..runtime import JobsRuntime

_MAX_CREDITS = Decimal(10) ** 13


class EndpointBody(Body):
    url: str = Field(min_length=1, max_length=MAX_URL_CHARS)
    team_id: str | None = None
    event_types: list[str] = Field(default_factory=lambda: list(EVENT_TYPES), min_length=1, max_length=32)
    description: str | None = Field(default=None, max_length=1024, pattern=r"^[^\x00-\x1f\x7f]*$")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        try:
            return check_url(value)
        except Exception as exc:
            raise ValueError(str(exc)) from None

    @field_validator("team_id")
    @classmethod
    def _team(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return check_team_id(value, param="team_id")
        except Exception as exc:
            raise ValueError(str(exc)) from None

    @field_validator("event_types")
    @classmethod
    def _types(cls, value: list[str]) -> list[str]:
        try:
            return check_event_types(value)
        except Exception as exc:
            raise ValueError(str(exc)) from None


class RotateBody(Body):
    overlap_s: float | None = Field(default=None, ge=0, le=30 * 86_400, allow_inf_nan=False)


class ThresholdBody(Body):
    credits_low_threshold: Decimal | None = Field(default=None, ge=0, allow_inf_nan=False)

    @field_validator("credits_low_threshold")
    @classmethod
    def _credits(cls, value: Decimal | None) -> Decimal | None:
        if value is not None and (value >= _MAX_CREDITS or value != value.quantize(Decimal("0.000001"))):
            raise ValueError("credits_low_threshold must be below 10^13 credits with at most 6 decimals")
        return value


class RetryBody(Body):
    endpoint_id: str | None = Field(default=None, max_length=64)
    event_ids: list[str] | None = Field(default=None, min_length=1, max_length=1000)

    @field_validator("event_ids")
    @classmethod
    def _ids(cls, value: list[str] | None) -> list[str] | None:
        for event_id in value or []:
            if not (
                event_id.startswith("evt_") and len(event_id) <= 64 and event_id.isascii() and event_id.isprintable()
            ):
                raise ValueError("event_ids must be event ids (evt_...)")
        return value


def _admin(key: Any) -> None:
    if not caller_of(key).is_admin:
        raise Forbidden("Only the proxy admin may manage webhooks.")


def add_webhook_routes(router: APIRouter, runtime: JobsRuntime) -> None:
    body_dep = Depends(json_object_body(MAX_BODY_BYTES))  # resolved before auth: declared first
    auth = Depends(user_api_key_auth())

    async def registry() -> Registry:
        return Registry(await runtime.ready())

    @router.post("/api/webhooks/endpoints", status_code=201, openapi_extra=documented_body(EndpointBody))
    @answer
    async def add_endpoint(body: dict[str, Any] = body_dep, key: Any = auth) -> JSONResponse:
        """Register an endpoint (a team's, or every team's); the answer holds its secret, shown only here."""
        _admin(key)
        req = parse(EndpointBody, body)
        created = await (await registry()).add(
            req.url, team_id=req.team_id, event_types=req.event_types, description=req.description
        )
        return JSONResponse(created, status_code=201)

    @router.get("/api/webhooks/endpoints")
    @answer
    async def list_endpoints(key: Any = auth) -> JSONResponse:
        _admin(key)
        return JSONResponse({"endpoints": await (await registry()).endpoints()})

    @router.get("/api/webhooks/endpoints/{endpoint_id}")
    @answer
    async def get_endpoint(endpoint_id: str, key: Any = auth) -> JSONResponse:
        _admin(key)
        return JSONResponse(await (await registry()).get(check_endpoint_id(endpoint_id)))

    @router.delete("/api/webhooks/endpoints/{endpoint_id}")
    @answer
    async def remove_endpoint(endpoint_id: str, key: Any = auth) -> JSONResponse:
        """Remove an endpoint and its deliveries (those still pending are never sent)."""
        _admin(key)
        await (await registry()).remove(check_endpoint_id(endpoint_id))
        return JSONResponse({"endpoint_id": endpoint_id, "deleted": True})

    @router.post("/api/webhooks/endpoints/{endpoint_id}/rotate-secret", openapi_extra=documented_body(RotateBody))
    @answer
    async def rotate_secret(endpoint_id: str, body: dict[str, Any] = body_dep, key: Any = auth) -> JSONResponse:
        """A new secret; webhooks are signed with both until ``previous_secret_expires_at``."""
        _admin(key)
        check_endpoint_id(endpoint_id)
        req = parse(RotateBody, body)
        overlap = runtime.settings.webhook_rotation_overlap_s if req.overlap_s is None else req.overlap_s
        return JSONResponse(await (await registry()).rotate(endpoint_id, overlap_s=overlap))

    @router.get("/api/webhooks/dead-letters")
    @answer
    async def dead_letters(
        endpoint_id: str | None = Query(default=None, max_length=64),
        limit: int = Query(default=100, ge=1, le=1000),
        key: Any = auth,
    ) -> JSONResponse:
        _admin(key)
        found = await (await registry()).dead_letters(endpoint_id, limit)
        return JSONResponse({"dead_letters": found})

    @router.post("/api/webhooks/dead-letters/retry", openapi_extra=documented_body(RetryBody))
    @answer
    async def retry_dead_letters(body: dict[str, Any] = body_dep, key: Any = auth) -> JSONResponse:
        """Send dead letters again (all, an endpoint's, or the events named), with a fresh maximum age."""
        _admin(key)
        req = parse(RetryBody, body)
        return JSONResponse({"retried": await (await registry()).retry(req.endpoint_id, req.event_ids)})

    @router.get("/api/webhooks/status")
    @answer
    async def status(key: Any = auth) -> JSONResponse:
        """Deliveries waiting and dead letters, for the dashboard."""
        _admin(key)
        return JSONResponse(await (await registry()).counts())

    @router.get("/api/webhooks/teams/{team_id}")
    @answer
    async def get_threshold(team_id: str, key: Any = auth) -> JSONResponse:
        _admin(key)
        return JSONResponse(await (await registry()).threshold(check_team_id(team_id, param="team_id")))

    @router.put("/api/webhooks/teams/{team_id}", openapi_extra=documented_body(ThresholdBody))
    @answer
    async def put_threshold(team_id: str, body: dict[str, Any] = body_dep, key: Any = auth) -> JSONResponse:
        """The team's ``credits.low`` threshold (null: no credits.low events)."""
        _admin(key)
        team = check_team_id(team_id, param="team_id")
        req = parse(ThresholdBody, body)
        return JSONResponse(await (await registry()).set_threshold(team, req.credits_low_threshold))
