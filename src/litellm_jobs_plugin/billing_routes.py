"""``/api/billing/...``: usage sinks, the team → customer mappings, Stripe top-ups.

Everything is for the proxy admin, except the Stripe webhook: Stripe sends no LiteLLM key, so
that route takes none and trusts only the body's ``Stripe-Signature`` (docs/stripe.md).
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import Field, SecretStr, field_validator

from . import money as money_
from .billing.exporter import load_sinks
from .billing.sinks import DEFAULT_URLS, SINK_NAME, SinkOptions
from .billing.sql import rows
from .billing.stripe_topups import BadSignature, EventNotFound, NotApplicable, apply_event, handle, verify
from .errors import (
    BillingNotConfigured,
    BillingNotFound,
    Forbidden,
    InvalidJobMetadata,
    InvalidWebhookSignature,
)
from .metadata import check_team_id
from .route_kit import (
    MAX_BODY_BYTES,
    Body,
    JSONResponse,
    answer,
    caller_of,
    documented_body,
    json_object_body,
    parse,
    read_body,
    user_api_key_auth,
)

if TYPE_CHECKING:
    from .runtime import JobsRuntime
    from .store.postgres import PostgresStore

EVENT_STATUSES = ("granted", "unknown_team", "no_credits", "invalid", "unpaid", "received")
#: Stripe's events are a few KiB; an invoice with many lines stays far below this.
WEBHOOK_MAX_BYTES = 1024 * 1024


class SinkBody(Body):
    """A sink's whole configuration (it replaces the one before; an omitted api_key keeps the stored one)."""

    kind: Literal["cloudevents", "lago", "stripe"]
    url: str | None = Field(default=None, max_length=2000)
    api_key: SecretStr | None = Field(default=None)
    enabled: bool = True
    options: SinkOptions = Field(default_factory=SinkOptions)

    @field_validator("url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("url must be an http:// or https:// URL")
        return value


class CustomerBody(Body):
    customer_id: str = Field(min_length=1, max_length=255)


class StripePriceBody(Body):
    credits: Decimal = Field(gt=0, max_digits=20, decimal_places=6, allow_inf_nan=False)


class ApplyBody(Body):
    team_id: str | None = None


def check_sink_name(name: str) -> str:
    if not SINK_NAME.fullmatch(name):
        raise InvalidJobMetadata(
            "A sink name is 1-64 of a-z, 0-9, _ and -, starting with a letter or digit.", param="name"
        )
    return name


async def put_sink(store: PostgresStore, name: str, req: SinkBody) -> dict[str, Any]:
    """Create or replace a sink (its cursor starts at the current end: history goes by a backfill)."""
    url = req.url or DEFAULT_URLS[req.kind]
    if url is None:
        raise InvalidJobMetadata(f"A {req.kind} sink needs a url.", param="url")
    await rows(
        store,
        "put_sink",
        {
            "name": name,
            "kind": req.kind,
            "url": url,
            "api_key": None if req.api_key is None else req.api_key.get_secret_value(),
            "keep_key": "api_key" not in req.model_fields_set,
            "enabled": req.enabled,
            "options": req.options.model_dump_json(),
        },
    )
    await rows(store, "start_cursor", {"sink": name})
    return (await sinks_json(store, name))[0]


async def sinks_json(store: PostgresStore, name: str | None = None) -> list[dict[str, Any]]:
    """Sinks as shown to the admin: configuration (no API key), cursor, errors and unmapped teams."""
    out = []
    for sink, row in await load_sinks(store, name):
        out.append(
            {
                **sink.public(),
                "exported": int(row["exported"] or 0),
                "last_sent_at": _iso(row["last_sent_at"]),
                "last_error": row["last_error"],
                "last_error_at": _iso(row["last_error_at"]),
                "unmapped_events": int(row["unmapped_events"]),
                "unmapped_teams": list(row["unmapped_teams"]),
            }
        )
    return out


async def put_customer(store: PostgresStore, sink: str, team: str, customer_id: str) -> dict[str, Any]:
    if not await load_sinks(store, sink):
        raise BillingNotFound(f"No sink {sink!r}.", param="sink")
    row = (await rows(store, "put_customer", {"sink": sink, "team_id": team, "customer_id": customer_id}))[0]
    await rows(store, "forget_unmapped", {"sink": sink, "team_id": team})
    return customer_json(row)


def customer_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "sink": row["sink"],
        "team_id": row["team_id"],
        "customer_id": row["customer_id"],
        "updated_at": _iso(row["updated_at"]),
    }


