"""Sinks: where usage events go, and the shape each system takes them in.

* ``cloudevents`` — CloudEvents 1.0 over HTTP, JSON format, as OpenMeter ingests them
  (``POST /api/v1/events``): batched (``application/cloudevents-batch+json``, the default) or
  one structured event per request (``application/cloudevents+json``).
* ``lago`` — Lago's event API: ``POST /api/v1/events`` with ``{"event": {...}}``, one per request.
* ``stripe`` — Stripe's billing meter events: ``POST /v1/billing/meter_events``, form-encoded.

Every request carries the sink's API key as ``Authorization: Bearer``. A sink delivers or raises
:class:`SinkError`; what a system answers for an id it already has counts as delivered.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal
from urllib.parse import urlencode

import httpx
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..money import exact
from .events import CLOSED_STATUSES, UsageEvent

SinkKind = Literal["cloudevents", "lago", "stripe"]
ClosedStatus = Literal["completed", "failed", "expired"]
Quantity = Literal["credits", "jobs", "calls", "tokens", "cost_usd"]

SINK_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")

#: The endpoint a sink posts to when the admin names none.
DEFAULT_URLS: dict[str, str | None] = {
    "cloudevents": None,  # OpenMeter Cloud or self-hosted: the admin names it
    "lago": "https://api.getlago.com/api/v1/events",
    "stripe": "https://api.stripe.com/v1/billing/meter_events",
}
#: The name of a job's and a call's events (CloudEvents ``type``, Lago ``code``, Stripe ``event_name``).
DEFAULT_NAMES: dict[str, tuple[str, str]] = {
    "cloudevents": ("litellm.job", "litellm.call"),
    "lago": ("litellm_job", "litellm_call"),
    "stripe": ("litellm_job_credits", "litellm_call_tokens"),
}


class SinkOptions(BaseModel):
    """How a sink shapes and filters events (every field optional; defaults per kind)."""

    model_config = ConfigDict(extra="forbid")

    include_calls: bool = Field(default=False, description="Also send one event per call of each exported job.")
    statuses: list[ClosedStatus] = Field(
        default_factory=lambda: list(CLOSED_STATUSES), min_length=1, description="Closed jobs to export."
    )
    event_name: str | None = Field(default=None, max_length=100, description="A job's event name.")
    call_event_name: str | None = Field(default=None, max_length=100, description="A call's event name.")
    source: str = Field(default="litellm-jobs", max_length=200, description="CloudEvents source.")
    content_mode: Literal["batch", "structured"] = Field(default="batch", description="CloudEvents content mode.")
    customer_field: Literal["external_subscription_id", "external_customer_id"] = Field(
        default="external_subscription_id", description="Lago: the field the team's customer id goes in."
    )
    value: Quantity = Field(default="credits", description="Stripe: a job event's payload.value.")
    call_value: Quantity = Field(default="tokens", description="Stripe: a call event's payload.value.")

    @field_validator("statuses")
    @classmethod
    def _distinct(cls, value: list[ClosedStatus]) -> list[ClosedStatus]:
        return list(dict.fromkeys(value))


@dataclass(frozen=True)
class Sink:
    """A configured sink, as stored (the API key is never shown)."""

    name: str
    kind: SinkKind
    url: str
    api_key: str | None
    enabled: bool
    options: SinkOptions

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Sink:
        return cls(
            name=row["name"],
            kind=row["kind"],
            url=row["url"],
            api_key=row["api_key"],
            enabled=bool(row["enabled"]),
            options=SinkOptions.model_validate(row["options"] or {}),
        )

    @property
    def needs_customer(self) -> bool:
        """Lago and Stripe bill a customer: a team without one is not sent. CloudEvents fall back to the team id."""
        return self.kind != "cloudevents"

    @property
    def batches(self) -> bool:
        return self.kind == "cloudevents" and self.options.content_mode == "batch"

    def name_of(self, event: UsageEvent) -> str:
        job_name, call_name = DEFAULT_NAMES[self.kind]
        if event.kind == "job":
            return self.options.event_name or job_name
        return self.options.call_event_name or call_name

    def public(self) -> dict[str, Any]:
        """The sink as routes and the CLI show it: ``api_key_set`` instead of the key."""
        return {
            "name": self.name,
            "kind": self.kind,
            "url": self.url,
            "api_key_set": bool(self.api_key),
            "enabled": self.enabled,
            "options": self.options.model_dump(mode="json"),
        }


class SinkError(Exception):
    """The sink did not take the events (its answer, shortened, is the message)."""


@dataclass(frozen=True)
class Delivery:
    """One event as a sink receives it, with the customer it is billed to."""

    event: UsageEvent
    customer_id: str | None


def _headers(sink: Sink, content_type: str) -> dict[str, str]:
    headers = {"content-type": content_type, "user-agent": "litellm-jobs-plugin"}
    if sink.api_key:
        headers["authorization"] = f"Bearer {sink.api_key}"
    return headers


# -- shapes ---------------------------------------------------------------------------------------


def cloud_event(sink: Sink, d: Delivery) -> CloudEvent:
    """CloudEvents 1.0: ``subject`` is the team's customer (OpenMeter's subject), else the team id."""
    return CloudEvent(
        attributes={
            "specversion": "1.0",
            "id": d.event.id,
            "source": sink.options.source,
            "type": sink.name_of(d.event),
            "subject": d.customer_id or d.event.team_id,
            "time": d.event.time,
            "datacontenttype": "application/json",
        },
        data=d.event.data,
    )


def lago_event(sink: Sink, d: Delivery) -> dict[str, Any]:
    assert d.customer_id is not None
    return {
        "event": {
            "transaction_id": d.event.id,
            sink.options.customer_field: d.customer_id,
            "code": sink.name_of(d.event),
            "timestamp": int(d.event.time.timestamp()),
            "properties": d.event.data,
        }
    }


def stripe_meter_event(sink: Sink, d: Delivery) -> dict[str, str]:
    """Stripe's form fields of a meter event (``payload[...]`` brackets as its v1 API takes them)."""
    assert d.customer_id is not None
    quantity = sink.options.value if d.event.kind == "job" else sink.options.call_value
    value: Decimal = d.event.quantities[quantity]
    return {
        "event_name": sink.name_of(d.event),
        "identifier": d.event.id,
        "timestamp": str(int(d.event.time.timestamp())),
        "payload[stripe_customer_id]": d.customer_id,
        "payload[value]": exact(value),
    }


