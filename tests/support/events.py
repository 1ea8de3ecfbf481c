"""Builders of CallEvent values for store and writer tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from litellm_jobs_plugin.litellm_adapter import event_id_of
from litellm_jobs_plugin.models import CallContext, CallEvent, CallStatus

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def context(
    team_id: str = "team-a",
    job_id: str | None = "job-1",
    job_type: str = "doc",
    single_call: bool = False,
    **extra: Any,
) -> CallContext:
    return CallContext(
        team_id=team_id,
        job_id=job_id,
        job_type=job_type,
        single_call=single_call,
        requested_model=extra.pop("requested_model", "ChatAgent"),
        key_hash="hash",
        user_id="u",
        **extra,
    )


def event(
    call_id: str | None = None,
    *,
    status: CallStatus = CallStatus.SUCCESS,
    ctx: CallContext | None = None,
    cost: str = "0.001",
    prompt: int = 10,
    completion: int = 5,
    model: str = "openai/gpt-4o-mini",
    model_group: str = "ChatAgent",
    offset_s: float = 0.0,
    attempt: str = "a",
) -> CallEvent:
    call_id = call_id or str(uuid.uuid4())
    started = T0 + timedelta(seconds=offset_s)
    ended = started + timedelta(milliseconds=250)
    ctx = ctx or context()
    event_id = event_id_of(ctx.team_id, call_id, status, attempt)
    return CallEvent(
        event_id=event_id,
        call_id=call_id,
        context=ctx,
        status=status,
        call_type="acompletion",
        model_group=model_group,
        model=model,
        model_id=f"id-{model}",
        provider="openai",
        prompt_tokens=prompt if status is CallStatus.SUCCESS else 0,
        completion_tokens=completion if status is CallStatus.SUCCESS else 0,
        cost_usd=Decimal(cost) if status is CallStatus.SUCCESS else Decimal(0),
        cache_hit=False,
        stream=False,
        started_at=started,
        ended_at=ended,
        latency_ms=250,
        error_type=None if status is CallStatus.SUCCESS else "InternalServerError",
        error_code=None if status is CallStatus.SUCCESS else "500",
    )
