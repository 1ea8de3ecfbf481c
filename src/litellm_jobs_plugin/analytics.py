"""What jobs cost and earn, per job type and per team (``GET /api/analytics/job-types``).

The numbers are computed in SQL (``store/queries.sql``: ``job_type_stats``, ``job_type_series``,
``team_summaries``) over the jobs' aggregates, which always equal the sums over their call rows.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict

from .money import Amount
from .store.postgres import PostgresStore

Bucket = Literal["hour", "day", "week", "month"]


class _Row(BaseModel):
    model_config = ConfigDict(frozen=True)


class JobTypeStats(_Row):
    job_type: str
    jobs_started: int
    completed: int
    failed: int
    expired: int
    open: int
    success_rate: Decimal | None  # completed / (completed + failed + expired); None before any closed
    calls: int
    failed_calls: int
    calls_per_job: Decimal
    prompt_tokens: int
    completion_tokens: int
    cost_total_usd: Amount
    # Per closed job (an open job's cost is not final); None before any job closed.
    cost_avg_usd: Amount | None
    cost_p50_usd: Amount | None
    cost_p95_usd: Amount | None
    credits_charged: Amount
    failed_jobs_cost_usd: Amount  # spent on jobs that earned nothing (failed or expired)


class SeriesPoint(_Row):
    job_type: str
    bucket: datetime
    jobs: int
    completed: int
    unsuccessful: int
    cost_total_usd: Amount


class TeamSummary(_Row):
    team_id: str
    credits_allocated: Amount
    credits_remaining: Amount
    credits_held: Amount
    credits_charged_total: Amount
    credits_granted: Amount  # in the period
    credits_charged: Amount  # in the period
    jobs: int
    pending: int
    in_progress: int
    completed: int
    failed: int
    expired: int
    calls: int
    prompt_tokens: int
    completion_tokens: int
    cost_total_usd: Amount

    @classmethod
    def empty(cls, team_id: str) -> TeamSummary:
        """A team with no account and no jobs yet."""
        zeros = {name: 0 for name, f in cls.model_fields.items() if name != "team_id"}
        return cls.model_validate({"team_id": team_id, **zeros})


class Analytics(_Row):
    team_id: str | None  # None: every team (the proxy admin's view)
    since: datetime | None
    until: datetime | None
    job_types: list[JobTypeStats]
    teams: list[TeamSummary]
    series: list[SeriesPoint] | None = None


async def analytics(
    store: PostgresStore,
    *,
    team_id: str | None,
    since: datetime | None,
    until: datetime | None,
    bucket: Bucket | None = None,
) -> Analytics:
    window = {"team_id": team_id, "since": since, "until": until}
    job_types = [JobTypeStats.model_validate(r) for r in await store.fetch_all("job_type_stats", window)]
    teams = [TeamSummary.model_validate(r) for r in await store.fetch_all("team_summaries", window)]
    series = None
    if bucket is not None:
        rows = await store.fetch_all("job_type_series", {**window, "bucket": bucket})
        series = [SeriesPoint.model_validate(r) for r in rows]
    return Analytics(team_id=team_id, since=since, until=until, job_types=job_types, teams=teams, series=series)
