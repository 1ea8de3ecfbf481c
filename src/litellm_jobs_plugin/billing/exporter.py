"""The usage exporter: closed jobs from PostgreSQL to every enabled sink, at least once, same ids.

Each sink has a cursor in ``export_cursors``: a position in ``usage_outbox`` (migration 0008),
moved forward only after the sink took the events before it. A crash between a delivery and its
cursor move sends those events again, with the same ids (the systems drop what they have). One
exporter runs at a time across replicas: a round holds a PostgreSQL advisory lock; the other
replicas' rounds find it taken and do nothing. Nothing on a call's path waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from ..settings import Settings
from ..store.postgres import PostgresStore
from .events import call_event, job_event
from .sinks import Delivery, Sink, SinkError, send
from .sql import rows

_log = logging.getLogger(__name__)

#: pg_try_advisory_xact_lock key: the first 8 bytes of sha256("litellm_jobs_plugin.usage_export").
EXPORT_LOCK_KEY = int.from_bytes(hashlib.sha256(b"litellm_jobs_plugin.usage_export").digest()[:8], "big", signed=True)
#: How often a running exporter prunes the outbox (:meth:`Exporter.prune`), and how many rows a
#: statement looks at; a prune runs at most PRUNE_PAGES statements.
PRUNE_INTERVAL_S = 600.0
PRUNE_PAGE = 5000
PRUNE_PAGES = 20


async def load_sinks(store: PostgresStore, name: str | None = None) -> list[tuple[Sink, dict[str, Any]]]:
    """Configured sinks (or the one named) with their cursor and unmapped-team columns."""
    return [(Sink.from_row(r), r) for r in await rows(store, "list_sinks", {"name": name})]


@dataclass
class Prepared:
    """A page of closed jobs as one sink's deliveries: per job, its events (empty: not for this sink)."""

    groups: list[list[Delivery]]
    unmapped: Counter[str] = field(default_factory=Counter)

    @property
    def count(self) -> int:
        return sum(len(g) for g in self.groups)


async def prepare(store: PostgresStore, sink: Sink, jobs: Sequence[dict[str, Any]]) -> Prepared:
    """The events of ``jobs`` for ``sink``: its statuses, its customers, its calls if it wants them."""
    teams = sorted({j["team_id"] for j in jobs})
    customers = {
        r["team_id"]: r["customer_id"]
        for r in await rows(store, "customers_of", {"sink": sink.name, "team_ids": teams})
    }
    calls: dict[tuple[str, str], list[dict[str, Any]]] = {}
    wanted = [j for j in jobs if j["status"] in sink.options.statuses]
    if sink.options.include_calls and wanted:
        found = await rows(
            store,
            "calls_of_jobs",
            {"team_ids": [j["team_id"] for j in wanted], "job_ids": [j["job_id"] for j in wanted]},
        )
        for c in found:
            calls.setdefault((c["team_id"], c["job_id"]), []).append(c)
    prepared = Prepared(groups=[])
    for job in jobs:
        if job["status"] not in sink.options.statuses:
            prepared.groups.append([])
            continue
        events = [job_event(job), *(call_event(job, c) for c in calls.get((job["team_id"], job["job_id"]), []))]
        customer = customers.get(job["team_id"])
        if customer is None and sink.needs_customer:
            prepared.unmapped[job["team_id"]] += len(events)
            prepared.groups.append([])
            continue
        prepared.groups.append([Delivery(e, customer) for e in events])
    return prepared


async def _note_unmapped(store: PostgresStore, sink: Sink, unmapped: Counter[str]) -> None:
    for team, n in sorted(unmapped.items()):
        await rows(store, "note_unmapped", {"sink": sink.name, "team_id": team, "events": n})
        _log.warning("litellm-jobs: sink %s: team %s has no customer there; %d event(s) not sent", sink.name, team, n)


