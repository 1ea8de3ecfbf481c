"""The delivery worker: one at a time across replicas, sending the outbox's deliveries.

Every proxy process starts one. It takes a session advisory lock on a PostgreSQL connection of its
own; the process that holds it sends, the others stand by and try again every few seconds (the
lock is released when its holder's connection ends: a killed replica's is taken over at once).

Deliveries are claimed with a lease (``next_attempt_at`` moved past the request's timeout), so a
worker killed mid-send leaves them due again: delivery is at least once, and receivers dedupe on
``webhook-id``. Only the first pending delivery of each (endpoint, job) or (endpoint, team) is
claimed, so a job's or a team's events reach an endpoint in the order they were written. A failed
attempt is retried after an exponential backoff with jitter until the delivery is older than
``JOBS_WEBHOOK_MAX_AGE_S``; then it is a dead letter, kept until retried by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
import psycopg
from psycopg.rows import dict_row

from ..store.notify import listen, wait_for_notify
from ..store.postgres import PostgresStore
from ..store.sql import query
from .events import JOB_EVENTS, event_data, headers, parse_snapshot, render

if TYPE_CHECKING:
    from ..metrics import Metrics
    from ..settings import Settings

_log = logging.getLogger("litellm_jobs_plugin.webhooks")

#: pg_advisory_lock key: the first 8 bytes of sha256("litellm_jobs_plugin.webhooks").
WEBHOOK_LOCK_KEY = int.from_bytes(hashlib.sha256(b"litellm_jobs_plugin.webhooks").digest()[:8], "big", signed=True)
_MAX_ERROR_CHARS = 500
#: A pending delivery that is due but not claimable (behind an earlier one of its job or team) is
#: looked at again after this long, not in a busy loop.
_MIN_WAIT_S = 0.25
#: While sends are in flight, new due deliveries are looked for at least this often.
_BUSY_POLL_S = 0.5
#: The delivering process checks its lock's connection this often while idle. A server that closes it
#: wakes the worker at once (its socket turns readable); TCP keepalives find a peer that vanished.
_LOCK_PING_S = 30.0
#: The backlog and dead-letter gauges are read again 5 s after a change at most, and once a minute.
_COUNT_AFTER_CHANGE_S = 5.0
_COUNT_EVERY_S = 60.0


def wakeup_channel(schema: str) -> str:
    """The NOTIFY channel an event with deliveries wakes the worker on (migration 0010: per schema)."""
    return "ljp_webhooks_" + hashlib.md5(schema.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    """How deliveries are sent and retried (from the JOBS_WEBHOOK_* settings)."""

    timeout_s: float = 10.0
    concurrency: int = 8
    max_age_s: float = 86_400.0
    backoff_base_s: float = 1.0
    backoff_max_s: float = 600.0
    poll_s: float = 30.0
    standby_s: float = 5.0
    retention_s: float = 7 * 86_400.0
    job_settle_s: float = 1.0

    @classmethod
    def from_settings(cls, s: Settings) -> DeliveryPolicy:
        return cls(
            timeout_s=s.webhook_timeout_s,
            concurrency=s.webhook_concurrency,
            max_age_s=s.webhook_max_age_s,
            backoff_base_s=s.webhook_backoff_base_s,
            backoff_max_s=s.webhook_backoff_max_s,
            poll_s=s.webhook_poll_s,
            standby_s=s.webhook_standby_s,
            retention_s=s.webhook_retention_s,
            job_settle_s=s.webhook_job_settle_s,
        )

    def backoff(self, attempts: int) -> float:
        """Seconds before the next attempt after ``attempts`` failed ones: exponential, capped,
        half of it random (equal jitter), so that many failing deliveries do not retry together."""
        ceiling = min(self.backoff_max_s, self.backoff_base_s * float(2 ** min(attempts - 1, 30)))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    @property
    def lease_s(self) -> float:
        return self.timeout_s + 5.0


class WebhookWorker:
    """Sends due deliveries while it holds the webhook lock (see the module docstring)."""

    def __init__(
        self,
        store: PostgresStore,
        policy: DeliveryPolicy,
        *,
        metrics: Metrics | None = None,
        allowance: tuple[Any, float] | None = None,
    ) -> None:
        self.store = store
        self.policy = policy
        self.metrics = metrics
        #: (the operator's failure allowance in USD or None, its window in seconds): written for the trigger.
        self.allowance = allowance
        self.active = False
        #: Times the delivering process lost its lock's connection (it then tries to take the lock again).
        self.lost = 0
        #: Something changed the backlog or dead letters since the gauges were read.
        self._stale = True
        self._task: asyncio.Task[None] | None = None
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        if self.allowance is not None:
            try:
                limit, window = self.allowance
                await self.store.fetch_all(
                    "webhook_put_allowance_defaults", {"failure_allowance_usd": limit, "failure_window_s": window}
                )
            except Exception:
                _log.warning("litellm-jobs: webhooks: could not record the failure allowance", exc_info=True)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="litellm-jobs-webhooks")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None

    # -- the lock ----------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            conn: psycopg.AsyncConnection[dict[str, Any]] | None = None
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.store.url,
                    autocommit=True,
                    row_factory=dict_row,
                    options=f"-c search_path={self.store.schema}",
                    connect_timeout=10,
                    # libpq keepalives: a vanished server is noticed in about 20 s
                    keepalives=1,
                    keepalives_idle=5,
                    keepalives_interval=5,
                    keepalives_count=3,
                )
                await self._wait_for_lock(conn)
                self.active = True
                _log.info("litellm-jobs: webhooks: this process delivers (the others stand by)")
                await self._deliver(conn)
            except asyncio.CancelledError:
                raise
            except Exception:
                if self.active:
                    self.lost += 1
                _log.warning("litellm-jobs: webhooks: delivery stopped; retrying", exc_info=True)
                await asyncio.sleep(1.0)
            finally:
                self.active = False
                await self._stop_sends()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()

    async def _wait_for_lock(self, conn: psycopg.AsyncConnection[dict[str, Any]]) -> None:
        """Returns once this process holds the lock (standing by until then)."""
        locked = await self._try_lock(conn)
        while not locked:
            await asyncio.sleep(self.policy.standby_s)
            locked = await self._try_lock(conn)

    @staticmethod
    async def _try_lock(conn: psycopg.AsyncConnection[dict[str, Any]]) -> bool:
        cur = await conn.execute(query("webhook_lock"), {"key": WEBHOOK_LOCK_KEY})
        row = await cur.fetchone()
        return bool(row and row["locked"])

    async def _stop_sends(self) -> None:
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        self._inflight.clear()
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()
            self._client = None

    # -- delivering --------------------------------------------------------------------------

    async def _deliver(self, conn: psycopg.AsyncConnection[dict[str, Any]]) -> None:
        p = self.policy
        self._client = httpx.AsyncClient(timeout=p.timeout_s, follow_redirects=False)
        await listen(conn, wakeup_channel(self.store.schema))
        checked = counted = pruned = 0.0
        self._stale = True
        while True:
            if conn.closed or conn.broken:  # the wait below was woken by the server closing it
                raise psycopg.OperationalError("the webhook lock's connection was closed")
            now = time.monotonic()
            if now - checked >= _LOCK_PING_S:  # the lock lives as long as this connection
                await conn.execute(query("ping"))
                checked = now
            if (self._stale and now - counted >= _COUNT_AFTER_CHANGE_S) or now - counted >= _COUNT_EVERY_S:
                self._stale = False
                await self._count()
                counted = now
            if now - pruned >= 600.0:
                await self.store.fetch_all("webhook_prune_deliveries", {"retention_s": p.retention_s})
                await self.store.fetch_all("webhook_prune_events", {"retention_s": p.retention_s})
                pruned = now
            free = p.concurrency - len(self._inflight)
            claimed: list[dict[str, Any]] = []
            if free > 0:
                claimed = await self.store.fetch_all(
                    "webhook_claim",
                    {"limit": free, "lease_s": p.lease_s, "busy": list(self._inflight), "settle_s": p.job_settle_s},
                )
                self._stale = self._stale or bool(claimed)
                for row in claimed:
                    key = f"{row['event_id']} {row['endpoint_id']}"
                    task = asyncio.get_running_loop().create_task(self._send(row), name="litellm-jobs-webhook-send")
                    self._inflight[key] = task
                    task.add_done_callback(self._forget(key))
            if self._inflight:  # busy: look again when a send ends, or soon
                busy = set(self._inflight.values())
                await asyncio.wait(busy, timeout=min(p.poll_s, _BUSY_POLL_S), return_when=asyncio.FIRST_COMPLETED)
            elif len(claimed) < free:
                # Nothing more due: sleep until a new event's NOTIFY, the next retry's time, the next ping,
                # or the next count of a change
                now = time.monotonic()
                until = _LOCK_PING_S - (now - checked)
                until = min(until, (_COUNT_AFTER_CHANGE_S if self._stale else _COUNT_EVERY_S) - (now - counted))
                if await self._wait_for_work(conn, min(p.poll_s, max(until, 0.0))):
                    self._stale = True

    async def _wait_for_work(self, conn: psycopg.AsyncConnection[dict[str, Any]], longest_s: float) -> bool:
        """Return on a new event's NOTIFY, when the earliest pending delivery is due, or after ``longest_s``.
        True: woken by a NOTIFY."""
        row = await self.store.fetch_one("webhook_next_due", {"settle_s": self.policy.job_settle_s})
        due_in = row["due_in_s"] if row is not None else None
        timeout = longest_s if due_in is None else min(longest_s, max(float(due_in), _MIN_WAIT_S))
        if timeout <= 0:
            return False
        return await wait_for_notify(conn, timeout) > 0

    def _forget(self, key: str) -> Callable[[asyncio.Task[None]], None]:
        def done(_: asyncio.Task[None]) -> None:
            self._inflight.pop(key, None)
            self._stale = True

        return done

    async def _count(self) -> None:
        if self.metrics is None:
            return
        row = await self.store.fetch_one("webhook_counts", {})
        if row is not None:
            self.metrics.webhook_backlog.set(row["backlog"])
            self.metrics.webhook_dead_letters.set(row["dead"])

    async def _payload(self, row: dict[str, Any]) -> str:
        """The event's body, rendered and kept the first time it is sent."""
        if row["payload"] is not None:
            return str(row["payload"])
        event_type, team_id = row["event_type"], row["team_id"]
        job = None
        if event_type in JOB_EVENTS and row["job_id"] is not None:
            job = await self.store.get_job(team_id, row["job_id"])
        data = event_data(event_type, team_id, parse_snapshot(row["snapshot"]), job)
        body = render(row["event_id"], event_type, team_id, row["created_at"], data)
        frozen = await self.store.fetch_one("webhook_freeze_payload", {"event_id": row["event_id"], "payload": body})
        return str(frozen["payload"]) if frozen is not None else body

    async def _send(self, row: dict[str, Any]) -> None:
        key = {"event_id": row["event_id"], "endpoint_id": row["endpoint_id"]}
        event_type = row["event_type"]
        status_code: int | None = None
        error: str | None = None
        try:
            payload = await self._payload(row)
            secrets = [row["secret"]]
            if row["previous_secret"] and row["previous_secret_live"]:
                secrets.append(row["previous_secret"])
            assert self._client is not None
            async with self._client.stream(
                "POST",
                row["url"],
                content=payload.encode(),
                headers=headers(secrets, row["event_id"], datetime.now(UTC), payload),
            ) as response:
                status_code = response.status_code  # the body is never read
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}"
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:_MAX_ERROR_CHARS]
        try:
            if error is None:
                await self.store.fetch_all("webhook_delivered", {**key, "status_code": status_code})
                if self.metrics is not None:
                    self.metrics.webhook_delivered.labels(event_type).inc()
                return
            after = await self.store.fetch_one(
                "webhook_attempt_failed",
                {
                    **key,
                    "status_code": status_code,
                    "error": error,
                    "delay_s": self.policy.backoff(row["attempts"] + 1),
                    "max_age_s": self.policy.max_age_s,
                },
            )
            if self.metrics is not None:
                self.metrics.webhook_failed_attempts.labels(event_type).inc()
                if after is not None and after["status"] == "dead":
                    self.metrics.webhook_dead_lettered.labels(event_type).inc()
            if after is not None and after["status"] == "dead":
                _log.warning(
                    "litellm-jobs: webhooks: %s to %s is a dead letter after %d attempts (%s)",
                    row["event_id"],
                    row["endpoint_id"],
                    row["attempts"] + 1,
                    error,
                )
        except Exception:
            # PostgreSQL unreachable: the lease runs out and the delivery is tried again.
            _log.warning("litellm-jobs: webhooks: could not record a delivery attempt", exc_info=True)
