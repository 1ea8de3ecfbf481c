"""The typed clients (litellm_jobs_plugin.client) against a real proxy: every method, its errors,
retries that never charge twice, and the sync twin doing what the async client does."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pydantic
import pytest

from litellm_jobs_plugin.client import (
    APIError,
    CompletedJob,
    Forbidden,
    InsufficientCredits,
    InvalidStructuredOutput,
    JobClosed,
    JobCostBreakdown,
    JobCosts,
    JobNotFound,
    JobsClient,
    JobStatus,
    JobTypeMismatch,
    SaasLiteLLMClient,
    SyncJobsClient,
)
from tests.acceptance.helpers import api
from tests.conftest import query
from tests.support.services import FakeUpstream, Proxy, proxy_config, wait_for, wait_for_async

MESSAGES = [{"role": "user", "content": "Analyze this"}]


class Person(pydantic.BaseModel):
    name: str
    age: int


@pytest.fixture(scope="module")
def proxy(
    tmp_path_factory: pytest.TempPathFactory,
    upstream: FakeUpstream,
    module_database_url: str,
    start_in_mode: Callable[..., Proxy],
) -> Iterator[Proxy]:
    proxy = start_in_mode(
        tmp_path_factory.mktemp("proxy"),
        proxy_config(upstream),
        env={"JOBS_DATABASE_URL": module_database_url, "JOBS_DEFAULT_MODEL": "Summarizer"},
    )
    for team in ("team-a", "team-b"):
        proxy.grant(team, 1000)
    yield proxy
    proxy.stop(timeout=30)


def remaining(proxy: Proxy, team: str = "team-a") -> Decimal:
    return Decimal(str(api(proxy, f"/api/teams/{team}", "sk-master").json()["credits_remaining"]))


def held(proxy: Proxy, team: str = "team-a") -> Decimal:
    return Decimal(str(api(proxy, f"/api/teams/{team}", "sk-master").json()["credits_held"]))


async def test_a_job_block_completes_and_charges_once(proxy: Proxy, module_database_url: str) -> None:
    before = remaining(proxy)
    async with JobsClient(proxy.url, "sk-team-a", default_model="ChatAgent") as client:
        async with client.job("document_analysis", metadata={"doc": 7}) as job:
            reply = await job.chat(messages=MESSAGES, purpose="extract")
            stream = job.chat_stream(messages=[{"role": "user", "content": "more [chunks:4:0]"}], purpose="expand")
            deltas = [d async for d in stream]
            person = await job.structured(Person, messages=[{"role": "user", "content": "Who?"}])
        assert reply.choices[0].message.content == "Hello from the fake upstream"
        assert "".join(deltas) == stream.text == "Hello from the fake upstream"
        assert len(deltas) >= 4
        assert stream.usage is not None
        assert stream.usage.completion_tokens > 0
        assert person == Person(name="Ada Lovelace", age=36)
        assert job.result is not None
        assert job.result.status is JobStatus.COMPLETED
        costs = job.costs
        assert (costs.total_calls, costs.successful_calls, costs.credits_charged) == (3, 3, Decimal(1))
        assert costs.credits_remaining == before - 1 == remaining(proxy)
        rows = query(module_database_url, "SELECT purpose, stream, cost_usd FROM calls WHERE job_id = %s", job.job_id)
        assert sorted((r["purpose"] or "", r["stream"]) for r in rows) == [
            ("", False),
            ("expand", True),
            ("extract", False),
        ]
        assert costs.total_cost_usd == sum(r["cost_usd"] for r in rows)
        assert stream.call_id in {c.call_id for c in await client.get_calls(job.job_id)}


async def test_an_exception_inside_a_job_block_fails_it_uncharged(proxy: Proxy) -> None:
    before, held_before = remaining(proxy), held(proxy)
    async with JobsClient(proxy.url, "sk-team-a", default_model="ChatAgent") as client:
        job = client.job("document_analysis")

        async def work() -> None:
            async with job:
                await job.chat(messages=MESSAGES)
                assert held(proxy) == held_before + 1  # the price is held while the job runs
                raise RuntimeError("parsing failed")

        with pytest.raises(RuntimeError, match="parsing failed"):
            await work()
        assert job.result is not None
        assert job.result.status is JobStatus.FAILED
        assert job.costs.credits_charged == 0
        assert job.costs.total_calls == 1
        stored = await client.get_job(job.job_id)
        assert stored.status is JobStatus.FAILED
        assert stored.error_message == "RuntimeError: parsing failed"
    assert (remaining(proxy), held(proxy)) == (before, held_before)


async def test_seed_compatible_methods(proxy: Proxy) -> None:
    async with SaasLiteLLMClient(base_url=proxy.url, team_id="team-a", virtual_key="sk-team-a") as client:
        created = await client.create_job("document_analysis", metadata={"source": "upload"}, max_calls=10)
        assert (created.team_id, created.status, created.max_calls) == ("team-a", JobStatus.PENDING, 10)
        first = await client.llm_call(created.job_id, MESSAGES, purpose="extract")
        assert first.response.content == first.content == "Hello from the fake upstream"
        assert first.choices[0]["message"]["content"] == first.content
        assert first.metadata.model_group == "Summarizer"  # JOBS_DEFAULT_MODEL
        assert first.metadata.purpose == "extract"
        assert first.metadata.tokens_used > 0
        assert first.cost_usd is not None
        assert first.cost_usd > 0
        events = [e async for e in client.llm_call_stream(created.job_id, [{"role": "user", "content": "go"}])]
        assert "".join(e.content for e in events) == "Hello from the fake upstream"
        assert events[-1].is_final
        assert events[-1].cost_usd is not None
        assert events[-1].cost_usd > 0
        person = await client.structured_call(created.job_id, [{"role": "user", "content": "x"}], response_model=Person)
        assert person.age == 36

        async def all_recorded() -> JobCostBreakdown | None:
            found = await client.get_costs(created.job_id)
            return found if found.total_calls == 3 else None

        costs = await wait_for_async(all_recorded, within=30, what="3 recorded calls")
        assert [c.purpose for c in costs.calls] == ["extract", None, None]
        result = await client.complete_job(created.job_id, "completed", result={"pages": 3})
        assert isinstance(result, CompletedJob)
        assert result.costs.total_calls == 3
        assert result.costs.get("total_cost_usd") == result.costs["total_cost_usd"] == result.total_cost_usd
        assert result.credits_remaining == (await client.get_team()).credits_remaining
        # Completing again with the same status is the same answer, not a second charge.
        again = await client.complete_job(created.job_id, "completed")
        assert again.costs.credits_charged == 1
        assert again.credits_remaining == result.credits_remaining
        job = await client.get_job(created.job_id)
        assert (job.status, job.result, job.metadata["source"]) == (JobStatus.COMPLETED, {"pages": 3}, "upload")
        page = await client.list_jobs(job_type="document_analysis", status="completed", limit=500)
        assert created.job_id in {j.job_id for j in page.jobs}
        single = await client.create_and_call("chat", MESSAGES)
        assert single.status is JobStatus.COMPLETED
        assert single.costs is not None
        assert single.costs.credits_charged == 1


async def test_typed_errors(proxy: Proxy) -> None:
    async with JobsClient(proxy.url, "sk-broke", default_model="ChatAgent") as broke:
        with pytest.raises(InsufficientCredits) as info:
            async with broke.job("document_analysis"):
                pass
        assert info.value.status_code == 402
        assert "credits" in info.value.message
        with pytest.raises(InsufficientCredits):
            await broke.create_and_call("chat", MESSAGES)
    async with JobsClient(proxy.url, "sk-team-a", default_model="ChatAgent") as client:
        async with client.job("chat") as job:
            await job.chat(messages=MESSAGES)
        with pytest.raises(JobClosed):
            await job.chat(messages=MESSAGES)  # through the OpenAI SDK
        with pytest.raises(JobClosed):
            await client.llm_call(job.job_id, MESSAGES)  # through the seed route
        with pytest.raises(JobClosed):
            await client.complete_job(job.job_id, "failed")  # the other status: 409 too
        await client.llm_call(f"{job.job_id}-2", MESSAGES, job_type="chat")
        with pytest.raises(JobTypeMismatch):
            await client.llm_call(f"{job.job_id}-2", MESSAGES, job_type="summary")
        with pytest.raises(JobNotFound):
            await client.get_job("no-such-job")
        with pytest.raises(Forbidden):
            await client.grant_credits("team-a", 5, idempotency_key="nope")
        created = await client.create_job("chat")
        with pytest.raises(InvalidStructuredOutput) as bad:
            await client.structured_call(created.job_id, [{"role": "user", "content": "[bad-json]"}], Person)
        assert bad.value.status_code == 502
        with pytest.raises(APIError) as upstream_error:
            await client.llm_call(created.job_id, [{"role": "user", "content": "[fail:500]"}], model="Summarizer")
        assert upstream_error.value.status_code == 500
    async with JobsClient(proxy.url, "sk-team-a", team_id="team-b") as other:
        with pytest.raises(Forbidden):
            await other.create_job("chat")


async def test_the_admin_acts_for_a_team_and_grants(proxy: Proxy) -> None:
    async with JobsClient(proxy.url, "sk-master", team_id="team-b", default_model="ChatAgent") as admin:
        key = f"grant-{uuid.uuid4().hex}"
        first = await admin.grant_credits("team-b", "2.5", idempotency_key=key)
        second = await admin.grant_credits("team-b", "2.5", idempotency_key=key)
        assert first == second  # one grant, whatever the number of tries
        async with admin.job("chat") as job:
            await job.chat(messages=MESSAGES)
            done = await job.complete(result={"answer": 42})  # closed inside: the exit leaves it as it is
        assert done.status is JobStatus.COMPLETED
        stored = await admin.get_job(job.job_id)
        assert (stored.team_id, stored.result, stored.credits_charged) == ("team-b", {"answer": 42}, 1)
        assert job.costs.credits_remaining == first.credits_remaining - 1


class FlakyTransport(httpx.AsyncBaseTransport):
    """Sends each request to the proxy, then loses the first answer to every create."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.lost = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.url.path == "/api/jobs/create" and self.lost == 0:
            self.lost += 1
            await response.aclose()
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_retried_create_is_the_same_job_and_holds_once(proxy: Proxy, module_database_url: str) -> None:
    transport = FlakyTransport()
    held_before = held(proxy)
    async with (
        httpx.AsyncClient(transport=transport) as http,
        JobsClient(proxy.url, "sk-team-a", http_client=http, max_retries=2) as client,
    ):
        created = await client.create_job("chat")
        assert transport.lost == 1  # the proxy created the job, the client never heard
        assert held(proxy) == held_before + 1
        rows = query(module_database_url, "SELECT count(*) AS n FROM jobs WHERE job_id = %s", created.job_id)
        assert rows[0]["n"] == 1
        await client.complete_job(created.job_id, "failed")
    assert held(proxy) == held_before


