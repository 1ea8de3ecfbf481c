"""Reconciliation: the cached aggregates and balances, recomputed from the rows they derive from.

Three kinds of cached values are checked (``litellm-jobs reconcile``, and the proxy's periodic
check behind the ``litellm_jobs_reconcile_drift`` gauge):

- ``job_aggregates``: a job's calls, tokens, cost, latency, models and first/last call times equal
  the sums over its ``calls`` rows (as ``refresh_job_aggregates`` computes them);
- ``job_credits``: a job's ``credits_held`` / ``credits_charged`` equal its ledger entries;
- ``team_balances``: a team's ``credit_accounts`` row (allocated, charged, held) equals the sums
  over its ``credit_ledger`` entries (grant/adjust → allocated, hold → held, capture → held to
  charged, release → held back).

Writers keep all three exact in the same transaction as the rows they derive from, so a check is
one statement (one snapshot) per kind and reports no drift while proxies write. :func:`fix_drift`
rewrites drifting rows under the writers' row locks, in their order (jobs by (team_id, job_id),
accounts by team_id), in one transaction per batch: safe to run against a live database.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .store.sql import query

if TYPE_CHECKING:
    import psycopg

    from .metrics import Metrics
    from .store.postgres import PostgresStore

_log = logging.getLogger(__name__)

#: pg_try_advisory_xact_lock key of the periodic check: the first 8 bytes of sha256("litellm_jobs_plugin.reconcile").
RECONCILE_LOCK_KEY = int.from_bytes(hashlib.sha256(b"litellm_jobs_plugin.reconcile").digest()[:8], "big", signed=True)

#: Rows listed per kind by default (every drifting row is counted).
DEFAULT_LIMIT = 100
#: Rows fixed per transaction.
DEFAULT_BATCH_SIZE = 500


class DriftKind(enum.StrEnum):
    JOB_AGGREGATES = "job_aggregates"
    JOB_CREDITS = "job_credits"
    TEAM_BALANCES = "team_balances"


#: The compared columns of each kind; the check's rows carry ``<name>`` (stored) and ``expected_<name>``.
FIELDS: dict[DriftKind, tuple[str, ...]] = {
    DriftKind.JOB_AGGREGATES: (
        "total_calls",
        "successful_calls",
        "failed_calls",
        "prompt_tokens",
        "completion_tokens",
        "total_cost_usd",
        "total_latency_ms",
        "models_used",
        "first_call_at",
        "last_call_at",
    ),
    DriftKind.JOB_CREDITS: ("credits_held", "credits_charged"),
    DriftKind.TEAM_BALANCES: ("credits_allocated", "credits_charged", "credits_held"),
}

_CHECKS: dict[DriftKind, str] = {
    DriftKind.JOB_AGGREGATES: "reconcile_job_aggregates",
    DriftKind.JOB_CREDITS: "reconcile_job_credits",
    DriftKind.TEAM_BALANCES: "reconcile_team_balances",
}


@dataclass(frozen=True, slots=True)
class FieldDrift:
    """One column whose stored value is not what its source rows give (``None``: no row)."""

    name: str
    stored: Any
    expected: Any


@dataclass(frozen=True, slots=True)
class Drift:
    """One drifting row: a job (``job_id`` set) or a team's account (``job_id`` None)."""

    kind: DriftKind
    team_id: str
    job_id: str | None
    fields: tuple[FieldDrift, ...]

    def field_named(self, name: str) -> FieldDrift | None:
        return next((f for f in self.fields if f.name == name), None)


def _zero_counts() -> dict[DriftKind, int]:
    return dict.fromkeys(DriftKind, 0)


