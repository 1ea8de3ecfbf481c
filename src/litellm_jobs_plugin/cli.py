"""``litellm-jobs``: the plugin's data from a terminal.

It talks to PostgreSQL directly, with the plugin's own settings (``JOBS_DATABASE_URL``, else
``DATABASE_URL``, else the embedded PostgreSQL under ``JOBS_DATA_DIR``). Tables for people,
``--json`` for scripts; errors exit 1 with their message, no traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.table import Table

from .analytics import analytics as compute_analytics
from .credits.base import CreditBackend
from .credits.local import choose_backend, describe
from .credits.redis import RedisCredits
from .errors import JobsError
from .metadata import check_job_id, check_team_id
from .models import Balance, JobStatus
from .reconcile import DEFAULT_LIMIT, DriftKind, Report, find_drift, fix_drift
from .settings import Settings
from .store.embedded import EmbeddedPostgres
from .store.migrations import load_migrations
from .store.postgres import PostgresStore
from .writer import Writer

T = TypeVar("T")

app = typer.Typer(
    name="litellm-jobs",
    help="Jobs and credits of the LiteLLM jobs plugin, read from and written to its PostgreSQL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
credits_app = typer.Typer(help="Team credit balances.", no_args_is_help=True)
jobs_app = typer.Typer(help="Jobs and their calls.", no_args_is_help=True)
app.add_typer(credits_app, name="credits")
app.add_typer(jobs_app, name="jobs")

out = Console()
err = Console(stderr=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
TeamOption = Annotated[str, typer.Option("--team", "-t", help="The LiteLLM team id.")]


class Failure(Exception):
    """A message for the user; the command exits 1."""


def run(work: Callable[[Settings], Coroutine[Any, Any, T]]) -> T:
    """Build the settings, run ``work``, and turn known errors into a message and exit code 1."""
    try:
        settings = Settings()
    except ValidationError as exc:
        err.print(f"[red]error:[/red] bad JOBS_* setting: {exc.errors()[0]['msg']}")
        raise typer.Exit(1) from None
    try:
        return asyncio.run(work(settings))
    except (JobsError, Failure) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


@contextlib.asynccontextmanager
async def database(
    settings: Settings, *, migrate: bool = True, create: bool = False
) -> AsyncIterator[tuple[PostgresStore, str]]:
    """The plugin's store (migrated unless told otherwise) and its URL.

    Without a database URL this is the embedded PostgreSQL under JOBS_DATA_DIR; only ``migrate``
    may create one (anything else would silently read or write an empty database).
    """
    embedded = None
    url = settings.database_url
    if url is None:
        if not create and not (settings.data_dir / "pgdata" / "PG_VERSION").exists():
            raise Failure(
                f"no database: set JOBS_DATABASE_URL, or run where the proxy keeps its embedded one "
                f"(JOBS_DATA_DIR, now {settings.data_dir})"
            )
        embedded = EmbeddedPostgres(settings.data_dir)
        url = await embedded.start()
    store = PostgresStore(url, schema=settings.db_schema, min_size=0, max_size=2)
    try:
        await store.open(migrate=migrate, timeout_s=settings.startup_timeout_s)
        yield store, url
    finally:
        await store.close()
        if embedded is not None:
            await embedded.stop()


def emit(value: Any, as_json: bool, table: Callable[[], Table]) -> None:
    if as_json:
        data = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
        out.print_json(json.dumps(data, default=str))
    else:
        out.print(table())


def money(value: Decimal | None) -> str:
    return "" if value is None else f"{value.normalize():f}"


def balance_table(balance: Balance) -> Table:
    table = Table(title=f"team {balance.team_id}")
    for name in ("allocated", "remaining", "held", "charged"):
        table.add_column(name, justify="right")
    table.add_row(
        money(balance.credits_allocated),
        money(balance.credits_remaining),
        money(balance.credits_held),
        money(balance.credits_charged),
    )
    return table


# -- commands --------------------------------------------------------------------------------------


@app.command()
def migrate() -> None:
    """Apply pending migrations (the proxy also applies them at start-up, under the same lock)."""

    async def work(settings: Settings) -> None:
        async with database(settings, migrate=False, create=True) as (store, _):
            names = {m.version: m.name for m in load_migrations()}
            out.print(f"schema {settings.db_schema}: applying pending migrations ...")
            applied = await store.migrate()
            for version in applied:
                out.print(f"  applied {version:04d} {names.get(version, '')}")
            out.print(f"up to date at version {max(names, default=0):04d} ({len(applied)} applied now)")

    run(work)


@credits_app.command("show")
def credits_show(
    team: Annotated[str, typer.Argument(help="The LiteLLM team id.")], as_json: JsonOption = False
) -> None:
    """A team's credits: allocated, remaining, held by open jobs, charged."""

    async def work(settings: Settings) -> Balance:
        async with database(settings) as (store, _):
            return await store.balance(check_team_id(team, param="team"))

    balance = run(work)
    emit(balance, as_json, lambda: balance_table(balance))