def job_block_through_the_sync_client(proxy: Proxy) -> tuple[str, JobCosts]:
    with SyncJobsClient(proxy.url, "sk-team-a", default_model="ChatAgent") as client:
        with client.job("document_analysis", metadata={"doc": 7}) as job:
            reply = job.chat(messages=MESSAGES, purpose="extract")
            stream = job.chat_stream(messages=[{"role": "user", "content": "more [chunks:4:0]"}], purpose="expand")
            deltas = list(stream)
            person = job.structured(Person, messages=[{"role": "user", "content": "Who?"}])
        assert reply.choices[0].message.content == "Hello from the fake upstream"
        assert "".join(deltas) == stream.text == "Hello from the fake upstream"
        assert len(deltas) >= 4
        assert stream.usage is not None
        assert person == Person(name="Ada Lovelace", age=36)
        assert stream.call_id in {c.call_id for c in client.get_calls(job.job_id)}
        return job.job_id, job.costs


async def job_block_through_the_async_client(proxy: Proxy) -> tuple[str, JobCosts]:
    async with JobsClient(proxy.url, "sk-team-a", default_model="ChatAgent") as client:
        async with client.job("document_analysis", metadata={"doc": 7}) as job:
            await job.chat(messages=MESSAGES, purpose="extract")
            stream = job.chat_stream(messages=[{"role": "user", "content": "more [chunks:4:0]"}], purpose="expand")
            assert [d async for d in stream]
            await job.structured(Person, messages=[{"role": "user", "content": "Who?"}])
        return job.job_id, job.costs


