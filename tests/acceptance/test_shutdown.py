"""Nothing is lost when the proxy is stopped: SIGTERM flushes LiteLLM's logging and our buffer."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable

import openai
import psycopg

from tests.conftest import query
from tests.support.services import Fleet, Proxy, wait_for


async def _fire(proxy: Proxy, n_calls: int, n_jobs: int) -> list[str]:
    async with openai.AsyncOpenAI(base_url=proxy.url, api_key="sk-team-a", max_retries=0, timeout=120) as oai:

        async def one(i: int) -> str:
            raw = await oai.chat.completions.with_raw_response.create(
                model="ChatAgent",
                messages=[{"role": "user", "content": f"call {i}"}],
                stream=i % 5 == 0,  # a fifth of them streamed
                extra_body={"metadata": {"job_id": f"burst-{i % n_jobs}", "job_type": "burst"}},
            )
            if i % 5 == 0:
                async for _ in raw.parse():  # type: ignore[attr-defined]
                    pass
            return raw.headers["x-litellm-call-id"]

        return list(await asyncio.gather(*(one(i) for i in range(n_calls))))


def test_sigterm_right_after_500_concurrent_calls_loses_nothing(
    start_proxy: Callable[..., Proxy | Fleet], database_url: str
) -> None:
    proxy = start_proxy(database_url)
    proxy.grant("team-a", 1000)
    # Hold the writer back: while this lock is held, no call event can be inserted. Calls must
    # still be answered (the request path never waits for PostgreSQL), and at SIGTERM every
    # event is still buffered, so only the shutdown flush can save them.
    # With credits in PostgreSQL the request path does use it: a call is admitted under its job's row
    # lock, which the held-back writer keeps (it locks a batch's jobs before inserting its events), so
    # the lock would hold the calls back too. There SIGTERM follows the last answer at once, unblocked.
    hold_writer_back = proxy.replicas[0].env.get("JOBS_LOCAL_CREDITS") != "false"
    # With Redis every record is in its journal (durable) before its answer leaves: a replica stopping hands
    # what it has not written to the journal's next reader instead of waiting for PostgreSQL.
    journaled = "JOBS_REDIS_URL" in proxy.replicas[0].env
    blocker = psycopg.connect(database_url)
    if hold_writer_back:
        blocker.execute("LOCK TABLE litellm_jobs.call_events IN SHARE MODE")
    try:
        call_ids = asyncio.run(_fire(proxy, 500, 50))
        assert len(set(call_ids)) == 500
        if hold_writer_back:
            assert query(database_url, "SELECT count(*) AS n FROM calls") == [{"n": 0}]
        for replica in proxy.replicas:  # one proxy, or each replica of a fleet
            os.killpg(replica.proc.pid, signal.SIGTERM)
        for replica in proxy.replicas:
            wait_for(
                lambda replica=replica: "Waiting for application shutdown" in replica.log_text(),  # type: ignore[misc]
                timeout=60,
                what="the proxy to begin its shutdown",
            )
            if hold_writer_back and not journaled:
                assert replica.proc.poll() is None, "the proxy exited without waiting for its buffer"
    finally:
        blocker.rollback()
        blocker.close()
    for replica in proxy.replicas:
        replica.proc.wait(timeout=120)
    if journaled:  # a successor drains the journal (docs/guarantees.md: what a replica left, another writes)
        start_proxy(database_url)
        wait_for(
            lambda: query(database_url, "SELECT count(*) AS n FROM calls") == [{"n": len(call_ids)}],
            timeout=60,
            what="the successor to write what the journal kept",
        )

    rows = query(database_url, "SELECT call_id FROM calls")
    assert sorted(r["call_id"] for r in rows) == sorted(call_ids)
    jobs = query(database_url, "SELECT job_id, total_calls, successful_calls FROM jobs ORDER BY job_id")
    assert len(jobs) == 50
    assert all((j["total_calls"], j["successful_calls"]) == (10, 10) for j in jobs), jobs