@dataclass(frozen=True, slots=True)
class Report:
    """What a check found (and, from :func:`fix_drift`, what was rewritten and what is left).

    ``counts`` counts every drifting row per kind; ``drifts`` lists at most ``limit`` of each,
    ordered by (team_id, job_id). After a fix, ``fixed`` counts the rows rewritten and
    ``remaining`` is a new check's counts (all zero when the fix worked).
    """

    checked_at: datetime
    team_id: str | None
    counts: dict[DriftKind, int] = field(default_factory=_zero_counts)
    drifts: tuple[Drift, ...] = ()
    fixed: dict[DriftKind, int] | None = None
    remaining: dict[DriftKind, int] | None = None

    @property
    def drifting(self) -> int:
        return sum(self.counts.values())

    @property
    def clean(self) -> bool:
        """No drift left: none found, or (after a fix) none remaining."""
        left = self.remaining if self.remaining is not None else self.counts
        return not any(left.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "checked_at": self.checked_at.isoformat(),
            "team_id": self.team_id,
            "clean": self.clean,
            "counts": {k.value: v for k, v in self.counts.items()},
            "drifts": [
                {
                    "kind": d.kind.value,
                    "team_id": d.team_id,
                    "job_id": d.job_id,
                    "fields": {f.name: {"stored": _json(f.stored), "expected": _json(f.expected)} for f in d.fields},
                }
                for d in self.drifts
            ],
            "fixed": None if self.fixed is None else {k.value: v for k, v in self.fixed.items()},
            "remaining": None if self.remaining is None else {k.value: v for k, v in self.remaining.items()},
        }


