"""``litellm-jobs``: the plugin's data from a terminal.

It talks to PostgreSQL directly, with the plugin's own settings (``JOBS_DATABASE_URL``, else
``DATABASE_URL``, else the embedded PostgreSQL under ``JOBS_DATA_DIR``). Tables for people,
``--json`` for scripts; errors exit 1 with their message, no traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich import box
from rich.console import Console
from rich.table import Table

from . import money as money_
from .analytics import analytics as compute_analytics
from .credits.base import CreditBackend
from .credits.local import LocalCredits, SharedPostgresCredits, choose_backend
from .credits.policies import TeamPolicies, allowance_json
from .credits.redis import RedisCredits
from .errors import JobsError
from .metadata import check_job_id, check_team_id
from .models import Balance, Job, JobStatus
from .reconcile import DEFAULT_LIMIT, DriftKind, Report, find_drift, fix_drift
from .routes import _cursor as parse_cursor
from .routes import _next_cursor as next_cursor
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
teams_app = typer.Typer(help="Teams: their policies (prices, job types, failure allowance).", no_args_is_help=True)
policy_app = typer.Typer(help="A team's prices, allowed job types and failure allowance.", no_args_is_help=True)
app.add_typer(credits_app, name="credits")
app.add_typer(jobs_app, name="jobs")
app.add_typer(teams_app, name="teams")
teams_app.add_typer(policy_app, name="policy")

out = Console()
err = Console(stderr=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
WideOption = Annotated[bool, typer.Option("--wide", "-w", help="Every column (the default fits 80 columns).")]
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
        out.print_json(money_.dumps(data, fallback=str))  # money: exact strings (docs/money.md)
    else:
        t = table()
        # A --wide table wider than the terminal is printed whole (the terminal wraps its lines).
        console = out if (t.min_width or 0) <= out.width else Console(width=t.min_width, highlight=False)
        console.print(t)


def money(value: Decimal | None) -> str:
    """An amount for people: 4 significant digits, plain notation (docs/money.md)."""
    return money_.display(value)


@dataclass(frozen=True)
class Col:
    """A table column: its header, how it aligns, and whether a narrow terminal may leave it out."""

    header: str
    justify: str = "left"
    optional: bool = False


def fitted(title: str, cols: list[Col], rows: list[list[str]], *, wide: bool = False) -> Table:
    """A table whose cells are never cut nor wrapped (no ellipsis, full job ids and statuses).

    Optional columns the terminal has no room for are left out, last first, and named under the
    table; ``wide`` keeps every column (the table is then printed at its own width)."""
    keep = list(range(len(cols)))

    def build() -> Table:
        hidden = [cols[i].header for i in range(len(cols)) if i not in keep]
        t = Table(
            title=title,
            box=box.SIMPLE_HEAD,
            pad_edge=False,
            title_justify="left",
            caption=f"not shown: {', '.join(hidden)} (--wide shows them)" if hidden else None,
            caption_justify="left",
        )
        for i in keep:
            t.add_column(cols[i].header, justify=cols[i].justify, no_wrap=True)  # type: ignore[arg-type]
        for r in rows:
            t.add_row(*(r[i] for i in keep))
        t.min_width = _natural_width(t)
        return t

    t = build()
    for i in reversed(range(len(cols))):
        if wide or (t.min_width or 0) <= out.width:
            break
        if cols[i].optional:
            keep.remove(i)
            t = build()
    return t


def _natural_width(table: Table) -> int:
    """The width a table takes when nothing limits it."""
    unlimited = Console(width=100_000)
    return unlimited.measure(table, options=unlimited.options).maximum


def balance_table(balance: Balance) -> Table:
    cols = [Col(name, "right") for name in ("allocated", "remaining", "held", "charged")]
    row = [
        money(balance.credits_allocated),
        money(balance.credits_remaining),
        money(balance.credits_held),
        money(balance.credits_charged),
    ]
    return fitted(f"credits of team {balance.team_id}", cols, [row])


def where_granted(backend: CreditBackend) -> str:
    """Where a grant took effect, in plain words."""
    if isinstance(backend, RedisCredits):
        return "Recorded in PostgreSQL and applied in Redis, where the proxies check credits: in force now."
    if isinstance(backend, SharedPostgresCredits) or (
        isinstance(backend, LocalCredits) and backend.mode != "in-process"
    ):
        return "Recorded in PostgreSQL, where the running proxies check credits: in force now."
    return "Recorded in PostgreSQL; no proxy is running now, and each reads it when it starts."


def ledger_key(team: str, kind: str, key: str) -> str:
    """The ledger's idempotency key of a grant (as PostgresStore.grant writes it)."""
    return f"{kind}:{len(team)}:{team}:{key}"


