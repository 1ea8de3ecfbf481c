"""``litellm-jobs teams policy``: a team's prices, allowed job types and failure allowance, from a terminal.

Like the other commands it talks to PostgreSQL directly; running proxies apply a change within
``JOBS_POLICY_REFRESH_S`` (docs/pricing.md).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

import typer

from . import money as money_
from .cli import Failure, JsonOption, allowance_lines, database, err, money, out, policy_app, run
from .credits import decide
from .credits.policies import TeamPolicies, allowance_json, policy_json
from .metadata import check_team_id
from .policy_routes import PolicyBody
from .route_kit import parse
from .settings import Settings
from .store.postgres import PostgresStore


def policy_lines(shown: dict[str, Any], settings: Settings) -> list[str]:
    prices = shown["job_prices"]
    allowed = shown["allowed_job_types"]
    lines = [f"team {shown['team_id']}"]
    if prices:
        lines.append(
            "  prices (credits per completed job): " + ", ".join(f"{k}={money(Decimal(v))}" for k, v in prices.items())
        )
    else:
        lines.append("  prices: the operator's (JOBS_JOB_PRICES)")
    if allowed is None:
        lines.append("  job types: any the operator prices")
    else:
        lines.append("  job types: " + (", ".join(allowed) or "none (every new job is refused)"))
    whose = "the operator's" if shown["failure_allowance_usd"] is None else "the team's own"
    lines += ["  " + line for line in allowance_lines(shown["failure_allowance"])]
    lines.append(f"  (that failure allowance is {whose})")
    return lines


async def _read_policy(
    store: PostgresStore, settings: Settings, team_id: str
) -> tuple[TeamPolicies, decide.TeamPolicy, decide.FailureUse]:
    policies = TeamPolicies(store, refresh_s=settings.policy_refresh_s, window_s=settings.failure_window_s)
    policy, use = await policies.reload(team_id)
    return policies, policy, use


def _shown_policy(
    settings: Settings, team_id: str, policy: decide.TeamPolicy, use: decide.FailureUse
) -> dict[str, Any]:
    return {**policy_json(team_id, policy), "failure_allowance": allowance_json(settings, policy, use)}


@policy_app.command("show")
def policy_show(team: Annotated[str, typer.Argument(help="The LiteLLM team id.")], as_json: JsonOption = False) -> None:
    """A team's prices, allowed job types and failure allowance (with what it used)."""

    async def work(settings: Settings) -> tuple[dict[str, Any], Settings]:
        async with database(settings) as (store, _):
            team_id = check_team_id(team, param="team")
            _, policy, use = await _read_policy(store, settings, team_id)
            return _shown_policy(settings, team_id, policy, use), settings

    _print_policy(*run(work), as_json=as_json)


def _print_policy(shown: dict[str, Any], settings: Settings, *, as_json: bool) -> None:
    if as_json:
        out.print_json(money_.dumps(shown))
    else:
        for line in policy_lines(shown, settings):
            out.print(line, highlight=False)


def _price(text: str) -> tuple[str, str | None]:
    job_type, sep, credits = text.partition("=")
    if not sep or not job_type:
        raise Failure(f"--price {text!r}: write TYPE=CREDITS (or TYPE=default to drop the team's price)")
    return job_type, None if credits.strip().lower() == "default" else credits.strip()


@policy_app.command("set")
def policy_set(
    team: Annotated[str, typer.Argument(help="The LiteLLM team id.")],
    price: Annotated[
        list[str] | None,
        typer.Option(help="TYPE=CREDITS: the team's price of a job type (TYPE=default: the operator's). Repeatable."),
    ] = None,
    allow: Annotated[
        list[str] | None, typer.Option(help="Only these job types (replaces the list). Repeatable.")
    ] = None,
    allow_any: Annotated[bool, typer.Option("--allow-any", help="Any job type the operator prices.")] = False,
    failure_allowance_usd: Annotated[
        str | None, typer.Option(help="USD of provider cost of failed jobs allowed per window.")
    ] = None,
    default_allowance: Annotated[
        bool, typer.Option("--default-allowance", help="The operator's failure allowance (JOBS_FAILURE_ALLOWANCE_USD).")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Change a team's policy in the fields given; the rest stays as it is.

    Proxies apply it within JOBS_POLICY_REFRESH_S (the one that would take PUT /api/teams/{team}/policy at once).
    """
    if allow and allow_any:
        err.print("[red]error:[/red] --allow and --allow-any exclude each other")
        raise typer.Exit(1)
    if failure_allowance_usd is not None and default_allowance:
        err.print("[red]error:[/red] --failure-allowance-usd and --default-allowance exclude each other")
        raise typer.Exit(1)
    if not (price or allow or allow_any or failure_allowance_usd is not None or default_allowance):
        err.print("[red]error:[/red] nothing to set: give --price, --allow, --allow-any or a failure allowance")
        raise typer.Exit(1)

    async def work(settings: Settings) -> tuple[dict[str, Any], Settings]:
        changes = [_price(p) for p in price or []]  # before the database: a bad option changes nothing
        async with database(settings) as (store, _):
            team_id = check_team_id(team, param="team")
            policies, current, _ = await _read_policy(store, settings, team_id)
            prices: dict[str, Any] = {k: str(v) for k, v in current.job_prices.items()}
            for job_type, credits in changes:
                if credits is None:
                    prices.pop(job_type, None)
                else:
                    prices[job_type] = credits
            allowed: list[str] | None = None if current.allowed_job_types is None else sorted(current.allowed_job_types)
            if allow:
                allowed = list(allow)
            elif allow_any:
                allowed = None
            limit: str | None = None if current.failure_allowance_usd is None else str(current.failure_allowance_usd)
            if failure_allowance_usd is not None:
                limit = failure_allowance_usd
            elif default_allowance:
                limit = None
            # The admin route's own checks (finite, 0 to 10^12 credits, 6 decimals, valid job types).
            req = parse(
                PolicyBody,
                {"job_prices": prices, "allowed_job_types": allowed, "failure_allowance_usd": limit},
            )
            await policies.put(
                team_id,
                decide.TeamPolicy(
                    job_prices=dict(req.job_prices),
                    allowed_job_types=None if req.allowed_job_types is None else frozenset(req.allowed_job_types),
                    failure_allowance_usd=req.failure_allowance_usd,
                ),
            )
            policy, use = await policies.reload(team_id)
            return _shown_policy(settings, team_id, policy, use), settings

    shown, settings = run(work)
    _print_policy(shown, settings, as_json=as_json)
    err.print(f"saved; running proxies apply it within {settings.policy_refresh_s:g} s (JOBS_POLICY_REFRESH_S)")
