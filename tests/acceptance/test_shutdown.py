"""Nothing is lost when the proxy is stopped: SIGTERM flushes LiteLLM's logging and our buffer."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable

import openai
import psycopg

from tests.conftest import query
from tests.support.services import Proxy, wait_for


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
    start_proxy: Callable[..., Proxy], database_url: str
) -> None:
    proxy = start_proxy(database_url)
    proxy.grant("team-a", 1000)
    # Hold the writer back: while this lock is held, no call event can be inserted. Calls must
    # still be answered (the request path never waits for PostgreSQL), and at SIGTERM every
    # event is still buffered, so only the shutdown flush can save them.
    blocker = psycopg.connect(database_url)
    blocker.execute("LOCK TABLE litellm_jobs.call_events IN SHARE MODE")
    try:
        call_ids = asyncio.run(_fire(proxy, 500, 50))
        assert len(set(call_ids)) == 500
        assert query(database_url, "SELECT count(*) AS n FROM calls") == [{"n": 0}]
        os.killpg(proxy.proc.pid, signal.SIGTERM)
        wait_for(
            lambda: "Waiting for application shutdown" in proxy.log_path.read_text(errors="replace"),
            timeout=60,
            what="the proxy to begin its shutdown",
        )
        assert proxy.proc.poll() is None, "the proxy exited without waiting for its buffer"
    finally:
        blocker.rollback()
        blocker.close()
    proxy.proc.wait(timeout=120)

    rows = query(database_url, "SELECT call_id FROM calls")
    assert sorted(r["call_id"] for r in rows) == sorted(call_ids)
    jobs = query(database_url, "SELECT job_id, total_calls, successful_calls FROM jobs ORDER BY job_id")
    assert len(jobs) == 50
    assert all((j["total_calls"], j["successful_calls"]) == (10, 10) for j in jobs), jobs