def duration(seconds: float) -> str:
    if seconds % 86_400 == 0:
        return f"{int(seconds // 86_400)} d"
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)} h"
    return f"{seconds:g} s"


def allowance_lines(a: dict[str, Any]) -> list[str]:
    window = duration(float(a["window_s"]))
    if a["limit_usd"] is None:
        return [
            f"failed jobs: no allowance limit; {money(Decimal(a['used_usd']))} USD spent on them in the last {window}"
        ]
    lines = [
        f"failure allowance: {money(Decimal(a['used_usd']))} of {money(Decimal(a['limit_usd']))} USD "
        f"used in the last {window}"
    ]
    if a["exhausted"]:
        lines.append(f"  exhausted: new jobs are refused (402) until {a['frees_at']}")
    return lines


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
    """A team's credits (allocated, remaining, held by open jobs, charged) and its failure allowance."""

    async def work(settings: Settings) -> tuple[Balance, dict[str, Any], bool]:
        async with database(settings) as (store, _):
            team_id = check_team_id(team, param="team")
            seen = bool(await store.fetch_all("team_summaries", {"team_id": team_id, "since": None, "until": None}))
            policies = TeamPolicies(store, refresh_s=settings.policy_refresh_s, window_s=settings.failure_window_s)
            policy, use = await policies.reload(team_id)
            return await store.balance(team_id), allowance_json(settings, policy, use), seen

    balance, failure_allowance, seen = run(work)
    if not seen:
        err.print(f"[yellow]warning:[/yellow] team {team!r} was never seen: no credits granted, no jobs (a typo?)")
    if as_json:
        emit({**balance.model_dump(mode="json"), "failure_allowance": failure_allowance}, True, lambda: Table())
        return
    out.print(balance_table(balance))
    for line in allowance_lines(failure_allowance):
        out.print(line)


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
                redis_backend = RedisCredits(
                    settings.redis_url, store, prefix=settings.redis_prefix, shards=settings.redis_shards
                )
                await redis_backend.load_accounts()
                backend = redis_backend
            else:
                backend = await choose_backend(store, writer, url)
            team_id = check_team_id(team, param="team")
            kind = "adjust" if adjust else "grant"
            replayed = await store.fetch_one("ledger_entry_id", {"key": ledger_key(team_id, kind, key)}) is not None
            try:
                balance = await backend.grant(team_id, value, kind=kind, idempotency_key=key, note=note)
            finally:
                await backend.aclose()
                await writer.aclose()
            if replayed:
                err.print(f"already applied — nothing changed (idempotency key {key!r} was used before)")
            else:
                what = "granted" if not adjust else "adjusted by"
                err.print(f"{what} {money_.exact(value)} credits to team {team_id}. {where_granted(backend)}")
            return balance

    balance = run(work)
    emit(balance, as_json, lambda: balance_table(balance))


