"""Usage events: a closed job (and, if a sink asks, each of its calls) as one event with a
deterministic id, so that sending it again — a retry, a crash, a backfill — never bills twice."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from ..money import exact

#: The namespace of every usage event id (UUIDv5). Never change it: ids already sent would change.
USAGE_NAMESPACE = uuid.UUID("6f1c2a52-8d57-5b9e-9a8e-3c0d1f4b7e21")

CLOSED_STATUSES: tuple[Literal["completed", "failed", "expired"], ...] = ("completed", "failed", "expired")


def _part(text: str) -> str:
    """A length-prefixed part: no team or job id can make two different keys read the same."""
    return f"{len(text)}:{text}"


def job_event_id(team_id: str, job_id: str, status: str) -> str:
    """The id of a closed job's usage event: UUIDv5 of its team, job and closing status."""
    return str(uuid.uuid5(USAGE_NAMESPACE, f"job/{_part(team_id)}/{_part(job_id)}/{status}"))


def call_event_id(team_id: str, job_id: str, call_id: str) -> str:
    """The id of one call's usage event: UUIDv5 of its team, job and call."""
    return str(uuid.uuid5(USAGE_NAMESPACE, f"call/{_part(team_id)}/{_part(job_id)}/{_part(call_id)}"))


@dataclass(frozen=True)
class UsageEvent:
    """One usage event, before a sink shapes it for its system."""

    id: str
    kind: Literal["job", "call"]
    team_id: str
    time: datetime
    data: dict[str, Any]
    #: What a sink that meters one number sends (Stripe's ``payload.value``), by the sink's choice.
    quantities: dict[str, Decimal] = field(default_factory=dict)


def job_event(row: dict[str, Any]) -> UsageEvent:
    """A closed job's event from its row (``outbox_page`` / ``closed_jobs_since``)."""
    prompt, completion = int(row["prompt_tokens"]), int(row["completion_tokens"])
    credits = Decimal(row["credits_charged"])
    cost = Decimal(row["total_cost_usd"])
    closed_at: datetime = (row["completed_at"] or row["closed_at"]).astimezone(UTC)
    return UsageEvent(
        id=job_event_id(row["team_id"], row["job_id"], row["status"]),
        kind="job",
        team_id=row["team_id"],
        time=closed_at,
        data={
            "team_id": row["team_id"],
            "job_id": row["job_id"],
            "job_type": row["job_type"],
            "status": row["status"],
            "credits": exact(credits),
            "cost_usd": exact(cost),
            "calls": int(row["total_calls"]),
            "successful_calls": int(row["successful_calls"]),
            "failed_calls": int(row["failed_calls"]),
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "closed_at": closed_at.isoformat(),
        },
        quantities={
            "credits": credits,
            "jobs": Decimal(1),
            "calls": Decimal(int(row["total_calls"])),
            "tokens": Decimal(prompt + completion),
            "cost_usd": cost,
        },
    )


def call_event(job: dict[str, Any], call: dict[str, Any]) -> UsageEvent:
    """One call of a closed job as its own event."""
    prompt, completion = int(call["prompt_tokens"]), int(call["completion_tokens"])
    cost = Decimal(call["cost_usd"])
    ended_at: datetime = call["ended_at"].astimezone(UTC)
    return UsageEvent(
        id=call_event_id(job["team_id"], job["job_id"], call["call_id"]),
        kind="call",
        team_id=job["team_id"],
        time=ended_at,
        data={
            "team_id": job["team_id"],
            "job_id": job["job_id"],
            "job_type": job["job_type"],
            "job_status": job["status"],
            "call_id": call["call_id"],
            "model_group": call["model_group"],
            "model": call["model"],
            "provider": call["provider"],
            "status": call["status"],
            "cache_hit": bool(call["cache_hit"]),
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "cost_usd": exact(cost),
            "ended_at": ended_at.isoformat(),
        },
        quantities={
            "credits": Decimal(0),  # credits are charged per job, never per call
            "jobs": Decimal(0),
            "calls": Decimal(1),
            "tokens": Decimal(prompt + completion),
            "cost_usd": cost,
        },
    )
