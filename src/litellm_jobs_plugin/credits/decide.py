"""Every credit decision, as pure functions of the state they decide on.

The in-process and PostgreSQL backends load the state (from memory, or from rows they hold locks
on), call these functions, and store what they return. Redis decides inside Lua scripts, which
carry the same rules; ``tests/unit/test_decide_lua.py`` feeds both the same states and proves they
decide alike. Nothing here does I/O or reads a clock.

The rules:

* **Joining a job** (a call of an open job): a closed job takes no calls (409), a call naming
  another job type is refused (409), a job at its ``max_calls`` or ``max_cost_usd`` takes no more
  calls (402).
* **Opening a job** holds its price: refused first for what the operator's terms say (job type
  not allowed or not priced, failure allowance used up, database down), then for the balance (402).
* **Closing a job**: completed captures the hold, failed and expired release it; closing again
  with the same status changes nothing, with another is a conflict; the reaper's close of a job
  that was active since its cut-off is no closure.
* **Terms of a new job**: its price and caps, from the operator's configuration and the team's
  policy, never from what the client sends.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from typing import TypeVar

from ..errors import FailureAllowanceExhausted, JobsError, JobTypeNotAllowed, UnknownJobType
from ..models import JobCaps, JobStatus, value_class
from ..settings import CostPrice, Settings, UnpricedJobTypes
from . import rules

_N = TypeVar("_N", int, Decimal)

NO_CAPS = JobCaps()
OPEN_STATES = frozenset({JobStatus.PENDING.value, JobStatus.IN_PROGRESS.value})


class Verdict(enum.StrEnum):
    """What a request to admit a call (or to create a job) gets. The values are the Lua scripts' words."""

    OK = "ok"
    CLOSED = "closed"
    TYPE_MISMATCH = "type_mismatch"
    OVER_CALLS = "over_calls"
    OVER_COST = "over_cost"
    INSUFFICIENT = "insufficient"
    REFUSED = "refused"  # the new job's terms refuse it (see :class:`Terms`)


class CloseVerdict(enum.StrEnum):
    CLOSED = "closed"  # closed now: settle the hold
    SAME = "same"  # already closed with this status: nothing changes
    CONFLICT = "conflict"  # already closed with another status
    ACTIVE = "active"  # the reaper's cut-off: the job was active since


@value_class
class JobState:
    """What the rules read of an existing job."""

    state: str
    job_type: str
    calls: int  # admitted calls
    max_calls: int | None
    max_cost: Decimal | None
    cost: Decimal  # provider cost recorded so far (USD)


def join(job: JobState, *, requested_type: str | None, count_call: bool, create_only: bool) -> Verdict:
    """Admit a request to an existing job. On OK with ``count_call``, the caller counts one more call."""
    if job.state not in OPEN_STATES:
        return Verdict.CLOSED
    if requested_type is not None and requested_type != job.job_type:
        return Verdict.TYPE_MISMATCH
    if count_call and not create_only:
        if job.max_calls is not None and job.max_calls > 0 and job.calls >= job.max_calls:
            return Verdict.OVER_CALLS
        if job.max_cost is not None and job.max_cost > 0 and job.cost >= job.max_cost:
            return Verdict.OVER_COST
    return Verdict.OK


def open_new(available: Decimal, price: Decimal, *, refused: bool) -> Verdict:
    """Open a new job by holding ``price`` out of ``available`` credits."""
    if refused:
        return Verdict.REFUSED
    if available < price:
        return Verdict.INSUFFICIENT
    return Verdict.OK


def close(state: str, status: JobStatus, *, last_activity: float, idle_cutoff: float | None) -> CloseVerdict:
    """Close a job with ``status``; ``idle_cutoff`` (the reaper): only if not active after it."""
    if state not in OPEN_STATES:
        return CloseVerdict.SAME if state == status.value else CloseVerdict.CONFLICT
    if idle_cutoff is not None and last_activity > idle_cutoff:
        return CloseVerdict.ACTIVE
    return CloseVerdict.CLOSED


def captured(hold: Decimal, charge: Decimal | None) -> Decimal:
    """What a completed job is charged out of its hold: the hold (a fixed price), or its cost-based
    ``charge``, never more than the hold."""
    return hold if charge is None else min(hold, charge)


def settlement(hold: Decimal, status: JobStatus, charge: Decimal | None = None) -> tuple[Decimal, Decimal]:
    """(change of available credits, change of held credits) when a job closes with ``status``.

    Completed: the hold becomes a charge (a cost-based ``charge`` gives the rest of the hold back);
    failed and expired jobs are free: the hold is released.
    """
    if status is JobStatus.COMPLETED:
        return hold - captured(hold, charge), -hold
    return hold, -hold


_CREDIT = Decimal("0.000001")


def cost_charge(rule: CostPrice, cost_usd: Decimal) -> Decimal:
    """Credits a job of a cost-priced type is charged for ``cost_usd``: rounded up to a millionth of a
    credit, at least the minimum, at most the maximum (what was held)."""
    charge = (cost_usd * rule.credits_per_usd).quantize(_CREDIT, rounding=ROUND_CEILING)
    return min(rule.maximum, max(rule.minimum, charge))


def join_error(verdict: Verdict, job_id: str, job: JobState, requested_type: str | None) -> JobsError:
    """The error a refused :func:`join` answers with."""
    if verdict is Verdict.CLOSED:
        return rules.closed(job_id, job.state)
    if verdict is Verdict.TYPE_MISMATCH:
        return rules.type_mismatch(job_id, job.job_type, requested_type)
    if verdict is Verdict.OVER_CALLS:
        return rules.over_calls(job_id, job.max_calls or 0)
    return rules.over_cost(job_id, job.max_cost or Decimal(0))