@jobs_app.command("list")
def jobs_list(
    team: TeamOption,
    status: Annotated[str | None, typer.Option(help="pending, in_progress, completed, failed or expired.")] = None,
    job_type: Annotated[str | None, typer.Option("--type", help="Only this job type.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="Rows per page.")] = 50,
    cursor: Annotated[str | None, typer.Option(help="The next page (printed under a full page).")] = None,
    wide: WideOption = False,
    as_json: JsonOption = False,
) -> None:
    """A team's jobs, newest first, a page at a time."""
    if status is not None and status not in {s.value for s in JobStatus}:
        err.print(f"[red]error:[/red] status must be one of {', '.join(s.value for s in JobStatus)}")
        raise typer.Exit(1)

    async def work(settings: Settings) -> list[Job]:
        async with database(settings) as (store, _):
            return await store.list_jobs(
                check_team_id(team, param="team"),
                status=status,
                job_type=job_type,
                cursor=parse_cursor(cursor),
                limit=limit + 1,  # one more: is there a next page?
            )

    jobs = run(work)
    more = len(jobs) > limit
    jobs = jobs[:limit]
    emit([j.model_dump(mode="json") for j in jobs], as_json, lambda: jobs_table(team, jobs, wide))
    if more:
        err.print(f"more rows: --cursor {next_cursor(jobs[-1])}", soft_wrap=True)


def jobs_table(team: str, jobs: list[Job], wide: bool) -> Table:
    """Job ids and statuses are never cut: other columns give way (``--wide`` shows them all)."""
    cols = [
        Col("job"),
        Col("status"),
        Col("USD", "right", optional=True),
        Col("credits", "right", optional=True),
        Col("calls", "right", optional=True),
        Col("type", optional=True),
        Col("created (UTC)", optional=True),
    ]
    if wide:
        cols += [Col("failed", "right"), Col("tokens", "right"), Col("completed (UTC)"), Col("user")]
    rows = []
    for j in jobs:
        row = [j.job_id, j.status.value, money(j.total_cost_usd), money(j.credits_charged), str(j.total_calls)]
        row += [j.job_type, when(j.created_at, wide)]
        if wide:
            row += [str(j.failed_calls), str(j.prompt_tokens + j.completion_tokens), when(j.completed_at, wide)]
            row.append(j.user_id or "")
        rows.append(row)
    return fitted(f"jobs of team {team}", cols, rows, wide=wide)


def when(at: datetime | None, full: bool) -> str:
    """A time in UTC: ``05-31 14:02`` (``--wide``: the ISO 8601 time)."""
    if at is None:
        return ""
    at = at.astimezone(UTC)
    return at.isoformat(timespec="seconds") if full else at.strftime("%m-%d %H:%M")


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
        credits = money(Decimal(job["credits_charged"]))
        title = f"job {job['job_id']} · {job['job_type']} · {job['status']} · {cost} USD · {credits} credits"
        cols = [Col("call"), Col("status"), Col("USD", "right"), Col("purpose", optional=True)]
        cols += [Col("model", optional=True), Col("tokens", "right", True), Col("ms", "right", True)]
        rows = [
            [
                c["call_id"],
                c["status"],
                money(Decimal(c["cost_usd"])),
                c["purpose"] or "",
                c["model_group"] or c["model"] or "",
                str(c["prompt_tokens"] + c["completion_tokens"]),
                str(c["latency_ms"]),
            ]
            for c in shown["calls"]
        ]
        return fitted(title, cols, rows)

    emit(shown, as_json, table)


@app.command("analytics")
def analytics_command(
    team: Annotated[str | None, typer.Option("--team", "-t", help="One team; default: every team.")] = None,
    since: Annotated[datetime | None, typer.Option(help="Jobs created at or after (ISO 8601).")] = None,
    until: Annotated[datetime | None, typer.Option(help="Jobs created before (ISO 8601).")] = None,
    wide: WideOption = False,
    as_json: JsonOption = False,
) -> None:
    """Per job type: jobs, success rate, calls per job, cost in USD (total, per job), credits charged.

    ``--wide`` adds jobs by outcome, the cost's median and 95th percentile, and the cost of failed jobs.
    """

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
        title = "job types" + (f" of team {team}" if team else " (every team)") + " · costs in USD"
        cols = [Col("type"), Col("jobs", "right"), Col("success", "right"), Col("cost", "right")]
        cols += [Col("per job", "right"), Col("credits", "right"), Col("calls/job", "right", True)]
        if wide:
            cols += [Col(h, "right") for h in ("completed", "failed", "expired", "p50", "p95", "failed cost")]
        rows = []
        for r in result.job_types:
            success = "" if r.success_rate is None else f"{r.success_rate * 100:.1f}%"
            row = [r.job_type, str(r.jobs_started), success, money(r.cost_total_usd), money(r.cost_avg_usd)]
            row += [money(r.credits_charged), f"{r.calls_per_job:.2f}"]
            if wide:
                row += [str(r.completed), str(r.failed), str(r.expired), money(r.cost_p50_usd)]
                row += [money(r.cost_p95_usd), money(r.failed_jobs_cost_usd)]
            rows.append(row)
        return fitted(title, cols, rows, wide=wide)

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
        out.print_json(money_.dumps(report.to_json(), fallback=str))
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


from . import cli_billing  # noqa: E402, F401  (registers `export` and `billing`)


def main() -> None:
    app(prog_name="litellm-jobs")


from . import cli_policy, cli_webhooks, cli_worker  # noqa: E402, F401  (register `teams policy`, `webhooks`, `worker`)

if __name__ == "__main__":  # pragma: no cover
    main()