# -- sending --------------------------------------------------------------------------------------


def _already_there(sink: Sink, response: httpx.Response) -> bool:
    """The system refused the event because it already has its id: delivered before."""
    text = response.text[:2000].lower()
    if sink.kind == "lago":
        return response.status_code == 422 and "transaction_id" in text and "already" in text
    if sink.kind == "stripe":
        return response.status_code == 400 and "identifier" in text and ("already" in text or "duplicate" in text)
    return False


async def _post(client: httpx.AsyncClient, sink: Sink, content: bytes, content_type: str) -> None:
    try:
        response = await client.post(sink.url, content=content, headers=_headers(sink, content_type))
    except httpx.HTTPError as exc:
        raise SinkError(f"{type(exc).__name__}: {exc}"[:500]) from exc
    if response.is_success or _already_there(sink, response):
        return
    raise SinkError(f"HTTP {response.status_code}: {response.text[:300]}")


async def send(client: httpx.AsyncClient, sink: Sink, deliveries: Sequence[Delivery]) -> None:
    """Deliver ``deliveries`` to ``sink`` (one request for a CloudEvents batch, else one per event)."""
    if not deliveries:
        return
    fmt = JSONFormat()
    if sink.kind == "cloudevents":
        events = [cloud_event(sink, d) for d in deliveries]
        if sink.batches:
            body = b"[" + b",".join(fmt.write(e) for e in events) + b"]"
            await _post(client, sink, body, "application/cloudevents-batch+json")
            return
        for event in events:
            await _post(client, sink, fmt.write(event), fmt.get_content_type())
        return
    for d in deliveries:
        if sink.kind == "lago":
            await _post(client, sink, json.dumps(lago_event(sink, d)).encode(), "application/json")
        else:
            body = urlencode(stripe_meter_event(sink, d)).encode()
            await _post(client, sink, body, "application/x-www-form-urlencoded")