def stripe_event_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "event_id": row["event_id"],
        "type": row["type"],
        "object_id": row["object_id"],
        "team_id": row["team_id"],
        "credits": None if row["credits"] is None else money_.exact(row["credits"]),
        "status": row["status"],
        "detail": row["detail"],
        "received_at": _iso(row["received_at"]),
        "updated_at": _iso(row["updated_at"]),
    }


def price_json(row: dict[str, Any]) -> dict[str, Any]:
    return {"price_id": row["price_id"], "credits": money_.exact(row["credits"]), "updated_at": _iso(row["updated_at"])}


def _iso(value: Any) -> str | None:
    return None if value is None else str(value.isoformat())


def _admin(key: Any) -> None:
    if not caller_of(key).is_admin:
        raise Forbidden("Only the proxy admin may see or change billing settings.")


def _stripe_id(value: str, param: str) -> str:
    if not value or len(value) > 255 or not value.isprintable():
        raise InvalidJobMetadata(f"{param} is not a Stripe id.", param=param)
    return value


def add_billing_routes(router: APIRouter, runtime: JobsRuntime) -> None:
    body_dep = Depends(json_object_body(MAX_BODY_BYTES))  # resolved before auth: declared first
    auth = Depends(user_api_key_auth())

    @router.get("/api/billing/sinks")
    @answer
    async def list_sinks(key: Any = auth) -> JSONResponse:
        """Usage sinks with their export cursor: events exported, the last error, teams with no customer."""
        _admin(key)
        return JSONResponse({"sinks": await sinks_json(await runtime.ready())})

    @router.put("/api/billing/sinks/{name}", openapi_extra=documented_body(SinkBody))
    @answer
    async def set_sink(name: str, body: dict[str, Any] = body_dep, key: Any = auth) -> JSONResponse:
        """Create or replace a usage sink; its API key is stored and never shown again."""
        _admin(key)
        req: SinkBody = parse(SinkBody, body)
        return JSONResponse(await put_sink(await runtime.ready(), check_sink_name(name), req))

    @router.get("/api/billing/sinks/{name}/customers")
    @answer
    async def list_customers(name: str, key: Any = auth) -> JSONResponse:
        _admin(key)
        store = await runtime.ready()
        found = await rows(store, "list_customers", {"sink": check_sink_name(name)})
        return JSONResponse({"sink": name, "customers": [customer_json(r) for r in found]})

    @router.put("/api/billing/sinks/{name}/customers/{team_id}", openapi_extra=documented_body(CustomerBody))
    @answer
    async def set_customer(name: str, team_id: str, body: dict[str, Any] = body_dep, key: Any = auth) -> JSONResponse:
        """The team's customer in the sink's system (Stripe customer, Lago subscription, OpenMeter subject)."""
        _admin(key)
        req: CustomerBody = parse(CustomerBody, body)
        team = check_team_id(team_id, param="team_id")
        return JSONResponse(await put_customer(await runtime.ready(), check_sink_name(name), team, req.customer_id))

    @router.post("/api/billing/stripe/webhook")
    @answer
    async def stripe_webhook(request: Request) -> JSONResponse:
        """Stripe's events: no key, verified by their Stripe-Signature; paid Checkouts and invoices grant credits."""
        secret = runtime.settings.stripe_webhook_secret
        if secret is None:
            raise BillingNotConfigured("Stripe webhooks are off: JOBS_STRIPE_WEBHOOK_SECRET is not set.")
        raw = await read_body(request, WEBHOOK_MAX_BYTES)
        try:
            event = verify(
                raw,
                request.headers.get("stripe-signature"),
                secret.get_secret_value(),
                runtime.settings.stripe_webhook_tolerance_s,
            )
        except BadSignature as exc:
            raise InvalidWebhookSignature(str(exc), param="Stripe-Signature") from None
        credits = await runtime.credits()

        async def grant(team: str, amount: Decimal, idempotency_key: str, note: str) -> None:
            await credits.grant(team, amount, kind="grant", idempotency_key=idempotency_key, note=note)

        outcome = await handle(await runtime.ready(), event, grant)
        return JSONResponse(
            {
                "received": True,
                "event_id": outcome.event_id,
                "outcome": outcome.status,
                "replayed": outcome.replayed,
            }
        )

    @router.get("/api/billing/stripe/events")
    @answer
    async def list_stripe_events(
        status: str | None = Query(default=None),
        limit: int = Query(default=100, ge=1, le=1000),
        key: Any = auth,
    ) -> JSONResponse:
        """Recorded Stripe events, newest first; ?status=unknown_team lists the top-ups waiting for the admin."""
        _admin(key)
        if status is not None and status not in EVENT_STATUSES:
            raise InvalidJobMetadata(f"status must be one of {', '.join(EVENT_STATUSES)}.", param="status")
        found = await rows(await runtime.ready(), "list_stripe_events", {"status": status, "limit": limit})
        return JSONResponse({"events": [stripe_event_json(r) for r in found]})

    @router.post("/api/billing/stripe/events/{event_id}/apply", openapi_extra=documented_body(ApplyBody))
    @answer
    async def apply_stripe_event(event_id: str, body: dict[str, Any] = body_dep, key: Any = auth) -> JSONResponse:
        """Grant a recorded event's credits (to the team given, else the one it named); once per event."""
        _admin(key)
        req: ApplyBody = parse(ApplyBody, body)
        team = None if req.team_id is None else check_team_id(req.team_id, param="team_id")
        credits = await runtime.credits()

        async def grant(team: str, amount: Decimal, idempotency_key: str, note: str) -> None:
            await credits.grant(team, amount, kind="grant", idempotency_key=idempotency_key, note=note)

        try:
            row, granted = await apply_event(await runtime.ready(), _stripe_id(event_id, "event_id"), team, grant)
        except EventNotFound as exc:
            raise BillingNotFound(str(exc), param="event_id") from None
        except NotApplicable as exc:
            raise InvalidJobMetadata(str(exc), param="team_id") from None
        return JSONResponse({**stripe_event_json(row), "granted_now": granted})

    @router.get("/api/billing/stripe/prices")
    @answer
    async def list_stripe_prices(key: Any = auth) -> JSONResponse:
        _admin(key)
        found = await rows(await runtime.ready(), "list_stripe_prices", {})
        return JSONResponse({"prices": [price_json(r) for r in found]})

    @router.put("/api/billing/stripe/prices/{price_id}", openapi_extra=documented_body(StripePriceBody))
    @answer
    async def set_stripe_price(price_id: str, body: dict[str, Any] = body_dep, key: Any = auth) -> JSONResponse:
        """Credits one unit of a Stripe price is worth (an invoice.paid without metadata.credits uses them)."""
        _admin(key)
        req: StripePriceBody = parse(StripePriceBody, body)
        row = (
            await rows(
                await runtime.ready(),
                "put_stripe_price",
                {"price_id": _stripe_id(price_id, "price_id"), "credits": req.credits},
            )
        )[0]
        return JSONResponse(price_json(row))
