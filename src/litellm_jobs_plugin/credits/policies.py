"""Team policies and failure spend, read from PostgreSQL and kept in each process's memory.

A tracked call needs its team's policy (price overrides, allowed job types, failure allowance)
and the team's failure spend before it is admitted. Reading PostgreSQL for each call would put a
round trip on every request, so each process keeps what it read and re-reads every team it has
seen in one query per ``JOBS_POLICY_REFRESH_S``, off the request path. A team's first call waits
for its first read. A policy the admin changes is in force at once on the replica that took the
change, and within ``JOBS_POLICY_REFRESH_S`` on the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from .. import money
from ..settings import Settings
from ..store.postgres import PostgresStore
from . import decide
from .decide import FailureUse, TeamPolicy

_log = logging.getLogger(__name__)
#: A team not seen for this long is no longer refreshed (it is read again at its next call).
_FORGET_AFTER_S = 600.0


@dataclass(slots=True)
class _Entry:
    policy: TeamPolicy
    use: FailureUse
    read_at: float
    used_at: float


def policy_from_row(row: dict[str, Any]) -> TeamPolicy:
    prices = row.get("job_prices") or {}
    if isinstance(prices, str):
        prices = json.loads(prices)
    allowed = row.get("allowed_job_types")
    if isinstance(allowed, str):
        allowed = json.loads(allowed)
    allowance = row.get("failure_allowance_usd")
    return TeamPolicy(
        job_prices={str(k): Decimal(str(v)) for k, v in prices.items()},
        allowed_job_types=None if allowed is None else frozenset(allowed),
        failure_allowance_usd=None if allowance is None else Decimal(allowance),
    )


def policy_json(team_id: str, policy: TeamPolicy) -> dict[str, Any]:
    """A policy as the routes and the CLI show it (money as decimal strings)."""
    return {
        "team_id": team_id,
        "job_prices": {k: f"{v.normalize():f}" for k, v in sorted(policy.job_prices.items())},
        "allowed_job_types": None if policy.allowed_job_types is None else sorted(policy.allowed_job_types),
        "failure_allowance_usd": None
        if policy.failure_allowance_usd is None
        else f"{policy.failure_allowance_usd.normalize():f}",
    }


def allowance_json(settings: Settings, policy: TeamPolicy, use: FailureUse) -> dict[str, Any]:
    """A team's failure allowance as the routes and the CLI show it: its limit, what it used in the
    window, and (once used up) when the oldest use leaves the window."""
    limit = decide.failure_allowance(settings, policy)
    window = settings.failure_window_s
    frees_at = None
    if use.oldest_at is not None and limit is not None and use.spent_usd >= limit:
        frees_at = (use.oldest_at + timedelta(seconds=window)).isoformat()
    return {
        "limit_usd": None if limit is None else money.exact(limit),
        "used_usd": money.exact(use.spent_usd),
        "window_s": window,
        "exhausted": decide.allowance_exhausted(settings, policy, use),
        "frees_at": frees_at,
    }


class TeamPolicies:
    """Each team's :class:`TeamPolicy` and :class:`FailureUse`, cached (see the module docstring)."""

    def __init__(
        self,
        store: PostgresStore,
        *,
        refresh_s: float,
        window_s: float,
        observer: Callable[[str, Decimal], None] | None = None,
    ) -> None:
        self.store = store
        #: Told each team's failure spend as it is read (the Prometheus gauge).
        self.observer = observer
        self.refresh_s = refresh_s
        self.window_s = window_s
        self._entries: dict[str, _Entry] = {}
        self._refresh: asyncio.Task[None] | None = None
        self._reading: dict[str, asyncio.Future[None]] = {}
        self._warned_at = float("-inf")

    async def get(self, team_id: str) -> tuple[TeamPolicy, FailureUse]:
        now = time.monotonic()
        entry = self._entries.get(team_id)
        if entry is None or entry.read_at == float("-inf"):  # unseen, or a failure here changed its spend
            try:
                await self._read_once(team_id)
            except Exception:
                # PostgreSQL is unreachable: calls of open jobs must go on (new jobs follow
                # JOBS_FAIL_MODE), on what was read before, or on the operator's settings alone.
                if time.monotonic() - self._warned_at > 30:
                    self._warned_at = time.monotonic()
                    _log.warning("litellm-jobs: could not read team policies; using what is known", exc_info=True)
                if entry is None:
                    return TeamPolicy(), FailureUse()
            entry = self._entries.get(team_id, entry)
            assert entry is not None
        elif now - entry.read_at > self.refresh_s:
            self._start_refresh()
        entry.used_at = now
        return entry.policy, entry.use

    def stale(self, team_id: str) -> None:
        """A job of the team failed or expired here: its next admission reads the spend again first."""
        entry = self._entries.get(team_id)
        if entry is not None:
            entry.read_at = float("-inf")

    async def _read_once(self, team_id: str) -> None:
        """Read one team; concurrent callers share the read (a burst of calls is one query, not one each)."""
        reading = self._reading.get(team_id)
        if reading is None:
            reading = asyncio.ensure_future(self._read([team_id]))
            self._reading[team_id] = reading
            reading.add_done_callback(lambda _: self._reading.pop(team_id, None))
        await asyncio.shield(reading)

    async def reload(self, team_id: str) -> tuple[TeamPolicy, FailureUse]:
        """Read the team now (after the admin changed its policy, or to show its figures)."""
        await self._read([team_id])
        return self._entries[team_id].policy, self._entries[team_id].use

    async def put(self, team_id: str, policy: TeamPolicy) -> None:
        await self.store.fetch_all(
            "put_team_policy",
            {
                "team_id": team_id,
                "job_prices": json.dumps({k: str(v) for k, v in policy.job_prices.items()}),
                "allowed_job_types": None
                if policy.allowed_job_types is None
                else json.dumps(sorted(policy.allowed_job_types)),
                "failure_allowance_usd": policy.failure_allowance_usd,
            },
        )
        await self._read([team_id])

    def _start_refresh(self) -> None:
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.get_running_loop().create_task(self._refresh_all(), name="litellm-jobs-policies")

    async def _refresh_all(self) -> None:
        now = time.monotonic()
        for team_id in [t for t, e in self._entries.items() if now - e.used_at > _FORGET_AFTER_S]:
            del self._entries[team_id]
        teams = [t for t, e in self._entries.items() if now - e.read_at > self.refresh_s]
        try:
            for start in range(0, len(teams), 1000):
                await self._read(teams[start : start + 1000])
        except Exception:
            # The values read before stay in force; the next call past the interval retries.
            _log.warning("litellm-jobs: could not refresh team policies", exc_info=True)

    async def _read(self, team_ids: list[str]) -> None:
        rows = await self.store.fetch_all("team_states", {"team_ids": team_ids, "window_s": self.window_s})
        now = time.monotonic()
        for row in rows:
            use = FailureUse(spent_usd=Decimal(row["failure_spent_usd"]), oldest_at=row["failure_oldest_at"])
            if self.observer is not None:
                self.observer(row["team_id"], use.spent_usd)
            previous = self._entries.get(row["team_id"])
            self._entries[row["team_id"]] = _Entry(
                policy_from_row(row), use, read_at=now, used_at=previous.used_at if previous else now
            )

    async def aclose(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._refresh
            self._refresh = None