async def test_the_same_job_through_both_clients_charges_and_records_the_same(
    proxy: Proxy, module_database_url: str
) -> None:
    before = remaining(proxy)
    sync_id, sync_costs = await asyncio.to_thread(job_block_through_the_sync_client, proxy)
    async_id, async_costs = await job_block_through_the_async_client(proxy)
    assert sync_costs.credits_charged == async_costs.credits_charged == 1
    assert sync_costs.credits_remaining == before - 1
    assert async_costs.credits_remaining == before - 2 == remaining(proxy)
    same = ("total_calls", "successful_calls", "prompt_tokens", "completion_tokens", "total_cost_usd")
    assert {k: getattr(sync_costs, k) for k in same} == {k: getattr(async_costs, k) for k in same}
    assert sync_costs.total_calls == 3

    def stored(job_id: str) -> list[tuple[str, bool, Decimal]]:
        rows = query(module_database_url, "SELECT purpose, stream, cost_usd FROM calls WHERE job_id = %s", job_id)
        return sorted((r["purpose"] or "", r["stream"], r["cost_usd"]) for r in rows)

    assert stored(sync_id) == stored(async_id)
    assert [p for p, _, _ in stored(sync_id)] == ["", "expand", "extract"]


def test_the_sync_client_seed_methods_errors_and_failed_jobs(proxy: Proxy) -> None:
    with SyncJobsClient(proxy.url, "sk-team-a", team_id="team-a") as client:
        created = client.create_job("document_analysis", metadata={"source": "upload"}, max_calls=10)
        first = client.llm_call(created.job_id, MESSAGES, purpose="extract")
        assert first.content == "Hello from the fake upstream"
        events = list(client.llm_call_stream(created.job_id, [{"role": "user", "content": "go"}]))
        assert "".join(e.content for e in events) == "Hello from the fake upstream"
        assert events[-1].is_final
        assert client.structured_call(created.job_id, [{"role": "user", "content": "x"}], Person).age == 36
        costs = wait_for(
            lambda: (c := client.get_costs(created.job_id)).total_calls == 3 and c, timeout=30, what="3 recorded calls"
        )
        assert [c.purpose for c in costs.calls] == ["extract", None, None]
        done = client.complete_job(created.job_id, "completed", result={"pages": 3})
        assert done.costs.credits_charged == 1
        assert done.credits_remaining == client.get_team().credits_remaining
        assert client.get_job(created.job_id).result == {"pages": 3}
        page = client.list_jobs(job_type="document_analysis", status="completed", limit=500)
        assert created.job_id in {j.job_id for j in page.jobs}
        with pytest.raises(JobClosed):
            client.llm_call(created.job_id, MESSAGES)
        with pytest.raises(JobNotFound):
            client.get_job("no-such-job")
        single = client.create_and_call("chat", MESSAGES)
        assert single.status is JobStatus.COMPLETED
        assert single.costs is not None
        assert single.costs.credits_charged == 1

        before, held_before = remaining(proxy), held(proxy)
        job = client.job("document_analysis")

        def work() -> None:
            with job:
                job.chat(messages=MESSAGES, model="ChatAgent")
                raise RuntimeError("parsing failed")

        with pytest.raises(RuntimeError, match="parsing failed"):
            work()
        assert job.costs.credits_charged == 0
        assert client.get_job(job.job_id).error_message == "RuntimeError: parsing failed"
        assert (remaining(proxy), held(proxy)) == (before, held_before)
    with SyncJobsClient(proxy.url, "sk-broke", default_model="ChatAgent") as broke, pytest.raises(InsufficientCredits):
        broke.job("document_analysis").__enter__()


