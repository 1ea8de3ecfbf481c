"""Webhook endpoints, team thresholds and dead letters, over the store: what the routes and the
``litellm-jobs webhooks`` commands share."""

from __future__ import annotations

import base64
import secrets
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar
from urllib.parse import urlsplit

from ..errors import InvalidJobMetadata, JobsError
from ..metadata import check_team_id
from ..money import exact
from ..store.postgres import PostgresStore
from .events import EVENT_TYPES

MAX_URL_CHARS = 2048
ENDPOINT_ID_PREFIX = "we_"


class WebhookEndpointNotFound(JobsError):
    """No webhook endpoint has this id; list them with GET /api/webhooks/endpoints."""

    type: ClassVar[str] = "webhook_endpoint_not_found"
    status: ClassVar[int] = 404


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def new_endpoint_id() -> str:
    return ENDPOINT_ID_PREFIX + secrets.token_hex(12)


def check_url(value: object, *, param: str = "url") -> str:
    """An absolute http(s) URL with a host, printable, at most MAX_URL_CHARS characters."""
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_URL_CHARS or not value.isprintable():
        raise InvalidJobMetadata(
            f"{param} must be an http or https URL of at most {MAX_URL_CHARS} characters.", param=param
        )
    try:
        parts = urlsplit(value)
        port = parts.port  # raises on a port that is not a number or out of range
    except ValueError:
        raise InvalidJobMetadata(f"{param} is not a valid URL.", param=param) from None
    if parts.scheme not in ("http", "https") or not parts.hostname or " " in value:
        raise InvalidJobMetadata(f"{param} must be an http or https URL with a host.", param=param)
    del port
    return value


def check_event_types(value: object, *, param: str = "event_types") -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise InvalidJobMetadata(f"{param} must be a non-empty list of: {', '.join(EVENT_TYPES)}.", param=param)
    unknown = [v for v in value if v not in EVENT_TYPES]
    if unknown:
        raise InvalidJobMetadata(
            f"{param}: unknown event type {unknown[0][:64]!r}; use: {', '.join(EVENT_TYPES)}.", param=param
        )
    return sorted(set(value), key=EVENT_TYPES.index)


def check_endpoint_id(value: object, *, param: str = "endpoint_id") -> str:
    if (
        not isinstance(value, str)
        or not value.startswith(ENDPOINT_ID_PREFIX)
        or not 4 <= len(value) <= 64
        or not value.isascii()
        or not value[len(ENDPOINT_ID_PREFIX) :].isalnum()
    ):
        raise WebhookEndpointNotFound(f"No webhook endpoint {str(value)[:80]!r}.", param=param)
    return value


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def endpoint_json(row: dict[str, Any], *, secret: str | None = None) -> dict[str, Any]:
    """An endpoint as the routes and ``--json`` show it; its secret only when just made."""
    body: dict[str, Any] = {
        "endpoint_id": row["endpoint_id"],
        "url": row["url"],
        "team_id": row["team_id"],
        "event_types": list(row["event_types"]),
        "description": row["description"],
        "created_at": _time(row["created_at"]),
        "updated_at": _time(row["updated_at"]),
        "previous_secret_expires_at": _time(row["previous_secret_expires_at"]),
    }
    if "pending" in row:
        body["deliveries"] = {"pending": row["pending"], "delivered": row["delivered"], "dead": row["dead"]}
    if secret is not None:
        body["secret"] = secret
    return body


