"""The checks every backend applies to an existing job."""

from __future__ import annotations

from decimal import Decimal

from ..errors import InsufficientCredits, JobBudgetExceeded, JobClosed, JobTypeMismatch, StoreUnavailable


def closed(job_id: str, state: str) -> JobClosed:
    return JobClosed(
        f"Job {job_id!r} is {state} and takes no more calls; start a new job (a new job_id).", param="metadata.job_id"
    )


def type_mismatch(job_id: str, job_type: str, requested: str | None) -> JobTypeMismatch:
    return JobTypeMismatch(
        f"Job {job_id!r} has job_type {job_type!r}, not {requested!r}; use {job_type!r} or a new job_id.",
        param="metadata.job_type",
    )


def over_calls(job_id: str, max_calls: int) -> JobBudgetExceeded:
    return JobBudgetExceeded(
        f"Job {job_id!r} has made its max_calls={max_calls} calls; start a new job.", param="max_calls"
    )


def over_cost(job_id: str, max_cost: Decimal | str) -> JobBudgetExceeded:
    return JobBudgetExceeded(
        f"Job {job_id!r} has spent its max_cost_usd={max_cost}; start a new job.", param="max_cost_usd"
    )


def insufficient(team_id: str, needed: Decimal, remaining: Decimal) -> InsufficientCredits:
    return InsufficientCredits(
        f"Team {team_id!r} needs {needed.normalize():f} credit(s) to open this job and has "
        f"{remaining.normalize():f} left; ask the proxy admin to grant credits."
    )


def conflict(job_id: str, state: str) -> JobClosed:
    return JobClosed(f"Job {job_id!r} is already {state}; a closed job cannot change its status.", param="status")


def store_down() -> StoreUnavailable:
    return StoreUnavailable(
        "The jobs database is unreachable, so no new job can be opened (JOBS_FAIL_MODE=closed); calls of open "
        "jobs still work. Retry shortly."
    )