@credits_app.command("grant")
def credits_grant(
    team: Annotated[str, typer.Argument(help="The LiteLLM team id.")],
    amount: Annotated[
        str, typer.Argument(help="Credits to add; with --adjust, negative takes back (write: --adjust -- -5).")
    ],
    idempotency_key: Annotated[
        str | None, typer.Option(help="Makes a repeated grant a no-op; default: a new key (a new grant).")
    ] = None,
    adjust: Annotated[
        bool, typer.Option("--adjust", help="An adjustment (may be negative) instead of a grant.")
    ] = False,
    note: Annotated[str | None, typer.Option(help="Kept on the ledger entry.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Grant (or adjust) a team's credits; every change is a ledger entry.

    It decides where the running proxies decide: in Redis with JOBS_REDIS_URL, else in PostgreSQL. A
    proxy deciding in memory (alone on the database, no Redis) hands its decisions over to PostgreSQL
    when this command joins, as it does for a second replica.
    """
    try:
        value = Decimal(amount)
    except ArithmeticError:
        value = Decimal("NaN")
    if not value.is_finite() or (not adjust and value <= 0):
        err.print("[red]error:[/red] the amount must be a positive number (use --adjust to take credits back)")
        raise typer.Exit(1)
    # As the admin route: numeric(20, 6) holds 14 integer digits and 6 decimals.
    if abs(value) >= Decimal(10) ** 14 or value != value.quantize(Decimal("0.000001")):
        err.print("[red]error:[/red] credits have at most 6 decimals and 14 integer digits")
        raise typer.Exit(1)
    key = idempotency_key or f"cli-{uuid.uuid4().hex}"

    async def work(settings: Settings) -> Balance:
        async with database(settings) as (store, url):
            writer = Writer(store)
            writer.start()
            backend: CreditBackend
            if settings.redis_url:
                redis_backend = RedisCredits(settings.redis_url, store, prefix=settings.redis_prefix)
                await redis_backend.load_accounts()
                backend = redis_backend
            else:
                backend = await choose_backend(store, writer, url)
            err.print(f"credits decided in: {describe(backend)}")
            try:
                return await backend.grant(
                    check_team_id(team, param="team"),
                    value,
                    kind="adjust" if adjust else "grant",
                    idempotency_key=key,
                    note=note,
                )
            finally:
                await backend.aclose()
                await writer.aclose()

    balance = run(work)
    emit(balance, as_json, lambda: balance_table(balance))


@jobs_app.command("list")
def jobs_list(
    team: TeamOption,
    status: Annotated[str | None, typer.Option(help="pending, in_progress, completed, failed or expired.")] = None,
    job_type: Annotated[str | None, typer.Option("--type", help="Only this job type.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    as_json: JsonOption = False,
) -> None:
    """A team's jobs, newest first."""
    if status is not None and status not in {s.value for s in JobStatus}:
        err.print(f"[red]error:[/red] status must be one of {', '.join(s.value for s in JobStatus)}")
        raise typer.Exit(1)

    async def work(settings: Settings) -> list[Any]:
        async with database(settings) as (store, _):
            return await store.list_jobs(
                check_team_id(team, param="team"), status=status, job_type=job_type, limit=limit
            )

    jobs = run(work)

    def table() -> Table:
        t = Table(title=f"jobs of team {team}")
        for name, justify in (
            ("job", "left"),
            ("type", "left"),
            ("status", "left"),
            ("calls", "right"),
            ("failed", "right"),
            ("cost (USD)", "right"),
            ("credits", "right"),
            ("created", "left"),
        ):
            t.add_column(name, justify=justify)  # type: ignore[arg-type]
        for j in jobs:
            t.add_row(
                j.job_id,
                j.job_type,
                j.status.value,
                str(j.total_calls),
                str(j.failed_calls),
                money(j.total_cost_usd),
                money(j.credits_charged),
                j.created_at.isoformat(timespec="seconds"),
            )
        return t

    emit([j.model_dump(mode="json") for j in jobs], as_json, table)


@jobs_app.command("show")
def jobs_show(
    job_id: Annotated[str, typer.Argument(help="The job id.")], team: TeamOption, as_json: JsonOption = False
) -> None:
    """One job with its calls."""

    async def work(settings: Settings) -> dict[str, Any]:
        async with database(settings) as (store, _):
            team_id = check_team_id(team, param="team")
            job = await store.get_job(team_id, check_job_id(job_id, param="job_id"))
            if job is None:
                raise Failure(f"no job {job_id!r} for team {team!r}")
            calls = await store.list_calls(team_id, job_id)
            return {"job": job.model_dump(mode="json"), "calls": [c.model_dump(mode="json") for c in calls]}

    shown = run(work)

    def table() -> Table:
        job = shown["job"]
        cost = money(Decimal(job["total_cost_usd"]))
        t = Table(title=f"job {job['job_id']} · {job['job_type']} · {job['status']} · cost {cost} USD")
        for name in ("call", "purpose", "model group", "model", "status", "tokens", "cost (USD)", "latency ms"):
            t.add_column(name)
        for c in shown["calls"]:
            t.add_row(
                c["call_id"],
                c["purpose"] or "",
                c["model_group"] or "",
                c["model"] or "",
                c["status"],
                str(c["prompt_tokens"] + c["completion_tokens"]),
                money(Decimal(c["cost_usd"])),
                str(c["latency_ms"]),
            )
        return t

    emit(shown, as_json, table)


@app.command("analytics")
def analytics_command(
    team: Annotated[str | None, typer.Option("--team", "-t", help="One team; default: every team.")] = None,
    since: Annotated[datetime | None, typer.Option(help="Jobs created at or after (ISO 8601).")] = None,
    until: Annotated[datetime | None, typer.Option(help="Jobs created before (ISO 8601).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Per job type: jobs by outcome, success rate, calls per job, cost (total, avg, p50, p95), credits."""

    async def work(settings: Settings) -> Any:
        async with database(settings) as (store, _):
            return await compute_analytics(
                store,
                team_id=None if team is None else check_team_id(team, param="team"),
                since=since,
                until=until,
            )

    result = run(work)

    def table() -> Table:
        t = Table(title="job types" + (f" of team {team}" if team else " (every team)"))
        columns = ("type", "jobs", "completed", "failed", "expired", "success", "calls/job", "cost total")
        for name in (*columns, "avg", "p50", "p95", "credits", "spent on failed"):
            t.add_column(name, justify="left" if name == "type" else "right")
        for r in result.job_types:
            t.add_row(
                r.job_type,
                str(r.jobs_started),
                str(r.completed),
                str(r.failed),
                str(r.expired),
                "" if r.success_rate is None else f"{r.success_rate * 100:.1f}%",
                f"{r.calls_per_job:.2f}",
                money(r.cost_total_usd),
                money(r.cost_avg_usd),
                money(r.cost_p50_usd),
                money(r.cost_p95_usd),
                money(r.credits_charged),
                money(r.failed_jobs_cost_usd),
            )
        return t

    emit(result, as_json, table)


def _shown(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, Decimal):
        return money(value)
    if isinstance(value, datetime):
        return value.isoformat(timespec="milliseconds")
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "[]"
    return str(value)


def drift_table(report: Report) -> Table:
    scope = f"team {report.team_id}" if report.team_id else "every team"
    counts = ", ".join(f"{k.value} {v}" for k, v in report.counts.items())
    t = Table(title=f"drift ({scope}): {counts}")
    for name, justify in (
        ("kind", "left"),
        ("team", "left"),
        ("job", "left"),
        ("field", "left"),
        ("stored", "right"),
        ("expected", "right"),
    ):
        t.add_column(name, justify=justify)  # type: ignore[arg-type]
    for d in report.drifts:
        for f in d.fields:
            t.add_row(d.kind.value, d.team_id, d.job_id or "", f.name, _shown(f.stored), _shown(f.expected))
    return t


@app.command("reconcile")
def reconcile_command(
    fix: Annotated[
        bool, typer.Option("--fix", help="Rewrite drifting rows from their source rows (safe while proxies run).")
    ] = False,
    team: Annotated[str | None, typer.Option("--team", "-t", help="One team; default: every team.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="Drifting rows listed per kind.")] = DEFAULT_LIMIT,
    as_json: JsonOption = False,
) -> None:
    """Recompute job totals from call rows and balances from the ledger; report (and --fix) drift.

    Exit code 0: no drift (or, with --fix, none left); 1: drift found (without --fix), or an error.
    """

    async def work(settings: Settings) -> Report:
        async with database(settings) as (store, _):
            team_id = None if team is None else check_team_id(team, param="team")
            if fix:
                return await fix_drift(store, team_id=team_id, limit=limit)
            return await find_drift(store, team_id=team_id, limit=limit)

    report = run(work)

    if as_json:
        out.print_json(json.dumps(report.to_json()))
    else:
        if report.drifting:
            out.print(drift_table(report))
            listed = len(report.drifts)
            if listed < report.drifting:
                out.print(f"({listed} of {report.drifting} drifting rows listed; --limit lists more per kind)")
        else:
            out.print("no drift: every job's totals match its calls, every balance its ledger")
        if report.fixed is not None and report.remaining is not None:
            fixed = ", ".join(f"{k.value} {report.fixed[k]}" for k in DriftKind)
            out.print(f"fixed: {fixed}")
            if report.clean:
                out.print("no drift left")
            else:
                left = ", ".join(f"{k.value} {report.remaining[k]}" for k in DriftKind)
                out.print(f"[red]drift left:[/red] {left}")
        elif report.drifting:
            out.print("run with --fix to rewrite these rows from their calls and ledger entries")
    if not report.clean:
        raise typer.Exit(1)


def main() -> None:
    app(prog_name="litellm-jobs")


if __name__ == "__main__":  # pragma: no cover
    main()
