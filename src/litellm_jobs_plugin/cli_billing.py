"""``litellm-jobs export`` and ``litellm-jobs billing ...``: usage sinks, customers, Stripe top-ups.

Registered on the main app by one line of cli.py. The same rules as the admin routes
(billing_routes.py); API keys are read from standard input and never printed.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.table import Table

from .billing.exporter import backfill
from .billing.sql import rows
from .billing.stripe_topups import EventNotFound, NotApplicable, apply_event
from .billing_routes import (
    EVENT_STATUSES,
    SinkBody,
    StripePriceBody,
    check_sink_name,
    customer_json,
    price_json,
    put_customer,
    put_sink,
    sinks_json,
    stripe_event_json,
)
from .cli import Col, Failure, JsonOption, app, database, emit, err, fitted, run, where_granted
from .credits.base import CreditBackend
from .credits.local import choose_backend
from .credits.redis import RedisCredits
from .metadata import check_team_id
from .route_kit import parse
from .settings import Settings
from .store.postgres import PostgresStore
from .writer import Writer

billing_app = typer.Typer(help="Usage sinks, billing customers and Stripe top-ups.", no_args_is_help=True)
sinks_app = typer.Typer(help="Where usage events are exported (OpenMeter, Lago, Stripe).", no_args_is_help=True)
customers_app = typer.Typer(help="Each team's customer in a sink's billing system.", no_args_is_help=True)
stripe_app = typer.Typer(help="Credit top-ups from Stripe: recorded events and prices.", no_args_is_help=True)
billing_app.add_typer(sinks_app, name="sinks")
billing_app.add_typer(customers_app, name="customers")
billing_app.add_typer(stripe_app, name="stripe")


def _when(text: str, name: str) -> datetime:
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        err.print(f"[red]error:[/red] {name} must be an ISO 8601 time (2026-01-31 or 2026-01-31T12:00:00Z)")
        raise typer.Exit(1) from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


@app.command("export")
def export_command(
    since: Annotated[str, typer.Option(help="Replay jobs closed at or after this time (ISO 8601; UTC if no zone).")],
    until: Annotated[str | None, typer.Option(help="...and before this time (default: now).")] = None,
    sink: Annotated[
        str | None, typer.Option(help="Only this sink (also when disabled); default: every enabled one.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Send closed jobs again to the usage sinks, with the ids the exporter gave them (no double billing).

    The exporter's cursors are left as they are. Teams with no customer in a sink are counted, not sent.
    """
    start = _when(since, "--since")
    end = _when(until, "--until") if until is not None else datetime.now(UTC)
    if sink is not None:
        check_sink_name(sink)

    async def work(settings: Settings) -> list[dict[str, Any]]:
        async with database(settings) as (store, _):
            if sink is not None and not await sinks_json(store, sink):
                raise Failure(f"no sink {sink!r} (litellm-jobs billing sinks list)")
            results = await backfill(store, settings, since=start, until=end, sink_name=sink)
            return [
                {
                    "sink": r.sink,
                    "jobs": r.jobs,
                    "events_sent": r.sent,
                    "unmapped_teams": dict(sorted(r.unmapped.items())),
                    "error": r.error,
                }
                for r in results
            ]

    results = run(work)

    def table() -> Table:
        cols = [Col("sink"), Col("jobs", "right"), Col("events sent", "right"), Col("not sent", optional=True)]
        body = [
            [
                r["sink"],
                str(r["jobs"]),
                str(r["events_sent"]),
                ", ".join(f"{t}: {n} (no customer)" for t, n in r["unmapped_teams"].items()) or "-",
            ]
            for r in results
        ]
        return fitted(f"export {start.isoformat()} → {end.isoformat()}", cols, body)

    if not results:
        err.print("no enabled sink: nothing to export (litellm-jobs billing sinks set ...)")
    emit(results, as_json, table)
    failed = [r for r in results if r["error"]]
    for r in failed:
        err.print(f"[red]error:[/red] sink {r['sink']} refused the export: {r['error']}")
    if failed:
        raise typer.Exit(1)


# -- sinks ----------------------------------------------------------------------------------------


def _sinks_table(sinks: list[dict[str, Any]]) -> Table:
    cols = [Col("name"), Col("kind"), Col("enabled"), Col("exported", "right"), Col("url", optional=True)]
    body = [[s["name"], s["kind"], "yes" if s["enabled"] else "no", str(s["exported"]), s["url"]] for s in sinks]
    return fitted("usage sinks", cols, body)