CLIENT_PAGE = Path(__file__).resolve().parents[2] / "docs" / "client.md"


def page_example(name: str) -> str:
    text = CLIENT_PAGE.read_text()
    start = text.index(f"<!-- example: {name} -->")
    block = text[start:].split("```python\n", 1)[1].split("```", 1)[0]
    return block


def run_page_example(proxy: Proxy, name: str, key: str = "sk-team-a") -> str:
    source = page_example(name).replace("http://127.0.0.1:4000", proxy.url)
    source = source.replace("sk-demo-team-a", key).replace('"demo-team-a"', '"team-a"')
    done = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_client_pages_jobs_client_example_runs(proxy: Proxy) -> None:
    out = run_page_example(proxy, "jobs-client").splitlines()
    assert out[0] == "Hello from the fake upstream"
    assert out[1] == "Hello from the fake upstream"
    assert out[2] == "Ada Lovelace 36"
    assert out[3].startswith("cost: ")
    assert "credits left: " in out[3]
    broke = run_page_example(proxy, "jobs-client", key="sk-broke")
    assert broke.startswith("no credits: ")


def test_the_client_pages_seed_client_example_runs(proxy: Proxy) -> None:
    out = run_page_example(proxy, "seed-client").splitlines()
    assert out[0].startswith("Hello from the fake upstream ")
    assert out[1] == "Hello from the fake upstream"
    assert out[2].startswith("Credits remaining: ")


def test_the_client_pages_sync_client_example_runs(proxy: Proxy) -> None:
    out = run_page_example(proxy, "sync-client").splitlines()
    assert out[0] == out[1] == "Hello from the fake upstream"
    assert out[2].startswith("cost: ")
    assert "credits left: " in out[2]
    assert out[3].endswith(" completed")
    assert run_page_example(proxy, "sync-client", key="sk-broke").startswith("no credits: ")
