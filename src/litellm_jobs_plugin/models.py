"""Typed values that flow through the plugin: request → :class:`CallContext` → :class:`CallEvent` → store."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar, dataclass_transform

from pydantic import BaseModel, ConfigDict

from .money import Amount

_T = TypeVar("_T")


@dataclass_transform(frozen_default=True)
def value_class(cls: type[_T]) -> type[_T]:
    """A slots dataclass that type checkers hold read-only: for the values built on every call.

    A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``, which costs
    about 2.7 times the instructions of a plain slot store (``bench/RESULTS.md``, run 11), and a call
    builds several of these values. So they are frozen for mypy, which refuses any assignment to their
    fields, and plain slots at run time; like a frozen dataclass they compare and hash by value.
    """
    return dataclass(slots=True, unsafe_hash=True)(cls)


#: Credits are integers of micro-credits in Redis and in memory.
MICRO = Decimal(1_000_000)
CREDIT_QUANTUM = Decimal("0.000001")


def to_micro(amount: Decimal) -> int:
    return int((amount * MICRO).to_integral_value())


def from_micro(value: int | str | bytes) -> Decimal:
    raw = value.decode() if isinstance(value, bytes) else value
    return (Decimal(int(Decimal(str(raw)))) / MICRO).quantize(CREDIT_QUANTUM)


class JobStatus(enum.StrEnum):
    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"


class CallStatus(enum.StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"


@value_class
class JobTag:
    """The job fields a client put on a request, validated."""

    job_id: str | None
    job_type: str | None
    job_metadata: dict[str, Any] | None
    team_id: str | None  # only the proxy admin may name a team
    purpose: str | None = None  # what this call is for (kept on its call row)


@value_class
class CallContext:
    """What the pre-call hook decided about a call, carried to its logging events.

    ``job_id`` is None only for untagged calls passed through under ``JOBS_UNTAGGED=allow``.
    """

    team_id: str | None
    job_id: str | None
    job_type: str | None
    single_call: bool
    requested_model: str | None
    key_hash: str | None
    user_id: str | None
    job_metadata: dict[str, Any] | None = None
    job_type_given: bool = False  # the request named the type (a different job type is a 409)
    credits_remaining: str | None = None  # after admission, for the x-credits-remaining header
    purpose: str | None = None
    #: The call id of this call's record when it is not LiteLLM's: a client that sends its own
    #: ``x-litellm-call-id`` gets a fresh record id for every request (see litellm_adapter.record_call_id).
    call_id: str | None = None

    @property
    def job_key(self) -> tuple[str, str] | None:
        """(team_id, job_id) of a tracked call; None for calls passed through untagged."""
        if self.team_id is None or self.job_id is None:
            return None
        return (self.team_id, self.job_id)

    def to_stash(self) -> dict[str, Any]:
        return {
            "team_id": self.team_id,
            "job_id": self.job_id,
            "job_type": self.job_type,
            "single_call": self.single_call,
            "requested_model": self.requested_model,
            "key_hash": self.key_hash,
            "user_id": self.user_id,
            "job_metadata": self.job_metadata,
            "job_type_given": self.job_type_given,
            "credits_remaining": self.credits_remaining,
            "purpose": self.purpose,
            "call_id": self.call_id,
        }

    @classmethod
    def from_stash(cls, stash: dict[str, Any]) -> CallContext:
        def text(key: str) -> str | None:
            value = stash.get(key)
            return value if isinstance(value, str) else None

        meta = stash.get("job_metadata")
        return cls(
            team_id=text("team_id"),
            job_id=text("job_id"),
            job_type=text("job_type"),
            single_call=bool(stash.get("single_call")),
            requested_model=text("requested_model"),
            key_hash=text("key_hash"),
            user_id=text("user_id"),
            job_metadata=meta if isinstance(meta, dict) else None,
            job_type_given=bool(stash.get("job_type_given")),
            credits_remaining=text("credits_remaining"),
            purpose=text("purpose"),
            call_id=text("call_id"),
        )


@value_class
class CallEvent:
    """One LiteLLM logging event (a success, or a failed attempt) of one call.

    ``event_id`` is derived from the event itself, so the same event delivered twice is one row.
    A call's row in the store is computed from all of its events: a success always wins over failed
    attempts (fallbacks share the call id of the final answer), whatever order they arrive in.
    """

    event_id: str
    call_id: str
    context: CallContext
    status: CallStatus
    call_type: str | None
    model_group: str | None
    model: str | None
    model_id: str | None
    provider: str | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal
    cache_hit: bool
    stream: bool
    started_at: datetime
    ended_at: datetime
    latency_ms: int
    error_type: str | None
    error_code: str | None


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class Job(_Frozen):
    """A job row with its aggregates (sums over its call rows)."""

    team_id: str
    job_id: str
    job_type: str
    status: JobStatus
    single_call: bool
    metadata: dict[str, Any]
    user_id: str | None
    created_at: datetime
    updated_at: datetime
    first_call_at: datetime | None
    last_call_at: datetime | None
    completed_at: datetime | None
    last_activity_at: datetime
    total_calls: int
    successful_calls: int
    failed_calls: int
    prompt_tokens: int
    completion_tokens: int
    total_cost_usd: Amount
    total_latency_ms: int
    models_used: list[str]
    max_calls: int | None
    max_cost_usd: Amount | None
    admitted_calls: int
    credits_held: Amount
    credits_charged: Amount
    result: Any = None
    error_message: str | None = None


class Call(_Frozen):
    """One LiteLLM call as recorded (prompts, completions and keys are never stored)."""

    call_id: str
    team_id: str | None
    job_id: str | None
    job_type: str | None
    key_hash: str | None
    user_id: str | None
    call_type: str | None
    requested_model: str | None
    model_group: str | None
    model: str | None
    model_id: str | None
    provider: str | None
    status: CallStatus
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Amount
    cache_hit: bool
    stream: bool
    latency_ms: int
    error_type: str | None
    error_code: str | None
    attempts: int
    failed_attempts: int
    started_at: datetime
    ended_at: datetime
    recorded_at: datetime
    purpose: str | None = None


class LedgerKind(enum.StrEnum):
    GRANT = "grant"
    HOLD = "hold"
    CAPTURE = "capture"
    RELEASE = "release"
    ADJUST = "adjust"


@value_class
class LedgerEntry:
    """One balance change. ``idempotency_key`` makes a replayed entry a no-op in the ledger."""

    team_id: str
    kind: LedgerKind
    amount: Decimal
    idempotency_key: str
    job_id: str | None = None
    job_type: str | None = None
    single_call: bool = False
    note: str | None = None
    #: A capture or release written by the writer that also closes its job row with this status
    #: (a single-call job's closure, off the request path).
    closes: JobStatus | None = None

    @property
    def job_key(self) -> tuple[str, str] | None:
        return None if self.job_id is None else (self.team_id, self.job_id)

    @property
    def event_id(self) -> str:  # the writer logs items by this name
        return self.idempotency_key


def ledger_key(kind: LedgerKind, team_id: str, job_id: str, incarnation: str = "") -> str:
    """The idempotency key of a job's hold/capture/release (length-prefixed: ids may hold ':').

    ``incarnation`` tells apart two openings of one job id: Redis and the in-process backend forget
    closed jobs after JOBS_CLOSED_JOB_TTL_S, and a job id used again after that opens a new job, whose
    entries must not collide with the old one's (job ids never hold '@').
    """
    key = f"{kind.value}:{len(team_id)}:{team_id}:{job_id}"
    return f"{key}@{incarnation}" if incarnation else key


def hold_entry(
    team_id: str, job_id: str, job_type: str, amount: Decimal, single_call: bool, incarnation: str
) -> LedgerEntry:
    """The ledger entry of a job's hold."""
    return LedgerEntry(
        team_id=team_id,
        kind=LedgerKind.HOLD,
        amount=amount,
        idempotency_key=ledger_key(LedgerKind.HOLD, team_id, job_id, incarnation),
        job_id=job_id,
        job_type=job_type,
        single_call=single_call,
    )


