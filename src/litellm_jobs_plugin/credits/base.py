"""What every credit backend does, and the values it returns."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import field
from decimal import Decimal
from typing import Any, Protocol

from ..errors import JobsError
from ..models import Balance, JobCaps, JobStatus, value_class
from . import decide


@value_class
class OpenJob:
    """A request to admit a call to a job, opening the job (and holding its price) if it is new."""

    team_id: str
    job_id: str
    new_type: str  # the type a new job gets
    requested_type: str | None  # the type the request names; another job type is a 409
    price: Decimal
    single_call: bool = False
    caps: JobCaps = field(default_factory=JobCaps)
    count_call: bool = True  # False when the route creates the job (no call yet)
    create_only: bool = False
    metadata: dict[str, Any] | None = None
    user_id: str | None = None
    #: Why a new job may not open (the operator's terms: job type not allowed or not priced, the
    #: failure allowance used up; or PostgreSQL down under JOBS_FAIL_MODE=closed). Joining an open
    #: job is not affected; opening a new one (a new hold) raises this. See decide.terms.
    refusal: JobsError | None = None


@value_class
class Admission:
    created: bool  # this request opened the job and held its price
    status: JobStatus
    job_type: str
    hold: Decimal
    credits_remaining: Decimal
    incarnation: str = ""


@value_class
class Closure:
    status: JobStatus
    repeated: bool  # the job was already closed with this status: nothing changed
    job_type: str
    hold: Decimal
    admitted_calls: int
    credits_remaining: Decimal | None
    incarnation: str = ""
    #: A completed job's cost-based charge (None: a fixed price, the hold is captured whole).
    charge: Decimal | None = None

    @property
    def charged(self) -> Decimal:
        """Credits this closure charged."""
        return decide.captured(self.hold, self.charge) if self.status is JobStatus.COMPLETED else Decimal(0)


class CreditBackend(Protocol):
    """Holds, captures and releases, exact under concurrency. Raises JobsError subclasses."""

    #: True when ledger entries must be written by the caller (Redis); False when the backend
    #: writes them in its own transaction (PostgreSQL).
    emits_ledger: bool
    #: True when a new job's hold entry is made durable by the backend itself (Redis appends it to
    #: the journal in the script that takes the hold); the caller then writes only closures.
    journals_holds: bool
    #: True when :meth:`close_job` can append a closure's records and ledger entries to the journal
    #: in the script that decides it (Redis, ``journal_records``).
    journals_closures: bool

    async def open_job(self, request: OpenJob) -> Admission: ...

    def join_open(self, team_id: str, job_id: str, requested_type: str | None) -> Admission | None:
        """Admit a call to a job this process already holds open, deciding in memory without awaiting.

        None: the backend cannot tell without :meth:`open_job` (unknown job, decisions elsewhere). A
        refusal (closed job, another type, a cap reached) raises as :meth:`open_job` would. The new
        job's terms are not needed here: joining an open job never takes a new hold.
        """
        ...

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
        """None: unknown job, or (with ``idle_cutoff_s``) a job that was active since.

        ``charge`` (completing a job of a cost-based price): capture this much of the hold (at most
        all of it) and release the rest.

        ``journal_records`` (only where :attr:`journals_closures`): encoded records to append to the
        journal with the closure's ledger entries, in the same script, when a closure is returned.
        """
        ...

    async def grant(
        self, team_id: str, amount: Decimal, *, kind: str, idempotency_key: str, note: str | None
    ) -> Balance: ...

    async def balance(self, team_id: str) -> Balance: ...

    async def idle_jobs(self, idle_s: float, limit: int) -> list[tuple[str, str]]: ...

    async def add_cost(self, team_id: str, job_id: str, cost_usd: Decimal) -> None:
        """A call of the job finished with this cost (activity for the reaper, spend for max_cost_usd)."""
        ...

    async def knows(self, team_id: str, job_id: str) -> bool:
        """The backend holds this job's state (it may not have reached PostgreSQL yet)."""
        ...

    async def admitted_calls(self, team_id: str, job_id: str) -> int | None:
        """Calls admitted to the job so far (None: unknown job)."""
        ...

    def closing(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Brackets a closure and its durable write (the in-process backend's hand-over waits for it)."""
        ...

    async def aclose(self) -> None: ...
