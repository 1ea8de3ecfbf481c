"""``litellm-jobs webhooks``: endpoints, secret rotation, dead letters and thresholds, from a terminal.

Like the other commands it talks to PostgreSQL directly; a proxy's delivery worker picks the
changes up on its next poll (docs/webhooks.md).
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

import typer

from .cli import Col, Failure, JsonOption, WideOption, app, database, emit, fitted, out, run
from .settings import Settings
from .webhooks.events import EVENT_TYPES
from .webhooks.registry import Registry

webhooks_app = typer.Typer(
    help="Signed webhooks: endpoints, their secrets, dead letters and credits.low thresholds.", no_args_is_help=True
)
app.add_typer(webhooks_app, name="webhooks")

EndpointArg = Annotated[str, typer.Argument(help="The endpoint id (we_...).")]


def _endpoint_rows(endpoints: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            e["endpoint_id"],
            e["url"],
            e["team_id"] or "(all teams)",
            ", ".join(e["event_types"]) if len(e["event_types"]) < len(EVENT_TYPES) else "(all)",
            str(e.get("deliveries", {}).get("pending", "")),
            str(e.get("deliveries", {}).get("dead", "")),
        ]
        for e in endpoints
    ]


_ENDPOINT_COLS = [
    Col("endpoint"),
    Col("url"),
    Col("team"),
    Col("events", optional=True),
    Col("pending", "right", optional=True),
    Col("dead", "right", optional=True),
]


@webhooks_app.command("add")
def webhooks_add(
    url: Annotated[str, typer.Argument(help="Where to POST the events (http or https).")],
    team: Annotated[str | None, typer.Option("--team", "-t", help="Only this team's events (default: all).")] = None,
    event: Annotated[
        list[str] | None,
        typer.Option("--event", "-e", help=f"An event type (repeat; default all): {', '.join(EVENT_TYPES)}."),
    ] = None,
    description: Annotated[str | None, typer.Option(help="A note for people.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Register an endpoint; prints its secret (whsec_...), shown only now."""

    async def work(settings: Settings) -> dict[str, Any]:
        async with database(settings) as (store, _):
            return await Registry(store).add(
                url, team_id=team, event_types=list(event or EVENT_TYPES), description=description
            )

    created = run(work)
    if as_json:
        emit(created, True, lambda: fitted("", [], []))
        return
    out.print(fitted("webhook endpoint added", _ENDPOINT_COLS, _endpoint_rows([created])))
    out.print(f"secret: {created['secret']}")
    out.print("Give it to the receiver now: it is not shown again (rotate to get a new one).")


@webhooks_app.command("list")
def webhooks_list(as_json: JsonOption = False, wide: WideOption = False) -> None:
    """Endpoints, with their pending and dead deliveries (secrets are never shown)."""

    async def work(settings: Settings) -> list[dict[str, Any]]:
        async with database(settings) as (store, _):
            return await Registry(store).endpoints()

    endpoints = run(work)
    emit(
        {"endpoints": endpoints},
        as_json,
        lambda: fitted("webhook endpoints", _ENDPOINT_COLS, _endpoint_rows(endpoints), wide=wide),
    )


@webhooks_app.command("remove")
def webhooks_remove(endpoint: EndpointArg) -> None:
    """Remove an endpoint; its pending deliveries are never sent."""

    async def work(settings: Settings) -> None:
        async with database(settings) as (store, _):
            await Registry(store).remove(endpoint)

    run(work)
    out.print(f"removed {endpoint}")


@webhooks_app.command("rotate")
def webhooks_rotate(
    endpoint: EndpointArg,
    overlap: Annotated[
        float | None, typer.Option(help="Seconds the old secret still signs (default JOBS_WEBHOOK_ROTATION_OVERLAP_S).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """A new secret; until the overlap ends every webhook carries a signature by each secret."""

    async def work(settings: Settings) -> dict[str, Any]:
        if overlap is not None and not 0 <= overlap <= 30 * 86_400:
            raise Failure("--overlap must be 0 to 2592000 seconds")
        async with database(settings) as (store, _):
            return await Registry(store).rotate(
                endpoint, overlap_s=settings.webhook_rotation_overlap_s if overlap is None else overlap
            )

    rotated = run(work)
    if as_json:
        emit(rotated, True, lambda: fitted("", [], []))
        return
    out.print(f"new secret: {rotated['secret']}")
    until = rotated["previous_secret_expires_at"]
    out.print(f"the old secret also signs until {until}" if until else "the old secret no longer signs")


@webhooks_app.command("dead-letters")
def webhooks_dead_letters(
    endpoint: Annotated[str | None, typer.Option(help="Only this endpoint's.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    as_json: JsonOption = False,
    wide: WideOption = False,
) -> None:
    """Deliveries given up on (newest first); send them again with `retry`."""

    async def work(settings: Settings) -> list[dict[str, Any]]:
        async with database(settings) as (store, _):
            return await Registry(store).dead_letters(endpoint, limit)

    dead = run(work)
    cols = [
        Col("event"),
        Col("type"),
        Col("team"),
        Col("endpoint"),
        Col("attempts", "right"),
        Col("last error", optional=True),
    ]
    rows = [
        [d["event_id"], d["event_type"], d["team_id"], d["endpoint_id"], str(d["attempts"]), d["last_error"] or ""]
        for d in dead
    ]
    emit({"dead_letters": dead}, as_json, lambda: fitted("webhook dead letters", cols, rows, wide=wide))


@webhooks_app.command("retry")
def webhooks_retry(
    event_ids: Annotated[list[str] | None, typer.Argument(help="Dead letters' event ids (evt_...).")] = None,
    endpoint: Annotated[str | None, typer.Option(help="Only this endpoint's dead letters.")] = None,
    every: Annotated[bool, typer.Option("--all", help="Every dead letter.")] = False,
) -> None:
    """Send dead letters again, with a fresh maximum age."""

    async def work(settings: Settings) -> int:
        if not event_ids and endpoint is None and not every:
            raise Failure("name event ids, --endpoint or --all")
        async with database(settings) as (store, _):
            return await Registry(store).retry(endpoint, list(event_ids) if event_ids else None)

    out.print(f"{run(work)} dead letter(s) due again")


@webhooks_app.command("threshold")
def webhooks_threshold(
    team: Annotated[str, typer.Argument(help="The LiteLLM team id.")],
    amount: Annotated[
        str | None, typer.Argument(help="credits.low fires when remaining credits fall below it.")
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="No credits.low events for the team.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Show or set a team's credits.low threshold."""

    async def work(settings: Settings) -> dict[str, Any]:
        async with database(settings) as (store, _):
            registry = Registry(store)
            if clear:
                return await registry.set_threshold(team, None)
            if amount is None:
                return await registry.threshold(team)
            try:
                value = Decimal(amount)
            except InvalidOperation:
                raise Failure(f"not an amount: {amount!r}") from None
            if not value.is_finite() or value < 0 or value != value.quantize(Decimal("0.000001")):
                raise Failure("the threshold must be a number of credits >= 0 with at most 6 decimals")
            return await registry.set_threshold(team, value)

    shown = run(work)
    value = shown["credits_low_threshold"]
    emit(
        shown,
        as_json,
        lambda: fitted(f"team {shown['team_id']}", [Col("credits.low below", "right")], [[value or "(none)"]]),
    )