class Exporter:
    """Sends closed jobs to the sinks, one round at a time (:meth:`run_once`), forever (:meth:`start`)."""

    def __init__(self, store: PostgresStore, settings: Settings, *, client: httpx.AsyncClient | None = None) -> None:
        self.store = store
        self.settings = settings
        self._client = client or httpx.AsyncClient(timeout=settings.export_timeout_s)
        self._own_client = client is None
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> dict[str, int] | None:
        """One round over every enabled sink: events sent per sink; None if another process holds the lock."""
        sinks = [sink for sink, _ in await load_sinks(self.store) if sink.enabled]
        if not sinks:
            return {}  # nothing to export to: one query, not a locked transaction, every round
        async with self.store.transaction() as lock:
            if not (await rows(self.store, "export_try_lock", {"key": EXPORT_LOCK_KEY}, lock))[0]["locked"]:
                return None
            sent: dict[str, int] = {}
            for sink in sinks:
                try:
                    sent[sink.name] = await self.export_sink(sink)
                except SinkError as exc:
                    _log.warning("litellm-jobs: sink %s refused the export (retried next round): %s", sink.name, exc)
                    await rows(self.store, "cursor_error", {"sink": sink.name, "error": str(exc)[:1000]})
            return sent

    async def prune(self, *, page: int = PRUNE_PAGE, pages: int = PRUNE_PAGES) -> int | None:
        """Delete the outbox's closures no enabled sink needs any more, once older than
        ``JOBS_EXPORT_RETENTION_S``; how many (None: another process holds the exporter's lock).

        Every closed job gets an outbox row whether or not a sink exists: without this the table
        grows by one row per job forever. A statement per page, each in its own short transaction
        under the exporter's lock, until a page deletes less than it looked at.
        """
        deleted = 0
        for _ in range(pages):
            async with self.store.transaction() as conn:
                if not (await rows(self.store, "export_try_lock", {"key": EXPORT_LOCK_KEY}, conn))[0]["locked"]:
                    return None if deleted == 0 else deleted
                gone = await rows(
                    self.store, "prune_outbox", {"limit": page, "retention_s": self.settings.export_retention_s}, conn
                )
            deleted += len(gone)
            if len(gone) < page:
                break
        if deleted:
            _log.info("litellm-jobs: pruned %d exported closures from the usage outbox", deleted)
        return deleted

    async def export_sink(self, sink: Sink) -> int:
        """Send what ``sink`` has not taken yet, moving its cursor after each delivery."""
        await rows(self.store, "start_cursor", {"sink": sink.name})
        cursor = (await rows(self.store, "get_cursor", {"sink": sink.name}))[0]
        position = (int(cursor["position_xid"]), int(cursor["position_seq"]))
        limit = self.settings.export_batch_size
        total = 0
        while True:
            page = await rows(
                self.store,
                "outbox_page",
                {"xid": position[0], "seq": position[1], "limit": limit, "delay_s": self.settings.export_delay_s},
            )
            ripe = []
            for r in page:
                if not r["ripe"]:  # later closures wait too: the cursor never passes one still cooling
                    break
                ripe.append(r)
            if not ripe:
                return total
            prepared = await prepare(self.store, sink, ripe)
            if sink.batches:
                deliveries = [d for g in prepared.groups for d in g]
                await send(self._client, sink, deliveries)
                position = await self._advance(sink, ripe[-1], len(deliveries))
                total += len(deliveries)
            else:
                for row, group in zip(ripe, prepared.groups, strict=True):
                    await send(self._client, sink, group)
                    position = await self._advance(sink, row, len(group))
                    total += len(group)
            await _note_unmapped(self.store, sink, prepared.unmapped)
            if len(ripe) < len(page) or len(page) < limit:
                return total

    async def _advance(self, sink: Sink, row: dict[str, Any], sent: int) -> tuple[int, int]:
        position = (int(row["xid"]), int(row["seq"]))
        await rows(
            self.store, "advance_cursor", {"sink": sink.name, "xid": position[0], "seq": position[1], "sent": sent}
        )
        return position

    def start(self) -> None:
        """Run a round every JOBS_EXPORT_INTERVAL_S in the background (0: never)."""
        if self._task is None and self.settings.export_interval_s > 0:
            self._task = asyncio.get_running_loop().create_task(self._forever(), name="litellm-jobs-usage-export")

    async def _forever(self) -> None:
        next_prune = time.monotonic() + 60.0  # the first prune a minute after start, then every PRUNE_INTERVAL_S
        while True:
            await asyncio.sleep(self.settings.export_interval_s)
            try:
                await self.run_once()
            except Exception:
                _log.exception("litellm-jobs: the usage export round failed; retrying")
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + PRUNE_INTERVAL_S
                try:
                    await self.prune()
                except Exception:
                    _log.exception("litellm-jobs: pruning the usage outbox failed; retrying later")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None
        if self._own_client:
            await self._client.aclose()


@dataclass
class BackfillResult:
    """What a backfill sent to one sink, and what it could not (teams without a customer there)."""

    sink: str
    jobs: int = 0
    sent: int = 0
    unmapped: Counter[str] = field(default_factory=Counter)
    error: str | None = None


async def backfill(
    store: PostgresStore,
    settings: Settings,
    *,
    since: datetime,
    until: datetime,
    sink_name: str | None = None,
    client: httpx.AsyncClient | None = None,
) -> list[BackfillResult]:
    """Send every job closed in [since, until) again, with the ids the exporter gave them.

    Cursors are left as they are. Every enabled sink, or the one named (enabled or not).
    """
    sinks = [s for s, _ in await load_sinks(store, sink_name) if s.enabled or sink_name is not None]
    results = {s.name: BackfillResult(s.name) for s in sinks}
    own = client is None
    http = client or httpx.AsyncClient(timeout=settings.export_timeout_s)
    after: tuple[datetime, str, str] = (since, "", "")
    try:
        while sinks:
            page = await rows(
                store,
                "closed_jobs_since",
                {
                    "since": since,
                    "until": until,
                    "after_at": after[0],
                    "after_team": after[1],
                    "after_job": after[2],
                    "limit": settings.export_batch_size,
                },
            )
            if not page:
                break
            for sink in list(sinks):
                result = results[sink.name]
                prepared = await prepare(store, sink, page)
                deliveries = [d for g in prepared.groups for d in g]
                try:
                    await send(http, sink, deliveries)
                except SinkError as exc:
                    result.error = str(exc)
                    sinks.remove(sink)
                    continue
                result.jobs += sum(1 for g in prepared.groups if g)
                result.sent += len(deliveries)
                result.unmapped.update(prepared.unmapped)
            last = page[-1]
            after = (last["completed_at"], last["team_id"], last["job_id"])
            if len(page) < settings.export_batch_size:
                break
    finally:
        if own:
            await http.aclose()
    return list(results.values())