class Registry:
    def __init__(self, store: PostgresStore) -> None:
        self.store = store

    async def add(
        self, url: str, *, team_id: str | None, event_types: list[str], description: str | None
    ) -> dict[str, Any]:
        secret = new_secret()
        row = await self.store.fetch_one(
            "webhook_insert_endpoint",
            {
                "endpoint_id": new_endpoint_id(),
                "url": check_url(url),
                "team_id": None if team_id is None else check_team_id(team_id, param="team_id"),
                "event_types": check_event_types(event_types),
                "description": description,
                "secret": secret,
            },
        )
        assert row is not None
        return endpoint_json(row, secret=secret)

    async def endpoints(self, endpoint_id: str | None = None) -> list[dict[str, Any]]:
        rows = await self.store.fetch_all("webhook_list_endpoints", {"endpoint_id": endpoint_id})
        return [endpoint_json(r) for r in rows]

    async def get(self, endpoint_id: str) -> dict[str, Any]:
        found = await self.endpoints(check_endpoint_id(endpoint_id))
        if not found:
            raise WebhookEndpointNotFound(f"No webhook endpoint {endpoint_id!r}.", param="endpoint_id")
        return found[0]

    async def remove(self, endpoint_id: str) -> None:
        row = await self.store.fetch_one("webhook_delete_endpoint", {"endpoint_id": check_endpoint_id(endpoint_id)})
        if row is None:
            raise WebhookEndpointNotFound(f"No webhook endpoint {endpoint_id!r}.", param="endpoint_id")

    async def rotate(self, endpoint_id: str, *, overlap_s: float) -> dict[str, Any]:
        """A new secret; the old one is still signed with for ``overlap_s`` (0: not at all)."""
        secret = new_secret()
        row = await self.store.fetch_one(
            "webhook_rotate_secret",
            {"endpoint_id": check_endpoint_id(endpoint_id), "secret": secret, "overlap_s": overlap_s},
        )
        if row is None:
            raise WebhookEndpointNotFound(f"No webhook endpoint {endpoint_id!r}.", param="endpoint_id")
        return endpoint_json(row, secret=secret)

    async def set_threshold(self, team_id: str, threshold: Decimal | None) -> dict[str, Any]:
        row = await self.store.fetch_one(
            "webhook_set_threshold", {"team_id": check_team_id(team_id, param="team_id"), "threshold": threshold}
        )
        assert row is not None
        return threshold_json(row)

    async def threshold(self, team_id: str) -> dict[str, Any]:
        row = await self.store.fetch_one("webhook_get_threshold", {"team_id": check_team_id(team_id, param="team_id")})
        return threshold_json(row or {"team_id": team_id, "credits_low_threshold": None})

    async def dead_letters(self, endpoint_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        rows = await self.store.fetch_all(
            "webhook_dead_letters",
            {"endpoint_id": None if endpoint_id is None else check_endpoint_id(endpoint_id), "limit": limit},
        )
        return [
            {
                "event_id": r["event_id"],
                "endpoint_id": r["endpoint_id"],
                "url": r["url"],
                "event_type": r["event_type"],
                "team_id": r["team_id"],
                "job_id": r["job_id"],
                "attempts": r["attempts"],
                "last_status_code": r["last_status_code"],
                "last_error": r["last_error"],
                "created_at": _time(r["created_at"]),
                "dead_at": _time(r["dead_at"]),
            }
            for r in rows
        ]

    async def retry(self, endpoint_id: str | None = None, event_ids: list[str] | None = None) -> int:
        """Dead letters sent again (all, an endpoint's, or the events named); how many."""
        rows = await self.store.fetch_all(
            "webhook_retry_dead",
            {"endpoint_id": None if endpoint_id is None else check_endpoint_id(endpoint_id), "event_ids": event_ids},
        )
        if rows:
            await self.store.fetch_all("webhook_wake", {})
        return len(rows)

    async def counts(self) -> dict[str, Any]:
        row = await self.store.fetch_one("webhook_counts", {})
        assert row is not None
        return {
            "backlog": row["backlog"],
            "dead_letters": row["dead"],
            "oldest_pending_age_s": round(row["oldest_pending_s"] or 0.0, 3),
        }


def threshold_json(row: dict[str, Any]) -> dict[str, Any]:
    value = row.get("credits_low_threshold")
    return {"team_id": row["team_id"], "credits_low_threshold": None if value is None else exact(value)}