def _json(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")  # exact: money is never a float
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _drift_of(kind: DriftKind, row: dict[str, Any]) -> Drift:
    fields = tuple(
        FieldDrift(name, row[name], row[f"expected_{name}"])
        for name in FIELDS[kind]
        if row[name] != row[f"expected_{name}"]
    )
    return Drift(kind=kind, team_id=row["team_id"], job_id=row.get("job_id"), fields=fields)


async def find_drift(
    store: PostgresStore,
    *,
    team_id: str | None = None,
    limit: int = DEFAULT_LIMIT,
    conn: psycopg.AsyncConnection[dict[str, Any]] | None = None,
) -> Report:
    """Compare every job and account (or one team's) with what its source rows give; read-only."""
    checked_at = datetime.now(UTC)
    counts = _zero_counts()
    drifts: list[Drift] = []
    for kind, name in _CHECKS.items():
        rows = await store.fetch_all(name, {"team_id": team_id, "limit": limit}, conn)
        counts[kind] = int(rows[0]["drifting"]) if rows else 0
        drifts.extend(_drift_of(kind, r) for r in rows)
    return Report(checked_at=checked_at, team_id=team_id, counts=counts, drifts=tuple(drifts))


def _job_params(keys: list[tuple[str, str]]) -> dict[str, list[str]]:
    return {"team_ids": [k[0] for k in keys], "job_ids": [k[1] for k in keys]}


async def _fix_jobs(
    store: PostgresStore, aggregates: list[tuple[str, str]], credits: list[tuple[str, str]]
) -> tuple[int, int]:
    """Rewrite the aggregates and credits of drifting jobs in one transaction; returns the rows fixed."""
    async with store.transaction() as conn:
        # The writer's lock, in the writer's order (lock_jobs sorts by (team_id, job_id)): once it
        # is held no call or ledger entry of these jobs is in flight, and the statements below
        # (each a new snapshot under READ COMMITTED) see every committed one.
        await conn.execute(query("lock_jobs"), _job_params(sorted({*aggregates, *credits})))
        refreshed = cleared = 0
        if aggregates:
            # The writer's own recomputation for jobs with calls; the clear query for jobs without.
            cur = await conn.execute(query("refresh_job_aggregates"), _job_params(aggregates))
            row = await cur.fetchone()
            refreshed = int(row["refreshed"]) if row else 0
            cur = await conn.execute(query("reconcile_clear_job_aggregates"), _job_params(aggregates))
            cleared = len(await cur.fetchall())
        fixed_credits = 0
        if credits:
            cur = await conn.execute(query("reconcile_fix_job_credits"), _job_params(credits))
            fixed_credits = len(await cur.fetchall())
    return refreshed + cleared, fixed_credits


async def _fix_teams(store: PostgresStore, teams: list[str]) -> int:
    """Rewrite the balances of drifting accounts in one transaction; returns the rows fixed."""
    params = {"team_ids": sorted(teams)}
    async with store.transaction() as conn:
        await conn.execute(query("reconcile_ensure_accounts"), params)
        await conn.execute(query("reconcile_lock_accounts"), params)
        cur = await conn.execute(query("reconcile_fix_team_balances"), params)
        return len(await cur.fetchall())


async def fix_drift(
    store: PostgresStore,
    *,
    team_id: str | None = None,
    limit: int = DEFAULT_LIMIT,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_rounds: int = 1000,
) -> Report:
    """Find drift and rewrite it from the source rows, batch by batch; safe while proxies write.

    Returns the drift found at the start (``counts``, up to ``limit`` rows per kind in
    ``drifts``), the rows rewritten (``fixed``) and a final check's counts (``remaining``).
    Running it again on a clean database changes nothing.
    """
    first = await find_drift(store, team_id=team_id, limit=max(limit, batch_size))
    fixed = _zero_counts()
    current = first
    seen: set[tuple[DriftKind, str, str | None]] = set()
    for _ in range(max_rounds):
        if current.drifting == 0:
            break
        batch = list(current.drifts)
        keys = {(d.kind, d.team_id, d.job_id) for d in batch}
        if keys <= seen:
            # Rows already rewritten drift again: written concurrently or not fixable here; stop.
            _log.warning("litellm-jobs: reconcile made no progress on %d rows", len(keys))
            break
        seen |= keys
        aggregates = sorted({(d.team_id, d.job_id or "") for d in batch if d.kind is DriftKind.JOB_AGGREGATES})
        credits = sorted({(d.team_id, d.job_id or "") for d in batch if d.kind is DriftKind.JOB_CREDITS})
        for start in range(0, max(len(aggregates), len(credits)), batch_size):
            agg_fixed, credit_fixed = await _fix_jobs(
                store, aggregates[start : start + batch_size], credits[start : start + batch_size]
            )
            fixed[DriftKind.JOB_AGGREGATES] += agg_fixed
            fixed[DriftKind.JOB_CREDITS] += credit_fixed
        teams = sorted({d.team_id for d in batch if d.kind is DriftKind.TEAM_BALANCES})
        for start in range(0, len(teams), batch_size):
            fixed[DriftKind.TEAM_BALANCES] += await _fix_teams(store, teams[start : start + batch_size])
        current = await find_drift(store, team_id=team_id, limit=batch_size)
    shown: list[Drift] = []
    for kind in DriftKind:
        shown.extend([d for d in first.drifts if d.kind is kind][:limit])
    return Report(
        checked_at=first.checked_at,
        team_id=team_id,
        counts=first.counts,
        drifts=tuple(shown),
        fixed=fixed,
        remaining=current.counts,
    )


async def check_once(store: PostgresStore, *, limit: int = DEFAULT_LIMIT) -> Report | None:
    """A read-only check of every team, unless another process is running one (then ``None``)."""
    async with store.transaction() as conn:
        row = await store.fetch_one("reconcile_try_lock", {"key": RECONCILE_LOCK_KEY}, conn)
        if not (row and row["locked"]):
            return None
        return await find_drift(store, limit=limit, conn=conn)


async def drift_check_forever(store: PostgresStore, metrics: Metrics, interval_s: float) -> None:
    """Check for drift every ``interval_s`` (±10%, so replicas drift apart) and set the gauges.

    Read-only; one check at a time across replicas (an advisory lock held by the check's
    transaction: a replica that finds it taken skips that round). A failed check is logged and
    counted, and retried at the next round. ``interval_s`` <= 0: returns at once (off).
    """
    if interval_s <= 0:
        return
    while True:
        try:
            report = await check_once(store)
        except Exception:  # not CancelledError: the loop ends when its task is cancelled
            _log.exception("litellm-jobs: the drift check failed; retrying in %.0fs", interval_s)
            metrics.drift_check_failed()
        else:
            if report is not None:
                metrics.drift_checked(report)
                if not report.clean:
                    _log.warning(
                        "litellm-jobs: drift between cached totals and their source rows: %s "
                        "(see `litellm-jobs reconcile`; `--fix` repairs it)",
                        ", ".join(f"{k.value}={v}" for k, v in report.counts.items() if v),
                    )
        await asyncio.sleep(interval_s * random.uniform(0.9, 1.1))
