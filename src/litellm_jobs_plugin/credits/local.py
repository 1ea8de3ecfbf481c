"""Credits held in this process's memory, while it provably is the only one using the database.

The process holds an exclusive PostgreSQL advisory lock (:class:`Authority`); every process that
decides credits in PostgreSQL holds the same lock in shared mode, so the two modes never run side
by side. The state is loaded from PostgreSQL when the lock is taken; decisions are plain Python on
dicts, atomic because they never await; ledger entries reach PostgreSQL through the writer.

When another process asks for the shared lock (a second replica, ``--num_workers``), this process
*demotes itself*: it writes what it has buffered, hands its job counters to PostgreSQL, switches
to PostgreSQL mode and takes the lock in shared mode. Calls arriving during the switch wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg

from ..errors import StoreUnavailable
from ..models import Balance, JobStatus, LedgerEntry, LedgerKind, ledger_key
from ..store.notify import listen, notify, wait_for_notify
from ..store.postgres import PostgresStore
from ..store.sql import query
from ..writer import Writer
from . import decide, rules
from .base import Admission, Closure, CreditBackend, OpenJob
from .postgres import PostgresCredits

_log = logging.getLogger(__name__)
_OPEN = (JobStatus.PENDING, JobStatus.IN_PROGRESS)
#: The advisory lock key of "who decides credits" (positive, so pg_locks shows it as classid<<32|objid).
AUTHORITY_LOCK_KEY = 0x2F1C_8E0B_6A41_93D7
#: NOTIFY channel of a process about to wait for the lock (notifications stay within one database).
AUTHORITY_CHANNEL = "ljp_credits_authority"


@dataclass(slots=True)
class _Account:
    avail: Decimal
    held: Decimal
    grants: set[int]


@dataclass(slots=True)
class _Job:
    state: JobStatus
    job_type: str
    hold: Decimal
    calls: int
    max_calls: int | None
    max_cost: Decimal | None
    cost: Decimal
    last: float
    closed_at: float = 0.0
    charge: Decimal | None = None  # a completed job's cost-based charge
    incarnation: str = ""  # "" for jobs loaded from PostgreSQL (their entries have no suffix)
    single_call: bool = False  # its hold goes out with its closure (CreditService.admit_call)


class Authority:
    """The advisory lock that decides between in-process and PostgreSQL credits."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        return self._conn

    async def _one(self, name: str) -> Any:
        conn = await self._connection()
        row = await (await conn.execute(query(name), {"key": AUTHORITY_LOCK_KEY})).fetchone()
        return row[0] if row else None

    async def try_exclusive(self) -> bool:
        return bool(await self._one("authority_try_exclusive"))

    async def shared(self) -> None:
        """Wait for the lock in shared mode (an exclusive holder sees this process waiting)."""
        await self._one("authority_shared")

    async def release_exclusive_for_shared(self) -> None:
        # Shared first, then drop exclusive: the lock is never free for another exclusive taker.
        await self._one("authority_shared")
        await self._one("authority_unlock")

    async def waiters(self) -> int:
        return int(await self._one("authority_waiters") or 0)

    async def listen(self) -> None:
        """Be told (:meth:`wait_for_knock`) when another process :meth:`knock` s before waiting for the lock."""
        await listen(await self._connection(), AUTHORITY_CHANNEL)

    async def knock(self) -> None:
        """Tell the exclusive holder this process is about to wait for the lock (it then hands over at once)."""
        await notify(await self._connection(), AUTHORITY_CHANNEL)

    async def wait_for_knock(self, timeout_s: float) -> bool:
        """Return on a knock (True), on the loss of the lock's connection, or after ``timeout_s``."""
        if self._conn is not None and not self._conn.closed:
            return await wait_for_notify(self._conn, timeout_s) > 0
        await asyncio.sleep(timeout_s)
        return False

    async def aclose(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


class LocalCredits:
    """In-process credits for a single replica (see the module docstring)."""

    emits_ledger = True
    journals_holds = False
    journals_closures = False

    def __init__(
        self,
        store: PostgresStore,
        writer: Writer,
        authority: Authority,
        *,
        closed_ttl_s: float = 7 * 24 * 3600,
        max_closed: int = 100_000,
        watch_s: float = 30.0,
        switch_wait_s: float = 5.0,
    ) -> None:
        self.store = store
        self.switch_wait_s = switch_wait_s
        self.writer = writer
        self.authority = authority
        self.closed_ttl_s = closed_ttl_s
        self.max_closed = max_closed
        self.watch_s = watch_s
        self._accounts: dict[str, _Account] = {}
        self._jobs: dict[tuple[str, str], _Job] = {}
        self._closed: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._delegate: PostgresCredits | None = None  # set once demoted
        self._switching: asyncio.Event | None = None
        self._draining: asyncio.Event | None = None
        self._closes_in_flight = 0
        self._no_closes = asyncio.Event()
        self._no_closes.set()
        self._watcher: asyncio.Task[None] | None = None

    @property
    def mode(self) -> str:
        return "postgres (demoted)" if self._delegate is not None else "in-process"

    async def load(self) -> None:
        """Load balances and open jobs from PostgreSQL (the exclusive lock is held)."""
        for row in await self.store.fetch_all("account_snapshot", {"team_id": None}):
            self._accounts[row["team_id"]] = _Account(
                row["credits_remaining"], row["credits_held"], set(row["grant_ids"])
            )
        for row in await self.store.fetch_all("open_jobs", {}):
            self._jobs[(row["team_id"], row["job_id"])] = _Job(
                state=JobStatus(row["status"]),
                job_type=row["job_type"],
                hold=row["credits_held"],
                calls=row["admitted_calls"],
                max_calls=row["max_calls"],
                max_cost=row["max_cost_usd"],
                cost=row["total_cost_usd"],
                last=row["last_activity_at"].timestamp(),
                incarnation=(row["hold_key"] or "").partition("@")[2],
            )
        self._watcher = asyncio.get_running_loop().create_task(self._watch(), name="litellm-jobs-authority")

    async def _watch(self) -> None:
        """Hand the decisions over as soon as another process waits for the lock, or once the lock is lost.

        A newcomer knocks (a NOTIFY) before it waits, and a lost connection turns its socket readable:
        both wake this at once; ``watch_s`` only bounds the wait (a process that does not knock). The
        first check runs as soon as this listens, so a knock sent before (while this process loaded its
        state) is not missed: the 30 s bound is never what a newcomer of this version waits for, and an
        idle proxy looks at the lock twice a minute rather than every 5 s.
        """
        with contextlib.suppress(psycopg.Error):  # the check below finds the connection gone
            await self.authority.listen()
        knocked = False
        first = True
        while self._delegate is None:
            if not first:
                knocked = await self.authority.wait_for_knock(self.watch_s)
            first = False
            try:
                lost = False
                try:
                    waiting = await self.authority.waiters()
                except psycopg.Error:
                    # The lock's connection is gone, and the lock with it: another process may take it.
                    lost, waiting = True, 0
                # a knock comes just before its process waits for the lock: it counts as waiting
                if lost or waiting or knocked:
                    await self.demote(lock_lost=lost)
            except Exception:
                _log.exception("litellm-jobs: handing the credits over failed; retrying")

    @contextlib.asynccontextmanager
    async def closing(self) -> AsyncIterator[None]:
        """Brackets a closure and its durable write: a hand-over waits for those in flight."""
        while self._draining is not None:
            await self._draining.wait()
        self._closes_in_flight += 1
        self._no_closes.clear()
        try:
            yield
        finally:
            self._closes_in_flight -= 1
            if self._closes_in_flight == 0:
                self._no_closes.set()

    async def demote(self, *, lock_lost: bool = False) -> None:
        """Hand the credit decisions to PostgreSQL so other processes can share them."""
        if self._delegate is not None or self._draining is not None:
            return
        self._draining = asyncio.Event()
        try:
            await self._no_closes.wait()  # closures already deciding finish their durable writes
            self._switching = asyncio.Event()
            _log.warning(
                "litellm-jobs: %s; moving credits to PostgreSQL",
                "lost the credits authority lock" if lock_lost else "another process uses this database",
            )
            open_jobs = [(k, j) for k, j in self._jobs.items() if j.state in _OPEN]
            for (team_id, job_id), job in open_jobs:
                if job.single_call:
                    # Its hold has waited for its closure: PostgreSQL decides from here on, so it
                    # must know the hold now (a hold already written is skipped by its key).
                    await self.writer.put(
                        LedgerEntry(
                            team_id=team_id,
                            kind=LedgerKind.HOLD,
                            amount=job.hold,
                            idempotency_key=ledger_key(LedgerKind.HOLD, team_id, job_id, job.incarnation),
                            job_id=job_id,
                            job_type=job.job_type,
                            single_call=True,
                        )
                    )
            await self.writer.flush()  # every hold/capture/release entry is in the ledger now
            if open_jobs:
                await self.store.fetch_all(
                    "sync_open_jobs",
                    {
                        "team_ids": [k[0] for k, _ in open_jobs],
                        "job_ids": [k[1] for k, _ in open_jobs],
                        "calls": [j.calls for _, j in open_jobs],
                    },
                )
            if lock_lost:
                await self.authority.aclose()
                await self.authority.shared()  # a fresh connection; waits out any new exclusive holder
            else:
                await self.authority.release_exclusive_for_shared()
            self._delegate = PostgresCredits(self.store)
            self._accounts.clear()
            self._jobs.clear()
        finally:
            if self._switching is not None:
                self._switching.set()
                self._switching = None
            self._draining.set()
            self._draining = None

    async def _ready(self) -> PostgresCredits | None:
        if self._switching is not None:
            # The hand-over writes the buffer first: while PostgreSQL is down it cannot finish, and
            # a call must not hang on it — it gets a clear 503 instead.
            try:
                await asyncio.wait_for(asyncio.shield(self._switching.wait()), timeout=self.switch_wait_s)
            except TimeoutError as exc:
                raise StoreUnavailable(
                    "The jobs database is unreachable while this proxy hands its credit decisions over to it; "
                    "retry shortly."
                ) from exc
        return self._delegate

    def _account(self, team_id: str) -> _Account:
        account = self._accounts.get(team_id)
        if account is None:
            account = self._accounts[team_id] = _Account(Decimal(0), Decimal(0), set())
        return account

    def _forget_closed(self, now: float) -> None:
        while self._closed:
            key = next(iter(self._closed))
            job = self._jobs.get(key)
            if len(self._closed) <= self.max_closed and job is not None and now - job.closed_at < self.closed_ttl_s:
                break
            self._closed.popitem(last=False)
            self._jobs.pop(key, None)

    async def open_job(self, request: OpenJob) -> Admission:
        delegate = await self._ready()
        if delegate is not None:
            return await delegate.open_job(request)
        # From here to the return nothing awaits: the decision is atomic within the process.
        now = time.time()
        key = (request.team_id, request.job_id)
        account = self._account(request.team_id)
        job = self._jobs.get(key)
        if job is not None:
            return self._join(
                job, account, request.job_id, request.requested_type, request.count_call, request.create_only, now
            )
        verdict = decide.open_new(account.avail, request.price, refused=request.refusal is not None)
        if request.refusal is not None:
            raise request.refusal
        if verdict is decide.Verdict.INSUFFICIENT:
            raise rules.insufficient(request.team_id, request.price, account.avail)
        account.avail -= request.price
        account.held += request.price
        status = JobStatus.IN_PROGRESS if request.count_call else JobStatus.PENDING
        incarnation = str(time.time_ns())  # tells this opening from an earlier, forgotten one
        self._jobs[key] = _Job(
            state=status,
            job_type=request.new_type,
            hold=request.price,
            calls=int(request.count_call),
            max_calls=request.caps.max_calls,
            max_cost=request.caps.max_cost_usd,
            cost=Decimal(0),
            last=now,
            incarnation=incarnation,
            single_call=request.single_call,
        )
        return Admission(
            created=True,
            status=status,
            job_type=request.new_type,
            hold=request.price,
            credits_remaining=account.avail,
            incarnation=incarnation,
        )

    def join_open(self, team_id: str, job_id: str, requested_type: str | None) -> Admission | None:
        if self._delegate is not None or self._switching is not None:
            return None  # PostgreSQL decides (or is about to): the full path waits for it
        job = self._jobs.get((team_id, job_id))
        if job is None:
            return None
        return self._join(job, self._account(team_id), job_id, requested_type, True, False, time.time())

    @staticmethod
    def _join(
        job: _Job,
        account: _Account,
        job_id: str,
        requested_type: str | None,
        count_call: bool,
        create_only: bool,
        now: float,
    ) -> Admission:
        """A request to a job this process knows: admitted (its call counted) or refused, nothing awaited."""
        state = decide.JobState(job.state.value, job.job_type, job.calls, job.max_calls, job.max_cost, job.cost)
        verdict = decide.join(state, requested_type=requested_type, count_call=count_call, create_only=create_only)
        if verdict is not decide.Verdict.OK:
            raise decide.join_error(verdict, job_id, state, requested_type)
        if not create_only and count_call:
            job.calls += 1
            job.state = JobStatus.IN_PROGRESS
        job.last = now
        return Admission(
            created=False,
            status=job.state,
            job_type=job.job_type,
            hold=job.hold,
            credits_remaining=account.avail,
            incarnation=job.incarnation,
        )

    @staticmethod
    def _closure(job: _Job, status: JobStatus, account: _Account, *, repeated: bool) -> Closure:
        return Closure(
            status=status,
            repeated=repeated,
            job_type=job.job_type,
            hold=job.hold,
            admitted_calls=job.calls,
            credits_remaining=account.avail,
            incarnation=job.incarnation,
            charge=job.charge,
        )

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
        delegate = await self._ready()
        if delegate is not None:
            return await delegate.close_job(team_id, job_id, status, idle_cutoff_s=idle_cutoff_s, charge=charge)
        now = time.time()
        job = self._jobs.get((team_id, job_id))
        if job is None:
            return None
        account = self._account(team_id)
        verdict = decide.close(
            job.state.value,
            status,
            last_activity=job.last,
            idle_cutoff=None if idle_cutoff_s is None else now - idle_cutoff_s,
        )
        if verdict is decide.CloseVerdict.CONFLICT:
            raise rules.conflict(job_id, job.state.value)
        if verdict is decide.CloseVerdict.SAME:
            return self._closure(job, status, account, repeated=True)
        if verdict is decide.CloseVerdict.ACTIVE:
            return None
        avail_change, held_change = decide.settlement(job.hold, status, charge)
        account.avail += avail_change
        account.held += held_change
        job.state, job.closed_at, job.charge = status, now, charge
        self._closed[(team_id, job_id)] = None
        self._forget_closed(now)
        return self._closure(job, status, account, repeated=False)

    async def grant(
        self, team_id: str, amount: Decimal, *, kind: str, idempotency_key: str, note: str | None
    ) -> Balance:
        delegate = await self._ready()
        if delegate is not None:
            return await delegate.grant(team_id, amount, kind=kind, idempotency_key=idempotency_key, note=note)
        entry_id = await self.store.grant(team_id, amount, kind=kind, idempotency_key=idempotency_key, note=note)
        if self._delegate is None:
            account = self._account(team_id)
            if entry_id not in account.grants:
                account.grants.add(entry_id)
                account.avail += amount
        return await self.balance(team_id)

    async def balance(self, team_id: str) -> Balance:
        delegate = await self._ready()
        if delegate is not None:
            return await delegate.balance(team_id)
        durable = await self.store.balance(team_id)
        account = self._account(team_id)
        return Balance(
            team_id=team_id,
            credits_allocated=durable.credits_allocated,
            credits_remaining=account.avail,
            credits_held=account.held,
            credits_charged=durable.credits_allocated - account.avail - account.held,
        )

    async def idle_jobs(self, idle_s: float, limit: int) -> list[tuple[str, str]]:
        delegate = await self._ready()
        if delegate is not None:
            return await delegate.idle_jobs(idle_s, limit)
        cutoff = time.time() - idle_s
        return [k for k, j in self._jobs.items() if j.state in _OPEN and j.last < cutoff][:limit]

    async def add_cost(self, team_id: str, job_id: str, cost_usd: Decimal) -> None:
        delegate = await self._ready()
        if delegate is not None:
            return await delegate.add_cost(team_id, job_id, cost_usd)
        job = self._jobs.get((team_id, job_id))
        if job is not None:
            job.cost += cost_usd
            if job.state in _OPEN:
                job.last = time.time()
        return None

    async def knows(self, team_id: str, job_id: str) -> bool:
        return self._delegate is None and (team_id, job_id) in self._jobs

    async def admitted_calls(self, team_id: str, job_id: str) -> int | None:
        delegate = await self._ready()
        if delegate is not None:
            return await delegate.admitted_calls(team_id, job_id)
        job = self._jobs.get((team_id, job_id))
        return None if job is None else job.calls

    async def aclose(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        await self.authority.aclose()


class SharedPostgresCredits(PostgresCredits):
    """PostgreSQL credits for a process that shares the database: holds the authority lock shared.

    Until the lock is granted (an in-process replica is still demoting itself), decisions wait for
    it, at most ``wait_s``, then answer ``503 jobs_store_unavailable``.
    """

    def __init__(self, store: PostgresStore, authority: Authority, *, wait_s: float = 10.0) -> None:
        super().__init__(store)
        self.authority = authority
        self.wait_s = wait_s
        self._granted = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._take(), name="litellm-jobs-authority")

    async def _take(self) -> None:
        await self.authority.knock()  # an in-process holder hands over now rather than at its next check
        await self.authority.shared()
        self._granted.set()

    async def _wait(self) -> None:
        if self._granted.is_set():
            return
        try:
            await asyncio.wait_for(self._granted.wait(), timeout=self.wait_s)
        except TimeoutError as exc:
            raise StoreUnavailable("Another process is handing over the credit decisions; retry shortly.") from exc

    async def open_job(self, request: OpenJob) -> Admission:
        await self._wait()
        return await super().open_job(request)

    def closing(self) -> contextlib.AbstractAsyncContextManager[None]:
        return contextlib.nullcontext()

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
        await self._wait()
        return await super().close_job(team_id, job_id, status, idle_cutoff_s=idle_cutoff_s, charge=charge)

    async def grant(
        self, team_id: str, amount: Decimal, *, kind: str, idempotency_key: str, note: str | None
    ) -> Balance:
        await self._wait()
        return await super().grant(team_id, amount, kind=kind, idempotency_key=idempotency_key, note=note)

    async def aclose(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        await self.authority.aclose()


async def choose_backend(store: PostgresStore, writer: Writer, url: str, **local: Any) -> CreditBackend:
    """In-process credits if this process gets the authority lock alone, else shared PostgreSQL."""
    authority = Authority(url)
    if await authority.try_exclusive():
        backend = LocalCredits(store, writer, authority, **local)
        await backend.load()
        return backend
    return SharedPostgresCredits(store, authority)


def describe(backend: CreditBackend) -> str:
    """Where credit decisions are made, for logs and the health route."""
    if isinstance(backend, LocalCredits):
        return backend.mode
    if isinstance(backend, SharedPostgresCredits):
        return "postgres (shared)"
    return type(backend).__name__.removesuffix("Credits").lower()
