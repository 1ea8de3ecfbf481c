"""Credits in PostgreSQL alone: conditional updates under row locks, one transaction each.

Used when no Redis is configured. Exact with any number of processes: every decision about a
team's balance holds that team's ``credit_accounts`` row lock, every decision about a job its row
lock. The cost is a database round trip when a call is admitted.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from ..models import Balance, JobStatus, LedgerEntry, LedgerKind, closure_entries, ledger_key
from ..store.postgres import PostgresStore
from . import decide, rules
from .base import Admission, Closure, OpenJob


def check_existing(job: dict[str, Any], request: OpenJob) -> None:
    state = decide.JobState(
        job["status"],
        job["job_type"],
        job["admitted_calls"],
        job["max_calls"],
        job["max_cost_usd"],
        job["total_cost_usd"],
    )
    verdict = decide.join(
        state, requested_type=request.requested_type, count_call=request.count_call, create_only=request.create_only
    )
    if verdict is not decide.Verdict.OK:
        raise decide.join_error(verdict, request.job_id, state, request.requested_type)


class PostgresCredits:
    emits_ledger = False
    journals_holds = False
    journals_closures = False

    def __init__(self, store: PostgresStore) -> None:
        self.store = store

    def join_open(self, team_id: str, job_id: str, requested_type: str | None) -> Admission | None:
        return None  # every admission is decided where the job's state lives, in one round trip

    async def open_job(self, request: OpenJob) -> Admission:
        s = self.store
        key = {"team_id": request.team_id, "job_id": request.job_id}
        for _ in range(3):
            async with s.transaction() as conn:
                job = await s.fetch_one("lock_job", key, conn)
                if job is not None:
                    check_existing(job, request)
                    status = job["status"]
                    if not request.create_only:
                        touched = await s.fetch_one("touch_job", {**key, "calls": int(request.count_call)}, conn)
                        status = touched["status"] if touched else status
                    balance = await s.fetch_one("get_balance", key, conn)
                    return Admission(
                        created=False,
                        status=JobStatus(status),
                        job_type=job["job_type"],
                        hold=job["credits_held"],
                        credits_remaining=balance["credits_remaining"] if balance else Decimal(0),
                    )
                await s.fetch_all("ensure_account", key, conn)
                account = await s.fetch_one("lock_account", key, conn)
                remaining: Decimal = account["credits_remaining"] if account else Decimal(0)
                verdict = decide.open_new(remaining, request.price, refused=request.refusal is not None)
                if request.refusal is not None:
                    raise request.refusal
                if verdict is decide.Verdict.INSUFFICIENT:
                    raise rules.insufficient(request.team_id, request.price, remaining)
                status = JobStatus.IN_PROGRESS if request.count_call else JobStatus.PENDING
                row = await s.fetch_one(
                    "insert_job",
                    {
                        **key,
                        "job_type": request.new_type,
                        "status": status.value,
                        "single_call": request.single_call,
                        "metadata": json.dumps(request.metadata or {}),
                        "user_id": request.user_id,
                        "max_calls": request.caps.max_calls,
                        "max_cost_usd": request.caps.max_cost_usd,
                        "admitted_calls": int(request.count_call),
                    },
                    conn,
                )
                if row is None:
                    continue  # opened concurrently by another request: admit as an existing job
                await s.apply_ledger_in(
                    conn,
                    [
                        LedgerEntry(
                            team_id=request.team_id,
                            kind=LedgerKind.HOLD,
                            amount=request.price,
                            idempotency_key=ledger_key(LedgerKind.HOLD, request.team_id, request.job_id),
                            job_id=request.job_id,
                            job_type=request.new_type,
                            single_call=request.single_call,
                        )
                    ],
                )
                return Admission(
                    created=True,
                    status=status,
                    job_type=request.new_type,
                    hold=request.price,
                    credits_remaining=remaining - request.price,
                )
        raise RuntimeError("job row neither found nor created")  # pragma: no cover

    async def close_job(
        self,
        team_id: str,
        job_id: str,
        status: JobStatus,
        *,
        idle_cutoff_s: float | None = None,
        single_call: bool = False,
        journal_records: Sequence[str] | None = None,
        charge: Decimal | None = None,
    ) -> Closure | None:
        assert journal_records is None, "this backend does not journal closures"
        s = self.store
        key = {"team_id": team_id, "job_id": job_id}
        async with s.transaction() as conn:
            job = await s.fetch_one("lock_job", key, conn)
            if job is None:
                return None
            verdict = decide.close(job["status"], status, last_activity=0.0, idle_cutoff=None)
            if verdict is decide.CloseVerdict.CONFLICT:
                raise rules.conflict(job_id, job["status"])
            if verdict is decide.CloseVerdict.SAME:
                return Closure(
                    status=status,
                    repeated=True,
                    job_type=job["job_type"],
                    hold=job["credits_held"],
                    admitted_calls=job["admitted_calls"],
                    credits_remaining=None,
                )
            if idle_cutoff_s is not None:
                idle = await s.fetch_one("job_idle_for", {**key, "idle_s": idle_cutoff_s}, conn)
                if not (idle and idle["idle"]):
                    return None
            hold: Decimal = job["credits_held"]
            entries = closure_entries(
                team_id, job_id, job["job_type"], hold, "", status, single_call=False, closes_row=False, charged=charge
            )
            await s.apply_ledger_in(conn, entries[1:])  # the hold is in the ledger already
            await s.fetch_all(
                "close_job_row",
                {
                    **key,
                    "job_type": job["job_type"],
                    "status": status.value,
                    "single_call": job["single_call"],
                    "result": None,
                    "error_message": None,
                },
                conn,
            )
            balance = await s.fetch_one("get_balance", key, conn)
        return Closure(
            status=status,
            repeated=False,
            job_type=job["job_type"],
            hold=hold,
            admitted_calls=job["admitted_calls"],
            credits_remaining=balance["credits_remaining"] if balance else None,
            charge=charge if status is JobStatus.COMPLETED else None,
        )

    async def grant(
        self, team_id: str, amount: Decimal, *, kind: str, idempotency_key: str, note: str | None
    ) -> Balance:
        await self.store.grant(team_id, amount, kind=kind, idempotency_key=idempotency_key, note=note)
        return await self.store.balance(team_id)

    async def balance(self, team_id: str) -> Balance:
        return await self.store.balance(team_id)

    async def idle_jobs(self, idle_s: float, limit: int) -> list[tuple[str, str]]:
        rows = await self.store.fetch_all("idle_jobs", {"idle_s": idle_s, "limit": limit})
        return [(r["team_id"], r["job_id"]) for r in rows]

    async def add_cost(self, team_id: str, job_id: str, cost_usd: Decimal) -> None:
        return None  # max_cost_usd is checked against the recorded aggregates

    async def knows(self, team_id: str, job_id: str) -> bool:
        return False  # the row is the state: nothing is on its way to PostgreSQL

    async def admitted_calls(self, team_id: str, job_id: str) -> int | None:
        row = await self.store.fetch_one("job_admissions", {"team_id": team_id, "job_id": job_id})
        return None if row is None else int(row["admitted_calls"])

    def closing(self) -> contextlib.AbstractAsyncContextManager[None]:
        return contextlib.nullcontext()

    async def aclose(self) -> None:
        return None