def closure_entries(
    team_id: str,
    job_id: str,
    job_type: str,
    hold: Decimal,
    incarnation: str,
    status: JobStatus,
    *,
    single_call: bool,
    closes_row: bool,
    charged: Decimal | None = None,
) -> list[LedgerEntry]:
    """The ledger entries of a closure: its hold again (idempotent), then the capture or release.

    ``charged`` (a completed job of a cost-based price): the capture is this much, and the rest of
    the hold is released. ``closes_row``: the last entry also closes the job row (written by the
    writer, off the request path). The service writes these, and the compact ``close`` record of
    close_job.lua decodes to them (:func:`~litellm_jobs_plugin.journal.decode_entry`).
    """

    def entry(kind: LedgerKind, amount: Decimal, closes: bool) -> LedgerEntry:
        return LedgerEntry(
            team_id=team_id,
            kind=kind,
            amount=amount,
            job_id=job_id,
            job_type=job_type,
            idempotency_key=ledger_key(kind, team_id, job_id, incarnation),
            closes=status if closes and closes_row else None,
        )

    held = hold_entry(team_id, job_id, job_type, hold, single_call, incarnation)
    if status is not JobStatus.COMPLETED:
        return [held, entry(LedgerKind.RELEASE, hold, True)]
    if charged is None or charged >= hold:
        return [held, entry(LedgerKind.CAPTURE, hold, True)]
    return [held, entry(LedgerKind.CAPTURE, charged, False), entry(LedgerKind.RELEASE, hold - charged, True)]


@dataclass(frozen=True, slots=True)
class JobCaps:
    max_calls: int | None = None
    max_cost_usd: Decimal | None = None


class Balance(_Frozen):
    team_id: str
    credits_allocated: Amount
    credits_remaining: Amount
    credits_held: Amount
    credits_charged: Amount
