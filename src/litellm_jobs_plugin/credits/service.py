"""The credit rules of the plugin over one backend: what the hooks, routes and reaper call."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from ..errors import (
    FailureAllowanceExhausted,
    InsufficientCredits,
    JobBudgetExceeded,
    JobClosed,
    JobNotFound,
    JobTypeNotAllowed,
    StoreUnavailable,
    UnknownJobType,
)
from ..journal import encode
from ..metrics import Metrics
from ..models import (
    Balance,
    CallContext,
    CallEvent,
    Job,
    JobCaps,
    JobStatus,
    LedgerEntry,
    closure_entries,
    hold_entry,
)
from ..settings import CostPrice, FailMode, Settings
from ..store.postgres import PostgresStore
from ..store.watch import StoreWatch
from ..writer import Writer
from . import decide
from .base import Admission, Closure, CreditBackend, OpenJob
from .policies import TeamPolicies

_log = logging.getLogger(__name__)
#: Terms kept (:meth:`CreditService.terms`) before the cache starts over: team × job type pairs.
_TERMS_KEPT = 10_000


#: Refusals counted in the rejections series (the 402s and a job type the operator does not allow).
_COUNTED_REFUSALS = (
    InsufficientCredits,
    JobBudgetExceeded,
    FailureAllowanceExhausted,
    UnknownJobType,
    JobTypeNotAllowed,
)


class CreditService:
    """Opens jobs by holding their price, closes them (capture or release), grants credits.

    Example::

        credits = CreditService(settings, store, writer, PostgresCredits(store))
        admission = await credits.admit_call(context)     # raises InsufficientCredits, JobClosed, ...
        closure = await credits.close_job("team-a", "doc-7f3a", JobStatus.COMPLETED)
    """

    def __init__(
        self,
        settings: Settings,
        store: PostgresStore,
        writer: Writer,
        backend: CreditBackend,
        *,
        metrics: Metrics | None = None,
        watch: StoreWatch | None = None,
        policies: TeamPolicies | None = None,
    ) -> None:
        self.settings = settings
        #: Team policies and failure spend (None: every team on the operator's settings, no spend known).
        self.policies = policies
        #: PostgreSQL's reachability, for JOBS_FAIL_MODE (None: always assumed reachable).
        self.watch = watch
        self.store = store
        self.writer = writer
        self.backend = backend
        self.metrics = metrics
        self._reaper: asyncio.Task[None] | None = None
        self._observers: set[asyncio.Task[None]] = set()
        #: Terms already worked out, by (team, job type, requested caps, store up), with the policy and
        #: failure spend they were worked out from: a new read of either (new objects) misses.
        self._terms: dict[
            tuple[str, str, JobCaps, bool], tuple[decide.TeamPolicy, decide.FailureUse, decide.Terms]
        ] = {}

    async def _open(self, request: OpenJob) -> Admission:
        try:
            admission = await self.backend.open_job(request)
        except _COUNTED_REFUSALS as exc:
            if self.metrics is not None:
                self.metrics.rejected(exc.type, request.team_id)
            raise
        if admission.created and self.metrics is not None:
            self.metrics.job_started(admission.job_type, request.team_id)
        return admission

    def _closed(
        self, team_id: str, job_id: str, status: JobStatus, closure: Closure, cost_usd: Decimal | None = None
    ) -> None:
        """Count a closure (once: repeats are not counted), and its job's cost once it is recorded."""
        if self.metrics is None or closure.repeated:
            return
        charged = closure.charged
        self.metrics.job_closed(closure.job_type, team_id, status, charged=charged, calls=closure.admitted_calls)
        if cost_usd is not None:
            self._cost_known(team_id, closure.job_type, status, cost_usd)
            return
        task = asyncio.get_running_loop().create_task(
            self._observe_cost(team_id, job_id, closure.job_type, closure.admitted_calls, status)
        )
        self._observers.add(task)
        task.add_done_callback(self._observers.discard)

    def _cost_known(self, team_id: str, job_type: str, status: JobStatus, cost_usd: Decimal) -> None:
        assert self.metrics is not None
        self.metrics.job_cost_known(job_type, cost_usd)
        if status is not JobStatus.COMPLETED:
            self.metrics.uncharged(job_type, team_id, cost_usd)

    async def _observe_cost(
        self, team_id: str, job_id: str, job_type: str, admitted_calls: int, status: JobStatus
    ) -> None:
        # Off every request path: the job's cost is known once its admitted calls are recorded
        # (an admitted call LiteLLM then refused never is: past the deadline, what is recorded counts).
        assert self.metrics is not None
        try:
            await self.store.wait_for_calls(
                team_id,
                job_id,
                admitted_calls,
                timeout_s=max(self.settings.complete_wait_s, 1.0) * 6,
                interval_s=0.05,
                max_interval_s=2.0,
            )
            job = await self.store.get_job(team_id, job_id)
        except Exception:
            _log.warning("litellm-jobs: could not read job %s for its cost metric", job_id, exc_info=True)
            return
        if job is not None:
            self._cost_known(team_id, job_type, status, job.total_cost_usd)

    async def terms(
        self,
        team_id: str,
        job_type: str,
        requested_caps: JobCaps = decide.NO_CAPS,
        *,
        store_up: bool,
    ) -> decide.Terms:
        """The price, caps and any refusal of a new job of ``job_type`` for the team (operator's terms only)."""
        if self.policies is None:
            policy, use = decide.TeamPolicy(), decide.FailureUse()
        else:
            policy, use = await self.policies.get(team_id)
        key = (team_id, job_type, requested_caps, store_up)
        known = self._terms.get(key)
        if known is not None and known[0] is policy and known[1] is use:
            return known[2]  # every call of an open job asks again: the same inputs, the same answer
        terms = decide.terms(
            self.settings,
            policy,
            use,
            team_id=team_id,
            job_type=job_type,
            requested_caps=requested_caps,
            store_up=store_up,
        )
        if terms.refusal is None:  # a refusal is an exception: raised afresh each time
            if len(self._terms) >= _TERMS_KEPT:
                self._terms.clear()
            self._terms[key] = (policy, use, terms)
        return terms

    async def admit_call(self, context: CallContext) -> Admission:
        """Admit a tracked call before it is routed: open its job (holding the price) or join it."""
        assert context.team_id is not None
        assert context.job_id is not None
        if not context.single_call:
            # a call of a job this process holds open: no terms to work out, nothing to await
            try:
                joined = self.backend.join_open(
                    context.team_id, context.job_id, context.job_type if context.job_type_given else None
                )
            except _COUNTED_REFUSALS as exc:
                if self.metrics is not None:
                    self.metrics.rejected(exc.type, context.team_id)
                raise
            if joined is not None:
                return joined
        job_type = context.job_type or self.settings.default_job_type
        terms = await self.terms(context.team_id, job_type, store_up=self.may_create())
        admission = await self._open(
            OpenJob(
                team_id=context.team_id,
                job_id=context.job_id,
                new_type=job_type,
                requested_type=context.job_type if context.job_type_given else None,
                price=terms.price,
                single_call=context.single_call,
                caps=terms.caps,
                metadata=context.job_metadata,
                user_id=context.user_id,
                refusal=terms.refusal,
            )
        )
        if (
            admission.created
            and self.backend.emits_ledger
            and not self.backend.journals_holds
            and not context.single_call
        ):
            # Off the request path: the hold becomes durable through the writer's buffer. A
            # single-call job's hold waits for its closure, which writes it with the call's record
            # and the capture or release in one batch (one round trip per job, not two); a crash
            # before then loses the in-memory hold with the call, and a hand-over to PostgreSQL
            # writes the holds still waiting (LocalCredits.demote).
            await self.writer.put(
                hold_entry(
                    context.team_id,
                    context.job_id,
                    admission.job_type,
                    admission.hold,
                    context.single_call,
                    admission.incarnation,
                )
            )
        return admission

    @property
    def closes_through_writer(self) -> bool:
        """A closure's ledger entries go through the writer (in-process and Redis credits), not a transaction."""
        return self.backend.emits_ledger

    def may_create(self) -> bool:
        """New jobs (new holds) may open: PostgreSQL answers, or JOBS_FAIL_MODE=open."""
        return self.settings.fail_mode is FailMode.OPEN or self.watch is None or self.watch.available

    async def create_job(
        self,
        *,
        team_id: str,
        job_id: str,
        job_type: str,
        caps: JobCaps,
        metadata: dict[str, Any] | None,
        user_id: str | None,
    ) -> tuple[bool, Job]:
        """``POST /api/jobs/create``: a pending job with its price held. Returns (created, job)."""
        # the route writes the job's row now: PostgreSQL must answer whatever JOBS_FAIL_MODE says
        terms = await self.terms(team_id, job_type, caps, store_up=self.watch is None or self.watch.available)
        caps = terms.caps
        admission = await self._open(
            OpenJob(
                team_id=team_id,
                job_id=job_id,
                new_type=job_type,
                requested_type=job_type,
                price=terms.price,
                caps=caps,
                count_call=False,
                create_only=True,
                metadata=metadata,
                user_id=user_id,
                refusal=terms.refusal,
            )
        )
        if admission.created and self.backend.emits_ledger:
            # With Redis the hold is already in the journal, whose reader may open the row first.
            await self.store.fetch_all(
                "insert_created_job",
                {
                    "team_id": team_id,
                    "job_id": job_id,
                    "job_type": job_type,
                    "metadata": json.dumps(metadata or {}),
                    "user_id": user_id,
                    "max_calls": caps.max_calls,
                    "max_cost_usd": caps.max_cost_usd,
                },
            )
            await self.store.apply_ledger(
                [hold_entry(team_id, job_id, job_type, admission.hold, False, admission.incarnation)]
            )
        job = await self.store.get_job(team_id, job_id)
        if job is None:  # pragma: no cover - the row was just written
            raise JobNotFound(f"Job {job_id!r} vanished while it was created.")
        return admission.created, job

    async def close_job(
        self,
        team_id: str,
        job_id: str,
        status: JobStatus,
        *,
        single_call: bool = False,
        result: Any = None,
        error_message: str | None = None,
        metadata: dict[str, Any] | None = None,
        idle_cutoff_s: float | None = None,
        via_writer: bool = False,
        cost_usd: Decimal | None = None,
        records: Sequence[CallEvent] = (),
        job_type: str | None = None,
    ) -> Closure | None:
        """Complete (capture the hold), fail or expire (release it). Idempotent per status.

        A job type with a cost-based price is charged from the job's recorded provider cost: this
        waits (at most ``JOBS_COMPLETE_WAIT_S``) for the calls admitted so far to be recorded first.
        ``job_type``, if the caller knows it, saves reading the job to find out.

        ``via_writer`` (a single-call job closed by its own call's logging event): the decision is
        made now, and its ledger entries and job row are written by the writer, with the call's
        record, instead of in two round trips of their own. ``cost_usd``: the job's cost, if known
        (a single-call job's is its call's), for the cost metric. ``records`` (with ``via_writer``):
        the call's own record, put with the closure's entries when they go through the writer
        (:attr:`closes_through_writer`); otherwise the caller puts it.

        Raises JobClosed when the job is already closed with the other status; returns None for an
        unknown job (or one that was active again, for the reaper).
        """
        charge = None
        if status is JobStatus.COMPLETED and self._cost_priced:
            charge = await self._cost_charge(team_id, job_id, job_type, cost_usd)
        # With Redis the script that decides the closure also journals it (and the call's record).
        journaled = via_writer and self.backend.journals_closures and self.writer.journal_up
        async with self.backend.closing():
            closure = await self.backend.close_job(
                team_id,
                job_id,
                status,
                idle_cutoff_s=idle_cutoff_s,
                charge=charge,
                single_call=single_call,
                journal_records=[encode(r) for r in records] if journaled else None,
            )
            if closure is None:
                return None
            self._closed(team_id, job_id, status, closure, cost_usd)
            if status is not JobStatus.COMPLETED and self.policies is not None:
                self.policies.stale(team_id)
            if journaled:
                return closure
            if self.backend.emits_ledger:
                # Make the closure durable now (a repeated close re-runs it harmlessly).
                entries = closure_entries(
                    team_id,
                    job_id,
                    closure.job_type,
                    closure.hold,
                    closure.incarnation,
                    status,
                    single_call=single_call,
                    closes_row=via_writer,
                    charged=closure.charge,
                )
                if via_writer:
                    items: list[CallEvent | LedgerEntry] = [*records, *entries]
                    await self.writer.put_many(items)  # one journal round trip with Redis
                    return closure
                try:
                    await self.store.apply_ledger(entries)
                except StoreUnavailable:
                    # The decision is made; the writer retries its record until PostgreSQL is back.
                    for entry in entries:
                        await self.writer.put(entry)
                    raise
                await self.store.fetch_all(
                    "close_job_row",
                    {
                        "team_id": team_id,
                        "job_id": job_id,
                        "job_type": closure.job_type,
                        "status": status.value,
                        "single_call": single_call,
                        "result": None,
                        "error_message": None,
                    },
                )
        if result is not None or error_message is not None or metadata:
            await self.store.fetch_all(
                "set_job_outcome",
                {
                    "team_id": team_id,
                    "job_id": job_id,
                    "result": None if result is None else json.dumps(result),
                    "error_message": error_message,
                    "metadata": json.dumps(metadata) if metadata else None,
                },
            )
        return closure

    @property
    def _cost_priced(self) -> bool:
        """Some job type has a cost-based price (else completing a job never reads its cost first)."""
        return any(isinstance(p, CostPrice) for p in self.settings.job_prices.values())

    async def _cost_charge(
        self, team_id: str, job_id: str, job_type: str | None, cost_usd: Decimal | None
    ) -> Decimal | None:
        """A completed job's charge under its type's cost-based price (None: a fixed price)."""
        if job_type is None:
            row = await self.job_row(team_id, job_id)
            if row is None:
                return None
            job_type = row.job_type
        policy = decide.TeamPolicy() if self.policies is None else (await self.policies.get(team_id))[0]
        rule = decide.cost_rule(self.settings, policy, job_type)
        if rule is None:
            return None
        if cost_usd is None:
            admitted = await self.backend.admitted_calls(team_id, job_id)
            if admitted:
                await self.store.wait_for_calls(team_id, job_id, admitted, timeout_s=self.settings.complete_wait_s)
            row = await self.store.get_job(team_id, job_id)
            cost_usd = row.total_cost_usd if row is not None else Decimal(0)
        return decide.cost_charge(rule, cost_usd)

    async def grant(
        self, team_id: str, amount: Decimal, *, kind: str, idempotency_key: str, note: str | None = None
    ) -> Balance:
        return await self.backend.grant(team_id, amount, kind=kind, idempotency_key=idempotency_key, note=note)

    async def balance(self, team_id: str) -> Balance:
        return await self.backend.balance(team_id)

    async def job_row(self, team_id: str, job_id: str, *, wait_s: float = 1.0) -> Job | None:
        """The job's row; for a job the backend already holds, waits (bounded) for its row to be written.

        With Redis (or in-process credits) a job opened by a call reaches PostgreSQL through the
        journal or the writer, a few milliseconds after the call was admitted: a client reading the
        job right after its call's answer gets the job, not a 404.
        """
        job = await self.store.get_job(team_id, job_id)
        if job is not None or not await self.backend.knows(team_id, job_id):
            return job
        deadline = asyncio.get_running_loop().time() + wait_s
        while job is None and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
            job = await self.store.get_job(team_id, job_id)
        return job

    async def add_cost(self, team_id: str, job_id: str, cost_usd: Decimal) -> None:
        await self.backend.add_cost(team_id, job_id, cost_usd)

    # -- the idle reaper --------------------------------------------------------------------

    async def reap_once(self) -> int:
        """Expire jobs idle longer than JOBS_IDLE_TIMEOUT_S; safe on every replica at once."""
        idle = self.settings.idle_timeout_s
        expired = 0
        for team_id, job_id in await self.backend.idle_jobs(idle, 100):
            # The backend re-checks idleness atomically: a job touched meanwhile is left open, and
            # a job another replica expired first answers as a repeat.
            try:
                closure = await self.close_job(team_id, job_id, JobStatus.EXPIRED, idle_cutoff_s=idle)
            except JobClosed:
                continue  # completed or failed meanwhile: nothing to expire
            if closure is not None and not closure.repeated:
                expired += 1
        return expired

    def start_reaper(self) -> None:
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap_forever(), name="litellm-jobs-reaper")

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reaper_interval_s)
            try:
                n = await self.reap_once()
                if n:
                    _log.info("litellm-jobs: expired %d idle jobs", n)
            except Exception:
                _log.exception("litellm-jobs: the idle reaper failed; retrying")

    async def aclose(self) -> None:
        for task in list(self._observers):
            task.cancel()
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        if self.policies is not None:
            await self.policies.aclose()
        await self.backend.aclose()
