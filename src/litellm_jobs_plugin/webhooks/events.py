"""Event types, the body of an event as the receivers get it, and its Standard Webhooks signature.

An outbox row keeps a *snapshot* of what the event reports (the job row, or the team's account, as
the transaction that changed it left them). Its body is rendered from that snapshot once, when it
is first sent, with the same models and money format as the routes, and kept: every endpoint and
every retry get the same bytes.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from standardwebhooks import Webhook

from ..models import Job
from ..money import dumps, exact

JOB_EVENTS = ("job.completed", "job.failed", "job.expired")
TEAM_EVENTS = ("credits.granted", "credits.low", "credits.exhausted", "failure_allowance.exhausted")
EVENT_TYPES: tuple[str, ...] = (*JOB_EVENTS, *TEAM_EVENTS)


def parse_snapshot(text: str) -> dict[str, Any]:
    """A snapshot as PostgreSQL wrote it (jsonb text): numbers as Decimals, every digit kept."""
    value = json.loads(text, parse_float=Decimal)
    if not isinstance(value, dict):
        raise ValueError("a webhook snapshot must be a JSON object")
    return value


def _amount(value: Any) -> str | None:
    return None if value is None else exact(Decimal(str(value)))


def account_json(account: dict[str, Any] | None, team_id: str) -> dict[str, Any]:
    """A team's balance, as ``GET /api/teams/{team_id}`` names it (money as exact strings)."""
    account = account or {}
    return {
        "team_id": team_id,
        "credits_allocated": _amount(account.get("credits_allocated", 0)),
        "credits_remaining": _amount(account.get("credits_remaining", 0)),
        "credits_held": _amount(account.get("credits_held", 0)),
        "credits_charged": _amount(account.get("credits_charged", 0)),
    }


def event_data(event_type: str, team_id: str, snapshot: dict[str, Any], job: Job | None = None) -> dict[str, Any]:
    """The ``data`` of an event. ``job``: the job row read when the event is first sent (it carries
    the result and error message the close route writes just after the closing transaction)."""
    if event_type in JOB_EVENTS:
        row = job if job is not None else Job.model_validate(snapshot)
        return row.model_dump(mode="json")
    data = account_json(snapshot.get("account"), team_id)
    if event_type == "credits.granted":
        entry = snapshot.get("entry") or {}
        data["grant"] = {
            "entry_id": entry.get("entry_id"),
            "kind": entry.get("kind"),
            "amount": _amount(entry.get("amount")),
            "note": entry.get("note"),
            "created_at": entry.get("created_at"),
        }
    elif event_type == "credits.low":
        data["credits_low_threshold"] = _amount(snapshot.get("threshold"))
    elif event_type == "failure_allowance.exhausted":
        window = float(snapshot.get("window_s") or 0)
        oldest = snapshot.get("oldest_at")
        frees_at = None
        if isinstance(oldest, str):
            frees_at = (datetime.fromisoformat(oldest) + timedelta(seconds=window)).isoformat()
        data["job_id"] = snapshot.get("job_id")
        data["failure_allowance"] = {
            "limit_usd": _amount(snapshot.get("limit_usd")),
            "used_usd": _amount(snapshot.get("used_usd")),
            "window_s": window,
            "exhausted": True,
            "frees_at": frees_at,
        }
    return data


def render(event_id: str, event_type: str, team_id: str, created_at: datetime, data: dict[str, Any]) -> str:
    """The body: ``{"id", "type", "timestamp", "data"}``, compact JSON."""
    body = {
        "id": event_id,
        "type": event_type,
        "timestamp": created_at.astimezone(UTC).isoformat(),
        "team_id": team_id,
        "data": data,
    }
    return dumps(body, ensure_ascii=False, separators=(",", ":"))


def signature(secrets: list[str], event_id: str, at: datetime, payload: str) -> str:
    """``webhook-signature``: one ``v1,<base64>`` per secret, space-separated (a rotation signs with both)."""
    return " ".join(Webhook(secret).sign(event_id, at, payload) for secret in secrets)


def headers(secrets: list[str], event_id: str, at: datetime, payload: str) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt (``webhook-id`` is the event's, on every attempt)."""
    return {
        "content-type": "application/json",
        "webhook-id": event_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature(secrets, event_id, at, payload),
    }
