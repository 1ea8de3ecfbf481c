"""Credit top-ups from Stripe: a verified webhook event becomes a grant, once.

Handled events: ``checkout.session.completed`` and ``checkout.session.async_payment_succeeded``
(a paid Checkout Session) and ``invoice.paid``. The team is the object's ``metadata.team_id``, a
Checkout Session's ``client_reference_id``, an invoice's subscription metadata, or the team whose
Stripe customer it is (a ``stripe`` sink's customer mapping). The credits are ``metadata.credits``,
else, for an invoice, the sum over its lines of the admin's credits per Stripe price × quantity.

Every handled event is recorded (``stripe_events``) with its outcome; the grant's idempotency key
is ``stripe:<event id>``, so a replayed event never grants twice, in every credit mode.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import stripe

from ..metadata import check_team_id
from ..store.postgres import PostgresStore
from .sql import Conn, rows

HANDLED = frozenset({"checkout.session.completed", "checkout.session.async_payment_succeeded", "invoice.paid"})
_QUANTUM = Decimal("0.000001")
_MAX_CREDITS = Decimal(10) ** 14

Grant = Callable[[str, Decimal, str, str], Awaitable[Any]]
"""(team_id, credits, idempotency_key, note) → the grant, through CreditService.grant."""


class BadSignature(Exception):
    """The body is not one Stripe signed with this endpoint's secret, or it was signed too long ago."""


def verify(payload: bytes, header: str | None, secret: str, tolerance_s: int) -> dict[str, Any]:
    """The event of a webhook body whose ``Stripe-Signature`` is valid and recent (Stripe's own check)."""
    if not header:
        raise BadSignature("The Stripe-Signature header is missing.")
    try:
        text = payload.decode("utf-8")
        stripe.WebhookSignature.verify_header(text, header, secret, tolerance_s)
    except UnicodeDecodeError:
        raise BadSignature("The body is not UTF-8.") from None
    except stripe.SignatureVerificationError as exc:
        raise BadSignature(f"The Stripe signature does not verify: {exc.user_message or exc}") from None
    try:
        event = json.loads(text)
    except ValueError:
        raise BadSignature("The signed body is not JSON.") from None
    if not isinstance(event, dict) or not isinstance(event.get("id"), str) or not isinstance(event.get("type"), str):
        raise BadSignature("The signed body is not a Stripe event.")
    return event


def _metadata(obj: Any) -> dict[str, Any]:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    return meta if isinstance(meta, dict) else {}


def _credits(text: Any) -> Decimal | None:
    """A positive amount of credits with at most 6 decimals, else None."""
    try:
        value = Decimal(str(text).strip())
    except (InvalidOperation, ValueError):
        return None
    if not value.is_finite() or value <= 0 or value >= _MAX_CREDITS or value != value.quantize(_QUANTUM):
        return None
    return value


def _price_id(line: dict[str, Any]) -> str | None:
    """A line's Stripe price id: ``price.id`` (older API versions) or ``pricing.price_details.price``."""
    price = line.get("price")
    if isinstance(price, dict) and isinstance(price.get("id"), str):
        return str(price["id"])
    if isinstance(price, str):
        return price
    pricing = line.get("pricing")
    details = pricing.get("price_details") if isinstance(pricing, dict) else None
    if isinstance(details, dict) and isinstance(details.get("price"), str):
        return str(details["price"])
    return None


@dataclass(frozen=True)
class Claim:
    """What an event asks for: the team (as named), the credits, or why there are none."""

    team_id: str | None
    credits: Decimal | None
    status: str  # received (grantable) | no_credits | invalid | unpaid
    detail: str | None = None


async def claim_of(store: PostgresStore, event: dict[str, Any], conn: Conn) -> Claim:
    obj = (event.get("data") or {}).get("object") or {}
    if not isinstance(obj, dict):
        return Claim(None, None, "invalid", "data.object is not an object")
    meta = _metadata(obj)
    team: Any = meta.get("team_id")
    if event["type"].startswith("checkout.session."):
        team = team or obj.get("client_reference_id")
        if obj.get("payment_status") not in ("paid", "no_payment_required"):
            return Claim(_team(team), None, "unpaid", f"payment_status is {obj.get('payment_status')!r}")
    else:
        parent = obj.get("parent") if isinstance(obj.get("parent"), dict) else {}
        for details in (obj.get("subscription_details"), (parent or {}).get("subscription_details")):
            team = team or _metadata(details).get("team_id")
    customer = obj.get("customer")
    if not team and isinstance(customer, str):
        found = await rows(store, "team_of_stripe_customer", {"customer_id": customer}, conn)
        team = found[0]["team_id"] if found else None
    team_id = _team(team)
    if team and team_id is None:
        return Claim(None, None, "invalid", f"team_id {str(team)[:80]!r} is not a valid team id")
    if "credits" in meta:
        credits = _credits(meta["credits"])
        if credits is None:
            return Claim(team_id, None, "invalid", "metadata.credits is not a positive amount with at most 6 decimals")
        return Claim(team_id, credits, "received")
    if event["type"] == "invoice.paid":
        return await _invoice_credits(store, obj, team_id, conn)
    return Claim(team_id, None, "no_credits", "no metadata.credits on the Checkout Session")