def _sink_notes(sinks: list[dict[str, Any]]) -> None:
    for s in sinks:
        if s["last_error"]:
            err.print(f"sink {s['name']}: last error at {s['last_error_at']}: {s['last_error']}")
        if s["unmapped_teams"]:
            teams = ", ".join(s["unmapped_teams"])
            err.print(f"sink {s['name']}: {s['unmapped_events']} event(s) not sent, no customer for: {teams}")


@sinks_app.command("list")
def sinks_list(as_json: JsonOption = False) -> None:
    """Sinks, with events exported, the last error and teams that have no customer there (API keys never shown)."""

    async def work(settings: Settings) -> list[dict[str, Any]]:
        async with database(settings) as (store, _):
            return await sinks_json(store)

    sinks = run(work)
    emit({"sinks": sinks}, as_json, lambda: _sinks_table(sinks))
    if not as_json:
        _sink_notes(sinks)


@sinks_app.command("set")
def sinks_set(
    name: Annotated[str, typer.Argument(help="The sink's name (a-z, 0-9, _ and -).")],
    kind: Annotated[str, typer.Option(help="cloudevents (OpenMeter), lago or stripe.")],
    url: Annotated[str | None, typer.Option(help="The endpoint (default for lago and stripe: their API's).")] = None,
    api_key_stdin: Annotated[
        bool,
        typer.Option("--api-key-stdin", help="Read the API key from standard input (else the stored one is kept)."),
    ] = False,
    disabled: Annotated[bool, typer.Option("--disabled", help="Keep it configured but send nothing.")] = False,
    options: Annotated[
        str | None, typer.Option(help='Sink options as JSON, e.g. \'{"include_calls": true, "value": "jobs"}\'.')
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Create or replace a sink. It exports jobs closed from now on; send history with `export --since`."""
    check_sink_name(name)
    body: dict[str, Any] = {"kind": kind, "url": url, "enabled": not disabled}
    if options is not None:
        import json

        try:
            body["options"] = json.loads(options)
        except ValueError:
            err.print("[red]error:[/red] --options is not JSON")
            raise typer.Exit(1) from None
    if api_key_stdin:
        key = sys.stdin.readline().strip()
        if not key:
            err.print("[red]error:[/red] no API key on standard input")
            raise typer.Exit(1)
        body["api_key"] = key
    try:
        req = parse(SinkBody, body)
    except Exception as exc:  # a JobsError naming the bad field
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None

    async def work(settings: Settings) -> dict[str, Any]:
        async with database(settings) as (store, _):
            return await put_sink(store, name, req)

    sink = run(work)
    emit(sink, as_json, lambda: _sinks_table([sink]))


# -- customers ------------------------------------------------------------------------------------


@customers_app.command("list")
def customers_list(sink: Annotated[str, typer.Argument(help="The sink's name.")], as_json: JsonOption = False) -> None:
    """Each team's customer in the sink's system."""
    check_sink_name(sink)

    async def work(settings: Settings) -> list[dict[str, Any]]:
        async with database(settings) as (store, _):
            return [customer_json(r) for r in await rows(store, "list_customers", {"sink": sink})]

    found = run(work)
    emit(
        {"sink": sink, "customers": found},
        as_json,
        lambda: fitted(
            f"customers in sink {sink}",
            [Col("team"), Col("customer")],
            [[c["team_id"], c["customer_id"]] for c in found],
        ),
    )


@customers_app.command("set")
def customers_set(
    sink: Annotated[str, typer.Argument(help="The sink's name.")],
    team: Annotated[str, typer.Argument(help="The LiteLLM team id.")],
    customer_id: Annotated[
        str, typer.Argument(help="Stripe customer (cus_...), Lago subscription or customer id, OpenMeter subject.")
    ],
    as_json: JsonOption = False,
) -> None:
    """Bill the team's usage to this customer of the sink's system."""
    check_sink_name(sink)
    team_id = check_team_id(team, param="team")

    async def work(settings: Settings) -> dict[str, Any]:
        async with database(settings) as (store, _):
            return await put_customer(store, sink, team_id, customer_id)

    row = run(work)
    emit(
        row,
        as_json,
        lambda: fitted(f"customer in sink {sink}", [Col("team"), Col("customer")], [[team_id, customer_id]]),
    )


# -- Stripe ---------------------------------------------------------------------------------------


def _events_table(events: list[dict[str, Any]]) -> Table:
    cols = [
        Col("event"),
        Col("status"),
        Col("team"),
        Col("credits", "right"),
        Col("type", optional=True),
        Col("received", optional=True),
    ]
    body = [
        [e["event_id"], e["status"], e["team_id"] or "-", e["credits"] or "-", e["type"], e["received_at"] or ""]
        for e in events
    ]
    return fitted("Stripe events", cols, body)


@stripe_app.command("events")
def stripe_events(
    status: Annotated[
        str | None, typer.Option(help="Only these: granted, unknown_team, no_credits, invalid or unpaid.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    as_json: JsonOption = False,
) -> None:
    """Stripe events received, newest first, with what became of each (unknown_team: waiting for you)."""

    if status is not None and status not in EVENT_STATUSES:
        err.print(f"[red]error:[/red] --status must be one of {', '.join(EVENT_STATUSES)}")
        raise typer.Exit(1)

    async def work(settings: Settings) -> list[dict[str, Any]]:
        async with database(settings) as (store, _):
            return [
                stripe_event_json(r)
                for r in await rows(store, "list_stripe_events", {"status": status, "limit": limit})
            ]

    events = run(work)
    emit({"events": events}, as_json, lambda: _events_table(events))
    if not as_json:
        for e in events:
            if e["status"] != "granted" and e["detail"]:
                err.print(f"{e['event_id']}: {e['status']}: {e['detail']}")


@contextlib.asynccontextmanager
async def _backend(settings: Settings, store: PostgresStore, url: str) -> AsyncIterator[CreditBackend]:
    """The credit backend the running proxies decide with (as ``credits grant`` picks it)."""
    writer = Writer(store)
    writer.start()
    backend: CreditBackend
    if settings.redis_url:
        redis_backend = RedisCredits(settings.redis_url, store, prefix=settings.redis_prefix)
        await redis_backend.load_accounts()
        backend = redis_backend
    else:
        backend = await choose_backend(store, writer, url)
    try:
        yield backend
    finally:
        await backend.aclose()
        await writer.aclose()


@stripe_app.command("apply")
def stripe_apply(
    event_id: Annotated[str, typer.Argument(help="The Stripe event id (evt_...).")],
    team: Annotated[
        str | None, typer.Option("--team", "-t", help="Grant to this team (default: the one it named).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Grant a recorded event's credits (e.g. an unknown_team one); an event is never granted twice."""
    team_id = None if team is None else check_team_id(team, param="team")

    async def work(settings: Settings) -> tuple[dict[str, Any], bool, str]:
        async with database(settings) as (store, url), _backend(settings, store, url) as backend:

            async def grant(t: str, amount: Decimal, key: str, note: str) -> None:
                await backend.grant(t, amount, kind="grant", idempotency_key=key, note=note)

            try:
                row, granted = await apply_event(store, event_id, team_id, grant)
            except (EventNotFound, NotApplicable) as exc:
                raise Failure(str(exc)) from None
            return stripe_event_json(row), granted, where_granted(backend)

    row, granted, where = run(work)
    if granted:
        err.print(f"granted {row['credits']} credits to team {row['team_id']}. {where}")
    else:
        err.print(f"already granted to team {row['team_id']} — nothing changed")
    emit({**row, "granted_now": granted}, as_json, lambda: _events_table([row]))


@stripe_app.command("prices")
def stripe_prices(as_json: JsonOption = False) -> None:
    """Credits per unit of each Stripe price (used by invoice.paid events without metadata.credits)."""

    async def work(settings: Settings) -> list[dict[str, Any]]:
        async with database(settings) as (store, _):
            return [price_json(r) for r in await rows(store, "list_stripe_prices", {})]

    prices = run(work)
    emit(
        {"prices": prices},
        as_json,
        lambda: fitted(
            "Stripe prices", [Col("price"), Col("credits", "right")], [[p["price_id"], p["credits"]] for p in prices]
        ),
    )


@stripe_app.command("price-set")
def stripe_price_set(
    price_id: Annotated[str, typer.Argument(help="The Stripe price id (price_...).")],
    credits: Annotated[str, typer.Argument(help="Credits one unit of it buys (at most 6 decimals).")],
    as_json: JsonOption = False,
) -> None:
    """Set the credits one unit of a Stripe price buys."""
    try:
        req = StripePriceBody.model_validate({"credits": credits})
    except ValidationError:
        err.print("[red]error:[/red] credits must be a positive number with at most 6 decimals")
        raise typer.Exit(1) from None

    async def work(settings: Settings) -> dict[str, Any]:
        async with database(settings) as (store, _):
            return price_json(
                (await rows(store, "put_stripe_price", {"price_id": price_id, "credits": req.credits}))[0]
            )

    row = run(work)
    emit(
        row,
        as_json,
        lambda: fitted("Stripe price", [Col("price"), Col("credits", "right")], [[row["price_id"], row["credits"]]]),
    )


app.add_typer(billing_app, name="billing")