# -- the terms of a new job: price, caps and refusals, from the operator only ---------------------


@dataclass(frozen=True, slots=True)
class TeamPolicy:
    """What the proxy admin set for one team (every field optional: None follows the operator's settings)."""

    job_prices: Mapping[str, Decimal] = field(default_factory=dict)
    allowed_job_types: frozenset[str] | None = None
    failure_allowance_usd: Decimal | None = None


@dataclass(frozen=True, slots=True)
class FailureUse:
    """The provider cost of a team's failed and expired jobs closed inside the window."""

    spent_usd: Decimal = Decimal(0)
    oldest_at: datetime | None = None  # when the oldest of them closed


@dataclass(frozen=True, slots=True)
class Terms:
    """A new job's price and caps, or why it may not open (``refusal``)."""

    price: Decimal
    caps: JobCaps
    refusal: JobsError | None = None


def price(settings: Settings, policy: TeamPolicy, job_type: str) -> Decimal | None:
    """Credits a new job of ``job_type`` holds for the team (a fixed price, or a cost-based price's
    maximum); None: the operator has not priced it."""
    if job_type in policy.job_prices:
        return policy.job_prices[job_type]
    if job_type in settings.job_prices or job_type == settings.default_job_type or not rejects_unpriced(settings):
        return settings.price_of(job_type)
    return None


def cost_rule(settings: Settings, policy: TeamPolicy, job_type: str) -> CostPrice | None:
    """The cost-based price a job of ``job_type`` is charged by, if any (a team's fixed price wins)."""
    if job_type in policy.job_prices:
        return None
    return settings.cost_price_of(job_type)


def rejects_unpriced(settings: Settings) -> bool:
    mode = settings.unpriced_job_types
    if mode is UnpricedJobTypes.AUTO:
        return bool(settings.job_prices)
    return mode is UnpricedJobTypes.REJECT


def caps(settings: Settings, job_type: str, requested: JobCaps, rule: CostPrice | None = None) -> JobCaps:
    """The tightest of the caps the request names, the operator's caps for the job type and, for a
    cost-based price, the cost its maximum covers (a job is never run beyond what it holds)."""
    preset = settings.job_type_caps.get(job_type)
    max_calls, max_cost = requested.max_calls, requested.max_cost_usd
    if preset is not None:
        max_calls = _tighter(max_calls, preset.max_calls)
        max_cost = _tighter(max_cost, preset.max_cost_usd)
    if rule is not None:
        max_cost = _tighter(max_cost, rule.max_cost_usd)
    if (max_calls, max_cost) == (requested.max_calls, requested.max_cost_usd):
        return requested
    return JobCaps(max_calls=max_calls, max_cost_usd=max_cost)


def _tighter(a: _N | None, b: _N | None) -> _N | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def failure_allowance(settings: Settings, policy: TeamPolicy) -> Decimal | None:
    """The team's allowance (USD per window); None: no limit."""
    if policy.failure_allowance_usd is not None:
        return policy.failure_allowance_usd
    return settings.failure_allowance_usd


def allowance_exhausted(settings: Settings, policy: TeamPolicy, use: FailureUse) -> bool:
    limit = failure_allowance(settings, policy)
    return limit is not None and use.spent_usd >= limit


def terms(
    settings: Settings,
    policy: TeamPolicy,
    use: FailureUse,
    *,
    team_id: str,
    job_type: str,
    requested_caps: JobCaps = NO_CAPS,
    store_up: bool = True,
) -> Terms:
    """The terms a new job of ``job_type`` opens on for ``team_id`` (checked only if the job is new)."""
    job_caps = caps(settings, job_type, requested_caps, cost_rule(settings, policy, job_type))
    if policy.allowed_job_types is not None and job_type not in policy.allowed_job_types:
        allowed = ", ".join(sorted(policy.allowed_job_types)) or "none"
        return Terms(
            settings.default_price,
            job_caps,
            JobTypeNotAllowed(
                f"Team {team_id!r} may not open jobs of type {job_type!r}; its job types: {allowed}.",
                param="job_type",
            ),
        )
    credits = price(settings, policy, job_type)
    if credits is None:
        priced = sorted({*settings.job_prices, *policy.job_prices})
        return Terms(
            settings.default_price,
            job_caps,
            UnknownJobType(
                f"Job type {job_type!r} has no price on this proxy (job types are case-sensitive); "
                f"use one of: {', '.join(priced)}.",
                param="job_type",
            ),
        )
    if allowance_exhausted(settings, policy, use):
        limit = failure_allowance(settings, policy)
        frees = (
            f"; it frees up from {(use.oldest_at + timedelta(seconds=settings.failure_window_s)).isoformat()} on"
            if use.oldest_at is not None
            else ""
        )
        return Terms(
            credits,
            job_caps,
            FailureAllowanceExhausted(
                f"Team {team_id!r} has used its allowance for failed and expired jobs: their provider cost was "
                f"{use.spent_usd.normalize():f} USD in the last {_window(settings.failure_window_s)}, "
                f"against {limit.normalize() if limit is not None else 0:f} USD allowed{frees}. "
                "Jobs already open go on; ask the proxy admin to raise the allowance.",
                param="failure_allowance_usd",
            ),
        )
    if not store_up:
        return Terms(credits, job_caps, rules.store_down())
    return Terms(credits, job_caps)


def _window(seconds: float) -> str:
    if seconds % 3600 == 0:
        hours = int(seconds // 3600)
        return f"{hours} hour{'s' if hours != 1 else ''}"
    return f"{math.ceil(seconds)} s"
