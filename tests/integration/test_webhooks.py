"""Webhooks against real PostgreSQL and real HTTP receivers on 127.0.0.1: the outbox triggers of
migration 0007 (one event per state change, whichever code path made it, none for a replay) and
the delivery worker (signatures, retries, dead letters, order, rotation, one worker at a time)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

from litellm_jobs_plugin.credits import PostgresCredits
from litellm_jobs_plugin.credits.base import OpenJob
from litellm_jobs_plugin.models import JobCaps, JobStatus, closure_entries
from litellm_jobs_plugin.store.postgres import PostgresStore
from litellm_jobs_plugin.webhooks.events import EVENT_TYPES
from litellm_jobs_plugin.webhooks.registry import Registry
from litellm_jobs_plugin.webhooks.worker import WEBHOOK_LOCK_KEY, DeliveryPolicy, WebhookWorker
from tests.conftest import query
from tests.support.events import context, event
from tests.support.services import wait_for_async
from tests.support.webhook_receiver import Received, Receiver

FAST = DeliveryPolicy(timeout_s=1.0, backoff_base_s=0.05, backoff_max_s=0.2, poll_s=0.05, standby_s=0.2)


def opening(team: str, job: str, price: str = "1", *, create_only: bool = False) -> OpenJob:
    return OpenJob(
        team_id=team,
        job_id=job,
        requested_type="doc",
        new_type="doc",
        price=Decimal(price),
        caps=JobCaps(),
        count_call=not create_only,
        single_call=False,
        create_only=create_only,
        metadata=None,
        user_id=None,
        refusal=None,
    )


def events(url: str) -> list[dict[str, Any]]:
    return query(url, "SELECT event_id, event_type, team_id, job_id FROM webhook_events ORDER BY seq")


@contextlib.asynccontextmanager
async def worker(store: PostgresStore, policy: DeliveryPolicy = FAST, **kw: Any) -> AsyncIterator[WebhookWorker]:
    w = WebhookWorker(store, policy, **kw)
    await w.start()
    try:
        yield w
    finally:
        await w.aclose()


async def test_each_state_change_writes_one_event_whichever_path_made_it(
    store: PostgresStore, database_url: str
) -> None:
    registry = Registry(store)
    await registry.add("http://127.0.0.1:9/hook", team_id=None, event_types=list(EVENT_TYPES), description=None)
    await registry.set_threshold("team-w", Decimal(5))
    await store.fetch_all(
        "webhook_put_allowance_defaults", {"failure_allowance_usd": Decimal("0.001"), "failure_window_s": 3600.0}
    )
    credits = PostgresCredits(store)

    await store.grant("team-w", Decimal(20), kind="grant", idempotency_key="g1", note="welcome")
    await store.grant("team-w", Decimal(20), kind="grant", idempotency_key="g1", note="welcome")  # a replay
    assert [e["event_type"] for e in events(database_url)] == ["credits.granted"]

    # The PostgreSQL credit transactions: a job held, completed, completed again.
    await credits.open_job(opening("team-w", "job-pg", "6"))  # remaining 14: no crossing
    await credits.close_job("team-w", "job-pg", JobStatus.COMPLETED)
    await credits.close_job("team-w", "job-pg", JobStatus.COMPLETED)  # a repeated close
    # remaining 14 → 4 (below 5): credits.low, once
    await credits.open_job(opening("team-w", "job-low", "10"))
    # The writer's record_batch: a job closed as failed, then (as the writer often does with Redis or
    # in-process credits) its call recorded after the closure, costing more than the allowance.
    ctx = context("team-w", "job-batch", "doc")
    await store.write_batch([event("c0", ctx=ctx, cost="0")])
    entries = closure_entries(
        "team-w", "job-batch", "doc", Decimal(0), "", JobStatus.FAILED, single_call=False, closes_row=True
    )
    await store.write_batch(entries)
    await store.write_batch(entries)  # the journal's replay after a crash
    await store.write_batch([event("c1", ctx=ctx, cost="0.002")])
    await store.write_batch([event("c2", ctx=ctx, cost="0.002")])  # past the allowance already: nothing new
    # The last credits: remaining 4 → 0.
    await credits.open_job(opening("team-w", "job-zero", "4"))

    got = events(database_url)
    assert [(e["event_type"], e["job_id"]) for e in got] == [
        ("credits.granted", None),
        ("job.completed", "job-pg"),
        ("credits.low", None),
        ("job.failed", "job-batch"),
        ("failure_allowance.exhausted", "job-batch"),
        ("credits.exhausted", None),
    ]
    assert len({e["event_id"] for e in got}) == len(got)
    # The failed job's event carries the call of its batch (the trigger runs at commit).
    snapshot = query(database_url, "SELECT snapshot FROM webhook_events WHERE event_type = 'job.failed'")[0]["snapshot"]
    assert (snapshot["status"], snapshot["total_calls"]) == ("failed", 1)
    allowance = query(
        database_url, "SELECT snapshot FROM webhook_events WHERE event_type = 'failure_allowance.exhausted'"
    )[0]["snapshot"]
    assert Decimal(str(allowance["used_usd"])) == Decimal("0.002")
    # one delivery per event for the one endpoint, all pending
    assert query(database_url, "SELECT count(*) AS n FROM webhook_deliveries WHERE status = 'pending'")[0]["n"] == 6


async def test_no_endpoint_no_event(store: PostgresStore, database_url: str) -> None:
    await store.grant("team-x", Decimal(3), kind="grant", idempotency_key="g", note=None)
    registry = Registry(store)
    await registry.add("http://127.0.0.1:9/hook", team_id="team-y", event_types=["credits.granted"], description=None)
    await store.grant("team-x", Decimal(3), kind="grant", idempotency_key="g2", note=None)  # another team's endpoint
    assert events(database_url) == []
    await store.grant("team-y", Decimal(3), kind="grant", idempotency_key="g3", note=None)
    assert [e["team_id"] for e in events(database_url)] == ["team-y"]


async def test_signed_delivery_survives_500_and_timeouts_then_dead_letters_are_retried(
    store: PostgresStore, database_url: str
) -> None:
    registry = Registry(store)

    def flaky(r: Received, before: int) -> tuple[int, float]:
        if before == 0:
            return 500, 0.0
        if before == 1:
            return 200, 1.5  # past the sender's 1 s timeout: a failed attempt, though answered later
        return 200, 0.0

    created = await registry.add(
        "http://127.0.0.1:1/x", team_id="team-s", event_types=["credits.granted"], description=None
    )
    receiver = Receiver([created["secret"]], flaky)
    with receiver.running():
        query(database_url, "UPDATE webhook_endpoints SET url = %s", receiver.url)
        for i in range(3):
            await store.grant("team-s", Decimal(1), kind="grant", idempotency_key=f"g{i}", note=None)
        async with worker(store):

            async def all_delivered() -> bool:
                rows = query(database_url, "SELECT status FROM webhook_deliveries")
                return all(r["status"] == "delivered" for r in rows)

            await wait_for_async(all_delivered, within=30, what="three deliveries")
    ids = [e["event_id"] for e in events(database_url)]
    assert all(r.verified_by == [0] for r in receiver.received), "every request is signed with the endpoint's secret"
    assert {r.webhook_id for r in receiver.received} == set(ids)
    # Each event came three times (500, timeout, 2xx) under one webhook-id, with the same body.
    for event_id in ids:
        bodies = {r.body for r in receiver.received if r.webhook_id == event_id}
        assert len(bodies) == 1
        assert sum(1 for r in receiver.received if r.webhook_id == event_id) == 3
    # The team's events reached it in order: each one's first attempt after the previous one's success.
    firsts = [next(i for i, r in enumerate(receiver.received) if r.webhook_id == e) for e in ids]
    assert firsts == sorted(firsts)
    body = receiver.events()[0]
    assert body["type"] == "credits.granted"
    assert body["data"]["grant"]["amount"] == "1"
    assert body["data"]["credits_allocated"] == "1"


async def test_a_delivery_past_its_maximum_age_is_a_dead_letter_until_retried(
    store: PostgresStore, database_url: str
) -> None:
    registry = Registry(store)
    down = True

    def behave(_: Received, __: int) -> tuple[int, float]:
        return (503, 0.0) if down else (204, 0.0)

    created = await registry.add(
        "http://127.0.0.1:1/x", team_id=None, event_types=["credits.granted"], description=None
    )
    receiver = Receiver([created["secret"]], behave)
    with receiver.running():
        query(database_url, "UPDATE webhook_endpoints SET url = %s", receiver.url)
        await store.grant("team-d", Decimal(1), kind="grant", idempotency_key="g", note=None)
        async with worker(store, dataclasses.replace(FAST, max_age_s=0.5)):

            async def dead() -> list[dict[str, Any]]:
                return await registry.dead_letters()

            letters = await wait_for_async(dead, within=30, what="a dead letter")
            assert letters[0]["last_status_code"] == 503
            assert (await registry.counts())["dead_letters"] == 1
            down = False
            assert await registry.retry(event_ids=[letters[0]["event_id"]]) == 1

            async def delivered() -> bool:
                return bool(receiver.accepted)

            await wait_for_async(delivered, within=30, what="the retried delivery")
    assert (await registry.counts()) == {"backlog": 0, "dead_letters": 0, "oldest_pending_age_s": 0.0}


async def test_rotation_signs_with_both_secrets_during_the_overlap(store: PostgresStore, database_url: str) -> None:
    registry = Registry(store)
    created = await registry.add(
        "http://127.0.0.1:1/x", team_id=None, event_types=["credits.granted"], description=None
    )
    old = created["secret"]
    rotated = await registry.rotate(created["endpoint_id"], overlap_s=3600)
    new = rotated["secret"]
    assert new != old
    assert rotated["previous_secret_expires_at"] is not None
    old_receiver, new_receiver = Receiver([old]), Receiver([new])
    with old_receiver.running(), new_receiver.running():
        # The same endpoint seen by two receivers: one still holds the old secret, one the new.
        query(database_url, "UPDATE webhook_endpoints SET url = %s", old_receiver.url)
        await store.grant("team-r", Decimal(1), kind="grant", idempotency_key="g1", note=None)
        async with worker(store):

            async def got(r: Receiver) -> bool:
                return bool(r.accepted)

            await wait_for_async(lambda: got(old_receiver), within=30, what="the old receiver's webhook")
            query(database_url, "UPDATE webhook_endpoints SET url = %s", new_receiver.url)
            await store.grant("team-r", Decimal(1), kind="grant", idempotency_key="g2", note=None)
            await wait_for_async(lambda: got(new_receiver), within=30, what="the new receiver's webhook")
            assert old_receiver.received[0].verified_by == [0]
            assert new_receiver.received[0].verified_by == [0]
            assert len(new_receiver.received[0].headers["webhook-signature"].split(" ")) == 2
            # Once the overlap ends, only the new secret signs.
            query(database_url, "UPDATE webhook_endpoints SET previous_secret_expires_at = now()")
            query(database_url, "UPDATE webhook_endpoints SET url = %s", old_receiver.url)
            await store.grant("team-r", Decimal(1), kind="grant", idempotency_key="g3", note=None)

            async def refused() -> bool:
                return len(old_receiver.received) >= 2

            await wait_for_async(refused, within=30, what="the third webhook")
            assert old_receiver.received[1].verified_by == []
            assert len(old_receiver.received[1].headers["webhook-signature"].split(" ")) == 1


async def test_one_worker_delivers_the_others_stand_by(store: PostgresStore, database_url: str) -> None:
    second = PostgresStore(database_url)
    await second.open()
    try:
        async with worker(store) as a, worker(second) as b:

            async def one_active() -> bool:
                return a.active or b.active

            await wait_for_async(one_active, within=10, what="a delivering worker")
            await asyncio.sleep(0.5)
            assert a.active != b.active
            first, standby = (a, b) if a.active else (b, a)
            await first.aclose()  # its connection and lock go: the other one takes over

            async def took_over() -> bool:
                return standby.active

            await wait_for_async(took_over, within=10, what="the standby to take over")
    finally:
        await second.close()


async def test_a_delivering_worker_whose_lock_connection_is_killed_notices_at_once(
    store: PostgresStore, database_url: str
) -> None:
    """The delivering worker pings its lock's connection only every 30 s while idle; a server that closes
    the connection (here: its backend terminated, which releases the lock) wakes it at once, and it or
    the standby takes the lock again — never both delivering."""
    second = PostgresStore(database_url)
    await second.open()
    idle = DeliveryPolicy(poll_s=60.0, standby_s=1.0)
    try:
        async with worker(store, idle) as a, worker(second, idle) as b:
            await wait_for_async(lambda: _true(a.active or b.active), within=10, what="a delivering worker")
            first = a if a.active else b
            killed = query(
                database_url,
                "SELECT pg_terminate_backend(pid) AS ok FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint) = %s",
                WEBHOOK_LOCK_KEY,
            )
            assert killed == [{"ok": True}]
            await wait_for_async(lambda: _true(first.lost == 1), within=5, what="the holder to notice its loss")
            await wait_for_async(
                lambda: _true((a.active or b.active) and not (a.active and b.active)),
                within=10,
                what="one worker delivering again",
            )
    finally:
        await second.close()


async def test_an_idle_worker_is_woken_by_a_new_event_and_by_a_retry_falling_due(
    store: PostgresStore, database_url: str
) -> None:
    """The worker does not poll the outbox while idle: a new event's NOTIFY wakes it, and it sleeps
    only until the next retry is due. With a 60 s poll, both happen within seconds."""
    registry = Registry(store)
    created = await registry.add(
        "http://127.0.0.1:1/x", team_id="team-n", event_types=["credits.granted"], description=None
    )

    def first_fails(r: Received, before: int) -> tuple[int, float]:
        return (500, 0.0) if before == 0 else (200, 0.0)

    idle = DeliveryPolicy(timeout_s=1.0, backoff_base_s=1.0, backoff_max_s=1.0, poll_s=60.0, standby_s=60.0)
    receiver = Receiver([created["secret"]], first_fails)
    with receiver.running():
        query(database_url, "UPDATE webhook_endpoints SET url = %s", receiver.url)
        async with worker(store, idle) as w:
            await wait_for_async(lambda: _true(w.active), within=10, what="the worker to hold the lock")

            async def delivered() -> bool:
                rows = query(database_url, "SELECT status FROM webhook_deliveries")
                return bool(rows) and all(r["status"] == "delivered" for r in rows)

            await store.grant("team-n", Decimal(1), kind="grant", idempotency_key="n1", note=None)
            # first attempt (woken by NOTIFY), a 500, then the retry 0.5-1 s later (woken by its due time)
            await wait_for_async(delivered, within=10, what="the event, retried once, delivered")
            assert len(receiver.received) == 2
            await store.grant("team-n", Decimal(1), kind="grant", idempotency_key="n2", note=None)
            await wait_for_async(delivered, within=10, what="a second event woken by its NOTIFY")
            assert len(receiver.received) == 4  # it too failed once (a 500 per event id), then was retried


async def _true(value: object) -> bool:
    return bool(value)
