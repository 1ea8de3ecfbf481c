"""``/api/teams/{team_id}/policy``: what the proxy admin sets per team, and the team's failure allowance.

A team reads its own policy and allowance; only the proxy admin changes them. Prices, allowed job
types and the allowance never come from anything a team's client sends on a call.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import Field, field_validator

from .credits import decide, policies
from .credits.policies import policy_json
from .errors import Forbidden
from .metadata import check_job_type, check_team_id
from .route_kit import (
    MAX_BODY_BYTES,
    Body,
    answer,
    caller_of,
    documented_body,
    json_object_body,
    parse,
    team_for,
    user_api_key_auth,
)

if TYPE_CHECKING:
    from .credits.service import CreditService
    from .runtime import JobsRuntime

_QUANTUM = Decimal("0.000001")  # credits are kept to 6 decimals
_MAX_PRICE = Decimal(10) ** 12


class PolicyBody(Body):
    """A team's whole policy (it replaces the one before)."""

    job_prices: dict[str, Decimal] = Field(default_factory=dict, max_length=1000)
    allowed_job_types: list[str] | None = Field(default=None, max_length=1000)
    failure_allowance_usd: Decimal | None = Field(
        default=None, max_digits=30, decimal_places=12, ge=0, allow_inf_nan=False
    )

    @field_validator("job_prices")
    @classmethod
    def _prices(cls, value: dict[str, Decimal]) -> dict[str, Decimal]:
        for job_type, price in value.items():
            check_job_type(job_type, param="job_prices")
            if not price.is_finite() or not 0 <= price <= _MAX_PRICE or price != price.quantize(_QUANTUM):
                raise ValueError(f"the price of {job_type!r} must be 0 to 10^12 credits with at most 6 decimals")
        return value

    @field_validator("allowed_job_types")
    @classmethod
    def _types(cls, value: list[str] | None) -> list[str] | None:
        for job_type in value or []:
            check_job_type(job_type, param="allowed_job_types")
        return value


def allowance_json(credits: CreditService, policy: decide.TeamPolicy, use: decide.FailureUse) -> dict[str, Any]:
    """A team's failure allowance (:func:`~litellm_jobs_plugin.credits.policies.allowance_json`)."""
    return policies.allowance_json(credits.settings, policy, use)


def add_policy_routes(router: APIRouter, runtime: JobsRuntime) -> None:
    body_dep = Depends(json_object_body(MAX_BODY_BYTES))  # resolved before auth: declared first
    auth = Depends(user_api_key_auth())

    @router.get("/api/teams/{team_id}/policy")
    @answer
    async def get_policy(team_id: str, key: Any = auth) -> JSONResponse:
        team = team_for(key, team_id)
        credits = await runtime.credits()
        policy, use = await read_policy(credits, team)
        return JSONResponse({**policy_json(team, policy), "failure_allowance": allowance_json(credits, policy, use)})

    @router.put("/api/teams/{team_id}/policy", openapi_extra=documented_body(PolicyBody))
    @answer
    async def put_policy(team_id: str, body: dict[str, Any] = body_dep, key: Any = auth) -> JSONResponse:
        if not caller_of(key).is_admin:
            raise Forbidden("Only the proxy admin may set a team's prices, job types and failure allowance.")
        team = check_team_id(team_id, param="team_id")
        req: PolicyBody = parse(PolicyBody, body)
        policy = decide.TeamPolicy(
            job_prices=dict(req.job_prices),
            allowed_job_types=None if req.allowed_job_types is None else frozenset(req.allowed_job_types),
            failure_allowance_usd=req.failure_allowance_usd,
        )
        credits = await runtime.credits()
        if credits.policies is None:  # pragma: no cover - the plugin always has them
            raise Forbidden("Team policies are not available on this proxy.")
        await credits.policies.put(team, policy)
        policy, use = await credits.policies.reload(team)
        return JSONResponse({**policy_json(team, policy), "failure_allowance": allowance_json(credits, policy, use)})


async def read_policy(credits: CreditService, team: str) -> tuple[decide.TeamPolicy, decide.FailureUse]:
    if credits.policies is None:  # pragma: no cover - the plugin always has them
        return decide.TeamPolicy(), decide.FailureUse()
    return await credits.policies.reload(team)
