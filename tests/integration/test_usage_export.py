"""Usage export against local receivers of each sink's shape: payloads, deterministic ids, replays,
the cursor across failures and cancellation, commit order, one exporter at a time."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from litellm_jobs_plugin.billing.events import call_event_id, job_event_id
from litellm_jobs_plugin.billing.exporter import Exporter, backfill, load_sinks
from litellm_jobs_plugin.billing_routes import SinkBody, put_customer, put_sink
from litellm_jobs_plugin.settings import Settings
from litellm_jobs_plugin.store.postgres import PostgresStore
from tests.conftest import query
from tests.support.billing_receivers import Receiver
from tests.support.services import PostgresServer, wait_for_async

SETTINGS = Settings(export_delay_s=0, export_interval_s=0, export_batch_size=2)
CUSTOMERS = {"cloudevents": "subject-a", "lago": "sub_lago_a", "stripe": "cus_TeamA"}


@pytest.fixture(scope="module")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """This module's own PostgreSQL: the exporter sends only closures older than every running transaction of
    the cluster, so on a server shared with another test worker its rounds would depend on that worker."""
    server = PostgresServer.private(tmp_path_factory.mktemp("pg-usage-export"))
    yield server
    server.close()


@pytest.fixture(params=["cloudevents", "lago", "stripe"])
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    with Receiver(str(request.param)).running() as r:
        yield r


async def add_sink(store: PostgresStore, r: Receiver, name: str = "meter", **options: Any) -> None:
    body = SinkBody.model_validate({"kind": r.kind, "url": r.url, "api_key": r.api_key, "options": options})
    await put_sink(store, name, body)
    await put_customer(store, name, "team-a", CUSTOMERS[r.kind])


def close_job(url: str, team: str, job: str, status: str = "completed", *, credits: str = "2", calls: int = 1) -> None:
    """A job with ``calls`` calls, closed as the plugin closes them (the row's status changes)."""
    query(
        url,
        """INSERT INTO jobs (team_id, job_id, job_type, status, total_calls, successful_calls, prompt_tokens,
                             completion_tokens, total_cost_usd, credits_charged)
           VALUES (%s, %s, 'document_analysis', 'in_progress', %s, %s, 10, 5, 0.0000135, %s)""",
        team,
        job,
        calls,
        calls,
        credits if status == "completed" else "0",
    )
    for i in range(calls):
        query(
            url,
            """INSERT INTO calls (team_id, call_id, job_id, job_type, status, model_group, model, provider,
                                  prompt_tokens, completion_tokens, cost_usd, started_at, ended_at)
               VALUES (%s, %s, %s, 'document_analysis', 'success', 'ChatAgent', 'openai/gpt-4o-mini', 'openai',
                       10, 5, 0.0000135, now(), now())""",
            team,
            f"{job}-call-{i}",
            job,
        )
    query(
        url, "UPDATE jobs SET status = %s, completed_at = now() WHERE team_id = %s AND job_id = %s", status, team, job
    )


async def test_each_sink_gets_the_documented_payload_with_deterministic_ids(
    store: PostgresStore, database_url: str, receiver: Receiver
) -> None:
    await add_sink(store, receiver, include_calls=True)
    close_job(database_url, "team-a", "job-1", credits="2.5", calls=2)
    close_job(database_url, "team-a", "job-2", "failed")
    close_job(database_url, "team-a", "job-3", "expired", calls=0)
    exporter = Exporter(store, SETTINGS)
    try:
        sent = await exporter.run_once()
    finally:
        await exporter.aclose()
    assert receiver.errors == []
    expected = [
        job_event_id("team-a", "job-1", "completed"),
        call_event_id("team-a", "job-1", "job-1-call-0"),
        call_event_id("team-a", "job-1", "job-1-call-1"),
        job_event_id("team-a", "job-2", "failed"),
        call_event_id("team-a", "job-2", "job-2-call-0"),
        job_event_id("team-a", "job-3", "expired"),
    ]
    assert sent == {"meter": 6}
    assert receiver.ids() == expected
    first = receiver.events[0]
    if receiver.kind == "cloudevents":
        assert (first["type"], first["source"], first["subject"]) == ("litellm.job", "litellm-jobs", "subject-a")
        assert first["data"]["credits"] == "2.5"
        assert first["data"]["job_id"] == "job-1"
        assert receiver.events[1]["type"] == "litellm.call"
        # batch content mode: a page (2 jobs, export_batch_size) per request
        assert [len(r.events) for r in receiver.received] == [5, 1]
    elif receiver.kind == "lago":
        assert first["external_subscription_id"] == "sub_lago_a"
        assert first["code"] == "litellm_job"
        assert first["properties"]["credits"] == "2.5"
        assert first["properties"]["status"] == "completed"
        assert receiver.events[1]["code"] == "litellm_call"
    else:
        assert first["payload[stripe_customer_id]"] == "cus_TeamA"
        assert (first["event_name"], first["payload[value]"]) == ("litellm_job_credits", "2.5")
        assert receiver.events[1]["payload[value]"] == "15"  # a call's tokens
    (_sink, row) = (await load_sinks(store, "meter"))[0]
    assert (row["exported"], row["last_error"]) == (6, None)


async def test_a_replay_sends_the_same_ids_and_a_backfill_sends_history(
    store: PostgresStore, database_url: str, receiver: Receiver
) -> None:
    close_job(database_url, "team-a", "before-the-sink")  # closed before the sink existed: history
    await add_sink(store, receiver)
    close_job(database_url, "team-a", "after-1")
    close_job(database_url, "team-a", "after-2")
    exporter = Exporter(store, SETTINGS)
    await exporter.run_once()
    assert await exporter.run_once() == {"meter": 0}  # nothing new: nothing sent twice
    await exporter.aclose()
    exported = receiver.ids()
    assert exported == [job_event_id("team-a", j, "completed") for j in ("after-1", "after-2")]

    since = datetime.now(UTC) - timedelta(hours=1)
    results = await backfill(store, SETTINGS, since=since, until=datetime.now(UTC) + timedelta(seconds=5))
    assert [(r.sink, r.jobs, r.sent, r.error) for r in results] == [("meter", 3, 3, None)]
    replayed = receiver.ids()[len(exported) :]
    assert set(exported) < set(replayed)
    assert set(replayed) - set(exported) == {job_event_id("team-a", "before-the-sink", "completed")}


async def test_a_team_without_a_customer_is_recorded_and_sent_by_a_backfill_once_mapped(
    store: PostgresStore, database_url: str
) -> None:
    with Receiver("stripe").running() as r:
        await add_sink(store, r)
        close_job(database_url, "team-b", "job-b")
        close_job(database_url, "team-a", "job-a")
        exporter = Exporter(store, SETTINGS)
        await exporter.run_once()
        assert r.ids() == [job_event_id("team-a", "job-a", "completed")]
        _, row = (await load_sinks(store, "meter"))[0]
        assert (row["unmapped_events"], list(row["unmapped_teams"])) == (1, ["team-b"])

        await put_customer(store, "meter", "team-b", "cus_TeamB")
        _, row = (await load_sinks(store, "meter"))[0]
        assert list(row["unmapped_teams"]) == []
        since = datetime.now(UTC) - timedelta(hours=1)
        await backfill(store, SETTINGS, since=since, until=datetime.now(UTC) + timedelta(seconds=5))
        assert job_event_id("team-b", "job-b", "completed") in r.ids()
        await exporter.aclose()


async def test_a_refused_delivery_keeps_the_cursor_and_the_next_round_resumes(
    store: PostgresStore, database_url: str
) -> None:
    with Receiver("stripe").running() as r:
        await add_sink(store, r)
        for i in range(5):
            close_job(database_url, "team-a", f"job-{i}")
        r.fail_after = 2
        exporter = Exporter(store, SETTINGS)
        assert await exporter.run_once() == {}
        _, row = (await load_sinks(store, "meter"))[0]
        assert row["exported"] == 2
        assert "HTTP 500" in row["last_error"]
        r.fail_after = None
        assert await exporter.run_once() == {"meter": 3}
        await exporter.aclose()
        assert r.ids() == [job_event_id("team-a", f"job-{i}", "completed") for i in range(5)]  # each once


async def test_a_cancelled_exporter_resumes_from_its_cursor(store: PostgresStore, database_url: str) -> None:
    with Receiver("lago").running() as r:
        await add_sink(store, r)
        for i in range(4):
            close_job(database_url, "team-a", f"job-{i}")
        r.fail_after = None
        exporter = Exporter(store, SETTINGS)
        # Let two events through, then hold the third request: the exporter is stuck mid-export.
        original = r.parse

        def parse_then_hold(path: str, headers: dict[str, str], body: bytes) -> list[dict[str, Any]]:
            events = original(path, headers, body)
            if len(r.received) >= 1:
                r.hold.set()
            return events

        r.parse = parse_then_hold  # type: ignore[method-assign]
        task = asyncio.create_task(exporter.run_once())
        await wait_for_async(lambda: asyncio.sleep(0, r.holding == 1), within=10, what="a request held")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        r.parse = original  # type: ignore[method-assign]
        r.hold.clear()
        _, row = (await load_sinks(store, "meter"))[0]
        done = int(row["exported"])
        assert 1 <= done < 4
        assert await exporter.run_once() == {"meter": 4 - done}
        await exporter.aclose()
        expected = [job_event_id("team-a", f"job-{i}", "completed") for i in range(4)]
        # the held request, answered after the cancel, is recorded too
        await wait_for_async(lambda: asyncio.sleep(0, set(r.ids()) == set(expected)), within=10, what="every event")
        ids = r.ids()
        assert set(ids) == set(expected)
        assert len(ids) - len(set(ids)) <= 1  # at most the one in flight at the cancel is sent twice


async def test_a_closure_committed_late_is_never_skipped(store: PostgresStore, database_url: str) -> None:
    with Receiver("stripe").running() as r:
        await add_sink(store, r)
        close_job(database_url, "team-a", "slow", calls=0)
        query(database_url, "UPDATE jobs SET status = 'in_progress' WHERE job_id = 'slow'")  # reopened for the test
        query(database_url, "DELETE FROM usage_outbox")
        conn = psycopg.connect(database_url, options="-c search_path=litellm_jobs")
        try:
            # A closure whose transaction started first and commits last...
            conn.execute("SELECT pg_current_xact_id()")
            conn.execute("UPDATE jobs SET status = 'completed', completed_at = now() WHERE job_id = 'slow'")
            close_job(database_url, "team-a", "fast")
            exporter = Exporter(store, SETTINGS)
            assert await exporter.run_once() == {"meter": 0}  # waits: an older transaction is still open
            conn.commit()
        finally:
            conn.close()
        assert await exporter.run_once() == {"meter": 2}
        await exporter.aclose()
        assert set(r.ids()) == {job_event_id("team-a", j, "completed") for j in ("slow", "fast")}


async def test_one_exporter_at_a_time(store: PostgresStore, database_url: str) -> None:
    with Receiver("cloudevents").running() as r:
        await add_sink(store, r)
        close_job(database_url, "team-a", "job-1")
        r.hold.set()
        first, second = Exporter(store, SETTINGS), Exporter(store, SETTINGS)
        task = asyncio.create_task(first.run_once())
        # the first one is mid-export (its request held), holding the lock
        await wait_for_async(lambda: asyncio.sleep(0, r.holding == 1), within=10, what="a request held")
        assert await second.run_once() is None  # the other one holds the advisory lock
        r.hold.clear()
        assert await task == {"meter": 1}
        await first.aclose()
        await second.aclose()
        assert r.ids() == [job_event_id("team-a", "job-1", "completed")]


async def test_a_new_sink_starts_at_the_end_and_a_disabled_sink_sends_nothing(
    store: PostgresStore, database_url: str
) -> None:
    with Receiver("cloudevents").running() as r:
        close_job(database_url, "team-a", "old")
        await add_sink(store, r)
        await put_sink(store, "off", SinkBody.model_validate({"kind": "cloudevents", "url": r.url, "enabled": False}))
        close_job(database_url, "team-a", "new")
        exporter = Exporter(store, SETTINGS)
        assert await exporter.run_once() == {"meter": 1}
        await exporter.aclose()
        assert r.ids() == [job_event_id("team-a", "new", "completed")]


def outbox(url: str) -> list[str]:
    return [r["job_id"] for r in query(url, "SELECT job_id FROM usage_outbox ORDER BY xid, seq")]


def age_outbox(url: str, *jobs: str, hours: float) -> None:
    query(
        url,
        "UPDATE usage_outbox SET closed_at = now() - make_interval(hours => %s) WHERE job_id = ANY(%s)",
        hours,
        list(jobs),
    )


async def test_the_outbox_is_pruned_of_what_every_sink_took_once_older_than_the_retention(
    store: PostgresStore, database_url: str
) -> None:
    settings = Settings(export_delay_s=0, export_interval_s=0, export_retention_s=3600)
    exporter = Exporter(store, settings)

    async def prune_to(left: list[str], *, page: int = 100) -> None:
        """Prune until the outbox holds ``left``: a closure whose transaction is newer than one still
        running anywhere in the cluster (another test's) waits for it; a row deleted too many fails."""

        async def done() -> bool:
            await exporter.prune(page=page)
            return outbox(database_url) == left

        await wait_for_async(done, within=30, what=f"the outbox pruned to {left}")

    # No sink at all: every closed job still gets an outbox row; the old ones go, the recent one stays.
    for job in ("a1", "a2", "recent"):
        close_job(database_url, "team-a", job)
    age_outbox(database_url, "a1", "a2", hours=2)
    await prune_to(["recent"])
    with Receiver("cloudevents").running() as r:
        await add_sink(store, r)
        await add_sink(store, r, "later")
        assert await exporter.run_once() == {"meter": 0, "later": 0}  # both cursors: after "recent"
        await put_sink(store, "later", SinkBody.model_validate({"kind": "cloudevents", "url": r.url, "enabled": False}))
        for job in ("b1", "b2"):
            close_job(database_url, "team-a", job)
        assert await exporter.run_once() == {"meter": 2}
        close_job(database_url, "team-a", "c1")
        r.fail_after = len(r.received)  # meter cannot take c1: its cursor stays before it
        assert await exporter.run_once() == {}
        age_outbox(database_url, "recent", "b1", "b2", "c1", hours=2)
        # "later" was disabled a moment ago (a key being replaced, say): its cursor, before b1, holds b1 on
        await prune_to(["b1", "b2", "c1"])
        # disabled for longer than the retention, it holds nothing; meter's cursor holds c1 (two rows a
        # page: the prune goes on while a page is full)
        query(database_url, "UPDATE export_sinks SET updated_at = now() - interval '2 hours' WHERE name = 'later'")
        await prune_to(["c1"], page=2)
        r.fail_after = None
        assert await exporter.run_once() == {"meter": 1}
        await prune_to([])
    await exporter.aclose()
