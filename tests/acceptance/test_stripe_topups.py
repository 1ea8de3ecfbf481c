"""Credit top-ups from Stripe against a real proxy, in the three credit modes: events signed in the
test with Stripe's own scheme (``t=...,v1=...``: HMAC-SHA256 of ``"{t}.{body}"``, the stripe
library's ``WebhookSignature``), valid, tampered, unsigned, stale, replayed, for an unknown team."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import stripe

from tests.conftest import query
from tests.support.services import Proxy

SECRET = "whsec_test_0123456789abcdef"
ADMIN = {"Authorization": "Bearer sk-master"}
WEBHOOK = "/api/billing/stripe/webhook"


def checkout_event(team: str | None, credits: str | None, **session: Any) -> dict[str, Any]:
    metadata = {k: v for k, v in (("team_id", team), ("credits", credits)) if v is not None}
    return {
        "id": f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "type": "checkout.session.completed",
        "created": int(time.time()),
        "livemode": False,
        "data": {
            "object": {
                "id": f"cs_test_{uuid.uuid4().hex}",
                "object": "checkout.session",
                "mode": "payment",
                "payment_status": "paid",
                "customer": "cus_Test",
                "metadata": metadata,
                **session,
            }
        },
    }


def send(
    proxy: Proxy,
    event: dict[str, Any] | bytes,
    *,
    at: int | None = None,
    secret: str = SECRET,
    tamper: bool = False,
    signed: bool = True,
) -> httpx.Response:
    body = event if isinstance(event, bytes) else json.dumps(event).encode()
    headers = {"content-type": "application/json"}
    if signed:
        headers["Stripe-Signature"] = stripe.WebhookSignature.generate_signature_header(
            body.decode(), secret, timestamp=at or int(time.time())
        )
    if tamper:
        body = body.replace(b'"credits": "', b'"credits": "9')
    return httpx.post(f"{proxy.url}{WEBHOOK}", content=body, headers=headers, timeout=30)


def allocated(proxy: Proxy, team: str) -> Decimal:
    r = httpx.get(f"{proxy.url}/api/teams/{team}", headers=ADMIN, timeout=30)
    r.raise_for_status()
    return Decimal(str(json.loads(r.text, parse_float=Decimal)["credits_allocated"]))


def test_stripe_top_ups_grant_exactly_once_in_every_credit_mode(
    start_proxy: Callable[..., Proxy], database_url: str, credit_mode: dict[str, str]
) -> None:
    proxy = start_proxy(database_url, env={**credit_mode, "JOBS_STRIPE_WEBHOOK_SECRET": SECRET})
    proxy.grant("team-a", "10")

    # valid: granted, exactly
    paid = checkout_event("team-a", "12.345678")
    r = send(proxy, paid)
    assert r.status_code == 200, r.text
    assert r.json() == {"received": True, "event_id": paid["id"], "outcome": "granted", "replayed": False}
    assert allocated(proxy, "team-a") == Decimal("22.345678")

    # replayed (Stripe retries, or someone resends a captured body): 200, no second grant
    r = send(proxy, paid)
    assert (r.status_code, r.json()["replayed"], r.json()["outcome"]) == (200, True, "granted")
    assert allocated(proxy, "team-a") == Decimal("22.345678")

    # tampered body, missing signature, wrong secret, stale timestamp: 400, nothing changed
    for bad in (
        send(proxy, checkout_event("team-a", "5"), tamper=True),
        send(proxy, checkout_event("team-a", "5"), signed=False),
        send(proxy, checkout_event("team-a", "5"), secret="whsec_someone_else"),
        send(proxy, checkout_event("team-a", "5"), at=int(time.time()) - 3600),
    ):
        assert bad.status_code == 400, bad.text
        assert bad.json()["error"]["type"] == "invalid_webhook_signature"
    assert allocated(proxy, "team-a") == Decimal("22.345678")
    assert len(query(database_url, "SELECT 1 FROM stripe_events")) == 1  # refused bodies are never recorded

    # Checkout's client_reference_id names the team too; a body past 1 MiB is refused unread
    ref = checkout_event(None, "1", client_reference_id="team-a")
    assert send(proxy, ref).json()["outcome"] == "granted"
    assert allocated(proxy, "team-a") == Decimal("23.345678")
    huge = checkout_event("team-a", "1", padding="x" * (1024 * 1024))
    assert send(proxy, huge).status_code == 400

    # an unknown team: recorded, not granted, visible to the admin, then applied once
    stray = checkout_event("team-never-seen", "7")
    r = send(proxy, stray)
    assert (r.status_code, r.json()["outcome"]) == (200, "unknown_team")
    listed = httpx.get(f"{proxy.url}/api/billing/stripe/events", params={"status": "unknown_team"}, headers=ADMIN)
    assert [(e["event_id"], e["team_id"], e["credits"]) for e in listed.json()["events"]] == [
        (stray["id"], "team-never-seen", "7")
    ]
    assert (
        httpx.get(f"{proxy.url}/api/billing/stripe/events", headers={"Authorization": "Bearer sk-team-a"}).status_code
        == 403
    )
    apply = f"{proxy.url}/api/billing/stripe/events/{stray['id']}/apply"
    r = httpx.post(apply, json={"team_id": "team-b"}, headers=ADMIN, timeout=30)
    assert (r.status_code, r.json()["status"], r.json()["granted_now"]) == (200, "granted", True), r.text
    assert allocated(proxy, "team-b") == Decimal("7")
    r = httpx.post(apply, json={"team_id": "team-c"}, headers=ADMIN, timeout=30)
    assert (r.json()["granted_now"], r.json()["team_id"]) == (False, "team-b")
    assert allocated(proxy, "team-b") == Decimal("7")
    assert send(proxy, stray).json()["outcome"] == "granted"  # its replay now finds it granted
    assert allocated(proxy, "team-b") == Decimal("7")

    # invoice.paid, credits from the admin's price mapping × quantity
    r = httpx.put(f"{proxy.url}/api/billing/stripe/prices/price_pack", json={"credits": "2.5"}, headers=ADMIN)
    assert r.status_code == 200, r.text
    invoice = {
        "id": f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "type": "invoice.paid",
        "data": {
            "object": {
                "id": "in_test_1",
                "object": "invoice",
                "customer": "cus_Test",
                "metadata": {},
                "parent": {"subscription_details": {"metadata": {"team_id": "team-a"}}},
                "lines": {
                    "data": [{"id": "il_1", "quantity": 3, "pricing": {"price_details": {"price": "price_pack"}}}]
                },
            }
        },
    }
    assert send(proxy, invoice).json()["outcome"] == "granted"
    assert allocated(proxy, "team-a") == Decimal("30.845678")

    # not paid yet, no credits named, an event type it does not handle: recorded or ignored, never granted
    assert send(proxy, checkout_event("team-a", "4", payment_status="unpaid")).json()["outcome"] == "unpaid"
    assert send(proxy, checkout_event("team-a", None)).json()["outcome"] == "no_credits"
    other = {**checkout_event("team-a", "4"), "type": "customer.created"}
    assert send(proxy, other).json()["outcome"] == "ignored"
    assert allocated(proxy, "team-a") == Decimal("30.845678")

    # every grant is one ledger entry keyed by its Stripe event, and balances match the ledger
    keys = [
        r["idempotency_key"]
        for r in query(
            database_url, "SELECT idempotency_key FROM credit_ledger WHERE idempotency_key LIKE '%%stripe:%%'"
        )
    ]
    assert len(keys) == len(set(keys)) == 4


def test_the_webhook_is_off_without_a_secret(start_proxy: Callable[..., Proxy], database_url: str) -> None:
    proxy = start_proxy(database_url)
    r = send(proxy, checkout_event("team-a", "5"))
    assert r.status_code == 404  # off: never a 5xx, whatever is sent
    assert r.json()["error"]["type"] == "billing_not_configured"