async def _invoice_credits(store: PostgresStore, invoice: dict[str, Any], team_id: str | None, conn: Conn) -> Claim:
    lines = (invoice.get("lines") or {}).get("data") or []
    wanted = [
        (p, int(line.get("quantity") or 1)) for line in lines if isinstance(line, dict) and (p := _price_id(line))
    ]
    prices = {
        r["price_id"]: Decimal(r["credits"])
        for r in await rows(store, "stripe_price_credits", {"price_ids": [p for p, _ in wanted]}, conn)
    }
    total = sum((prices[p] * q for p, q in wanted if p in prices), Decimal(0))
    if total <= 0:
        return Claim(team_id, None, "no_credits", "no metadata.credits and no line's price has credits set")
    return Claim(team_id, total, "received")


def _team(value: Any) -> str | None:
    if not value:
        return None
    try:
        return check_team_id(value, param="team_id")
    except Exception:
        return None


@dataclass(frozen=True)
class Outcome:
    event_id: str
    status: str  # granted | unknown_team | no_credits | invalid | unpaid | ignored
    replayed: bool
    row: dict[str, Any] | None


async def handle(store: PostgresStore, event: dict[str, Any], grant: Grant) -> Outcome:
    """Record a verified event and grant its credits if it names a known team (idempotent per event id)."""
    event_id, kind = event["id"], event["type"]
    if kind not in HANDLED:
        return Outcome(event_id, "ignored", False, None)
    obj = (event.get("data") or {}).get("object") or {}
    object_id = obj.get("id") if isinstance(obj, dict) and isinstance(obj.get("id"), str) else None
    async with store.transaction() as conn:
        await rows(
            store,
            "record_stripe_event",
            {"event_id": event_id, "type": kind, "object_id": object_id, "payload": json.dumps(event)},
            conn,
        )
        current = (await rows(store, "lock_stripe_event", {"event_id": event_id}, conn))[0]
        if current["status"] == "granted":
            return Outcome(event_id, "granted", True, current)
        claim = await claim_of(store, event, conn)
        status, detail = claim.status, claim.detail
        if status == "received":
            assert claim.credits is not None
            known = (
                claim.team_id is not None
                and (await rows(store, "team_is_known", {"team_id": claim.team_id}, conn))[0]["known"]
            )
            if not known:
                status = "unknown_team"
                detail = (
                    "no team named" if claim.team_id is None else "a team with no credits, jobs, policy or customer"
                )
            else:
                assert claim.team_id is not None
                await grant(
                    claim.team_id, claim.credits, f"stripe:{event_id}", f"Stripe {kind} {object_id or ''}".strip()
                )
                status = "granted"
        row = (
            await rows(
                store,
                "settle_stripe_event",
                {
                    "event_id": event_id,
                    "status": status,
                    "team_id": claim.team_id,
                    "credits": claim.credits,
                    "detail": detail,
                },
                conn,
            )
        )[0]
        return Outcome(event_id, status, current["status"] != "received", row)


class EventNotFound(Exception):
    pass


class NotApplicable(Exception):
    pass


async def apply_event(
    store: PostgresStore, event_id: str, team_id: str | None, grant: Grant
) -> tuple[dict[str, Any], bool]:
    """The admin's decision on a recorded event: grant its credits to ``team_id`` (default: the team it named).

    Returns (the event's row, granted now). An event already granted changes nothing.
    """
    async with store.transaction() as conn:
        found = await rows(store, "lock_stripe_event", {"event_id": event_id}, conn)
        if not found:
            raise EventNotFound(f"No Stripe event {event_id!r} was recorded.")
        current = found[0]
        if current["status"] == "granted":
            return current, False
        team = team_id or current["team_id"]
        if team is None:
            raise NotApplicable("The event names no team: give one.")
        if current["credits"] is None:
            raise NotApplicable(f"The event carries no credits ({current['status']}: {current['detail']}).")
        await grant(
            team, Decimal(current["credits"]), f"stripe:{event_id}", f"Stripe {current['type']} (applied by the admin)"
        )
        row = (
            await rows(
                store,
                "settle_stripe_event",
                {
                    "event_id": event_id,
                    "status": "granted",
                    "team_id": team,
                    "credits": current["credits"],
                    "detail": "applied by the admin",
                },
                conn,
            )
        )[0]
        return row, True
