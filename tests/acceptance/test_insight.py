"""Analytics, Prometheus series and LiteLLM request tags after a generated workload.

The expected numbers are computed here, independently, from the call rows in PostgreSQL and from
what the workload did; the proxy's analytics route and /metrics must agree with them.
"""

from __future__ import annotations

import json
import random
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.acceptance.helpers import api, metric_samples
from tests.conftest import query
from tests.support.services import FakeUpstream, Proxy, proxy_config, wait_for

TEAM = "team-c"
KEY = "sk-team-c"
PRICES = {"doc": Decimal(2), "chat": Decimal(1), "extract": Decimal(1)}


@dataclass
class Workload:
    statuses: dict[str, str] = field(default_factory=dict)  # job id -> final status
    types: dict[str, str] = field(default_factory=dict)  # job id -> job type
    calls: dict[str, int] = field(default_factory=dict)  # job id -> calls made
    rejections: int = 0
    tags_file: Path = Path()


def post(proxy: Proxy, path: str, body: Any, key: str = KEY) -> httpx.Response:
    return httpx.post(f"{proxy.url}{path}", headers={"Authorization": f"Bearer {key}"}, json=body, timeout=60)


def call(proxy: Proxy, job_id: str, text: str = "go", model: str = "ChatAgent") -> httpx.Response:
    return post(
        proxy, f"/api/jobs/{job_id}/llm-call", {"model": model, "messages": [{"role": "user", "content": text}]}
    )


@pytest.fixture(scope="module")
def proxy(
    tmp_path_factory: pytest.TempPathFactory,
    upstream: FakeUpstream,
    module_database_url: str,
    start_in_mode: Callable[..., Proxy],
) -> Iterator[tuple[Proxy, Workload]]:
    tmp = tmp_path_factory.mktemp("insight")
    tags_file = tmp / "tags.jsonl"
    config = proxy_config(
        upstream,
        litellm_settings={"callbacks": ["litellm_jobs_plugin.plugin", "prometheus", "tag_probe.probe"]},
    )
    proxy = start_in_mode(
        tmp,
        config,
        env={
            "JOBS_DATABASE_URL": module_database_url,
            "JOBS_METRICS_TEAM_LABELS": "true",  # the series are checked per team
            "JOBS_JOB_PRICES": json.dumps({k: str(v) for k, v in PRICES.items()}),
            "JOBS_IDLE_TIMEOUT_S": "6",  # long enough for any job of the workload between its calls
            "JOBS_REAPER_INTERVAL_S": "0.5",
            "TAG_PROBE_FILE": str(tags_file),
        },
        support_files=("tag_probe.py",),
    )
    work = Workload(tags_file=tags_file)
    try:
        proxy.grant(TEAM, 100)
        run_workload(proxy, work)
        yield proxy, work
    finally:
        proxy.stop(timeout=30)


def run_workload(proxy: Proxy, work: Workload) -> None:
    rng = random.Random(7)

    def job(job_type: str) -> str:
        job_id = f"{job_type}-{uuid.uuid4().hex[:8]}"
        work.types[job_id] = job_type
        work.calls[job_id] = 1
        return job_id

    # doc: multi-call jobs, completed or failed by the client; some calls fail upstream (Summarizer
    # has no fallback) or fall back (ChatAgent).
    for i in range(6):
        job_id = job("doc")
        assert post(proxy, "/api/jobs/create", {"job_type": "doc", "job_id": job_id}).status_code == 201
        work.calls[job_id] = rng.randint(1, 4)
        for _ in range(work.calls[job_id]):
            text = rng.choice(["go", "go [fail:500]"])
            call(proxy, job_id, text, model=rng.choice(["ChatAgent", "Summarizer"]))
        status = "failed" if i % 3 == 2 else "completed"
        assert post(proxy, f"/api/jobs/{job_id}/complete", {"status": status}).status_code == 200
        work.statuses[job_id] = status
    # chat: create-and-call, one of them failing for good.
    for text in ["hi", "hi", "hi [fail:500]", "hi"]:
        job_id = job("chat")
        r = post(
            proxy,
            "/api/jobs/create-and-call",
            {
                "job_type": "chat",
                "job_id": job_id,
                "model": "Summarizer",
                "messages": [{"role": "user", "content": text}],
            },
        )
        work.statuses[job_id] = r.json()["status"]
    # extract: one completed through the plain OpenAI-compatible path, one left to expire.
    for status in ("completed", "expired"):
        job_id = job("extract")
        r = httpx.post(
            f"{proxy.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {KEY}"},
            json={
                "model": "ChatAgent",
                "messages": [{"role": "user", "content": "x"}],
                "metadata": {"job_id": job_id, "job_type": "extract"},
            },
            timeout=60,
        )
        assert r.status_code == 200
        if status == "completed":
            assert post(proxy, f"/api/jobs/{job_id}/complete", {"status": "completed"}).status_code == 200
        work.statuses[job_id] = status
    expired = next(j for j, s in work.statuses.items() if s == "expired")
    wait_for(
        lambda: api(proxy, f"/api/jobs/{expired}", KEY).json()["status"] == "expired",
        timeout=30,
        what="the idle job to expire",
    )
    # 402s: a team without credits, twice.
    for _ in range(2):
        assert post(proxy, "/api/jobs/create", {"job_type": "doc"}, key="sk-broke").status_code == 402
        work.rejections += 1
    # Everything recorded: every call made has its row.
    wait_for(
        lambda: all(api(proxy, f"/api/jobs/{j}", KEY).json()["total_calls"] == n for j, n in work.calls.items()),
        timeout=30,
        what="every call recorded",
    )


def percentile_disc(values: list[Decimal], fraction: float) -> Decimal:
    ordered = sorted(values)
    for i, value in enumerate(ordered, start=1):
        if Decimal(i) / len(ordered) >= Decimal(str(fraction)):
            return value
    return ordered[-1]


def expected_stats(url: str, work: Workload) -> dict[str, dict[str, Any]]:
    calls = query(
        url, "SELECT job_id, status, prompt_tokens, completion_tokens, cost_usd FROM calls WHERE team_id = %s", TEAM
    )
    per_job: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for c in calls:
        per_job[c["job_id"]].append(c)
    stats: dict[str, dict[str, Any]] = {}
    for job_type in sorted(set(work.types.values())):
        jobs = [j for j, t in work.types.items() if t == job_type]
        costs = [sum((c["cost_usd"] for c in per_job[j]), Decimal(0)) for j in jobs]
        status = [work.statuses[j] for j in jobs]
        closed = [s for s in status if s in ("completed", "failed", "expired")]
        n_calls = sum(len(per_job[j]) for j in jobs)
        stats[job_type] = {
            "jobs_started": len(jobs),
            "completed": status.count("completed"),
            "failed": status.count("failed"),
            "expired": status.count("expired"),
            "open": len(jobs) - len(closed),
            "success_rate": (Decimal(status.count("completed")) / len(closed)).quantize(
                Decimal("0.0001"), ROUND_HALF_UP
            ),
            "calls": n_calls,
            "failed_calls": sum(1 for j in jobs for c in per_job[j] if c["status"] == "failure"),
            "calls_per_job": (Decimal(n_calls) / len(jobs)).quantize(Decimal("0.0001"), ROUND_HALF_UP),
            "prompt_tokens": sum(c["prompt_tokens"] for j in jobs for c in per_job[j]),
            "completion_tokens": sum(c["completion_tokens"] for j in jobs for c in per_job[j]),
            "cost_total_usd": sum(costs, Decimal(0)),
            "cost_avg_usd": (sum(costs, Decimal(0)) / len(costs)).quantize(Decimal("1e-12"), ROUND_HALF_UP),
            "cost_p50_usd": percentile_disc(costs, 0.5),
            "cost_p95_usd": percentile_disc(costs, 0.95),
            "credits_charged": PRICES[job_type] * status.count("completed"),
            "failed_jobs_cost_usd": sum(
                (c for c, s in zip(costs, status, strict=True) if s in ("failed", "expired")), Decimal(0)
            ),
        }
    return stats


def as_decimal(value: Any) -> Any:
    return Decimal(value) if isinstance(value, str) else value


def test_job_type_analytics_equal_the_sums_over_the_call_rows(
    proxy: tuple[Proxy, Workload], module_database_url: str
) -> None:
    server, work = proxy
    body = api(server, "/api/analytics/job-types", KEY).json()
    assert body["team_id"] == TEAM
    got = {row["job_type"]: {k: as_decimal(v) for k, v in row.items() if k != "job_type"} for row in body["job_types"]}
    expected = expected_stats(module_database_url, work)
    assert set(got) == set(expected) == {"chat", "doc", "extract"}
    for job_type, numbers in expected.items():
        for name, value in numbers.items():
            assert got[job_type][name] == value, (job_type, name)
    # There were failures, fallbacks and failed jobs: the workload exercised what it should.
    assert expected["doc"]["failed"] >= 1
    assert expected["doc"]["failed_calls"] >= 1
    assert expected["chat"]["failed"] == 1
    assert expected["extract"]["expired"] == 1


def test_the_team_summary_and_usage(proxy: tuple[Proxy, Workload]) -> None:
    server, work = proxy
    team = next(t for t in api(server, "/api/analytics/job-types", KEY).json()["teams"] if t["team_id"] == TEAM)
    charged = sum(PRICES[work.types[j]] for j, s in work.statuses.items() if s == "completed")
    assert Decimal(team["credits_granted"]) == 100
    assert Decimal(team["credits_charged"]) == charged
    assert Decimal(team["credits_held"]) == 0
    assert Decimal(team["credits_remaining"]) == 100 - charged
    for status in ("completed", "failed", "expired"):
        assert team[status] == list(work.statuses.values()).count(status)
    period = api(server, f"/api/jobs/{next(iter(work.statuses))}", KEY).json()["created_at"][:7]  # YYYY-MM
    usage = api(server, f"/api/teams/{TEAM}/usage", KEY, period=period).json()
    assert usage["jobs"] == len(work.statuses)
    assert Decimal(usage["credits_charged"]) == charged
    assert {j["job_type"] for j in usage["job_types"]} == {"chat", "doc", "extract"}
    # Another team's key sees nothing of this team; bad periods are 400s.
    assert api(server, f"/api/teams/{TEAM}/usage", "sk-team-a", period=period).status_code == 403
    assert api(server, f"/api/teams/{TEAM}/usage", KEY, period="2026-13").status_code == 400
    other = api(server, "/api/analytics/job-types", "sk-team-a").json()
    assert other["job_types"] == []
    assert other["team_id"] == "team-a"
    # The admin sees every team.
    admin = api(server, "/api/analytics/job-types", "sk-master", bucket="day").json()
    assert admin["team_id"] is None
    assert TEAM in {t["team_id"] for t in admin["teams"]}
    assert sum(p["jobs"] for p in admin["series"] if p["job_type"] == "doc") >= 6


def metric_values(server: Proxy) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The ``litellm_jobs_*`` series, summed over the replicas (one proxy's or a fleet's)."""
    return metric_samples(server)


def test_prometheus_series_count_the_workload(proxy: tuple[Proxy, Workload]) -> None:
    server, work = proxy

    def value(name: str, **labels: str) -> float:
        return metric_values(server).get((name, tuple(sorted(labels.items()))), 0.0)

    for job_type in PRICES:
        jobs = [j for j, t in work.types.items() if t == job_type]
        assert value("litellm_jobs_started_total", job_type=job_type, team=TEAM) == len(jobs)
        for status in ("completed", "failed", "expired"):
            n = sum(1 for j in jobs if work.statuses[j] == status)
            assert value("litellm_jobs_closed_total", job_type=job_type, team=TEAM, status=status) == n
        completed = sum(1 for j in jobs if work.statuses[j] == "completed")
        assert value("litellm_jobs_credits_charged_total", job_type=job_type, team=TEAM) == float(
            PRICES[job_type] * completed
        )
        assert value("litellm_jobs_calls_per_job_count", job_type=job_type) == len(jobs)
        # The cost histogram is observed once each job's calls are recorded.
        n_jobs = len(jobs)
        wait_for(
            lambda jt=job_type, n=n_jobs: value("litellm_jobs_job_cost_usd_count", job_type=jt) == n,
            timeout=30,
            what=f"{job_type} job costs observed",
        )
    assert value("litellm_jobs_rejections_total", reason="insufficient_credits", team="team-broke") == work.rejections
    assert value("litellm_jobs_records_written_total") > 0
    assert value("litellm_jobs_records_dropped_total") == 0
    assert value("litellm_jobs_writer_buffer_depth") == 0
    # Never a job id as a label.
    assert not any(
        job_id in label for (_, labels) in metric_values(server) for _, label in labels for job_id in work.statuses
    )


def test_job_types_reach_litellms_request_tags(proxy: tuple[Proxy, Workload], module_database_url: str) -> None:
    _, work = proxy
    lines = [json.loads(line) for line in work.tags_file.read_text().splitlines()]
    tags_by_call = {line["call_id"]: line["request_tags"] for line in lines}
    rows = query(
        module_database_url, "SELECT call_id, job_type FROM calls WHERE team_id = %s AND status = 'success'", TEAM
    )
    assert rows
    for row in rows:
        assert f"job_type:{row['job_type']}" in tags_by_call[row["call_id"]]


@pytest.mark.single_mode("LiteLLM's own workers (--num_workers) inside one proxy, on its own database")
def test_series_add_up_across_proxy_workers(tmp_path: Path, upstream: FakeUpstream, database_url: str) -> None:
    """``litellm --num_workers 2`` with PROMETHEUS_MULTIPROC_DIR: /metrics sums every worker's series."""
    from concurrent.futures import ThreadPoolExecutor

    from prometheus_client.mmap_dict import MmapedDict

    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    server = Proxy.start(
        tmp_path,
        proxy_config(upstream, litellm_settings={"callbacks": ["litellm_jobs_plugin.plugin", "prometheus"]}),
        env={
            "JOBS_DATABASE_URL": database_url,
            "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
            "JOBS_METRICS_TEAM_LABELS": "true",
        },
        args=("--num_workers", "2"),
    )
    try:
        # Health answers as soon as one worker is up; the second starts after it and, on a loaded
        # machine, the load below would starve it. Wait for uvicorn's line from each worker.
        wait_for(
            lambda: server.log_path.read_text(errors="replace").count("Application startup complete.") >= 2,
            timeout=180,
            what="both proxy workers' startup",
        )
        server.grant("team-a", 1000)

        def create(_: int) -> int:
            r = httpx.post(
                f"{server.url}/api/jobs/create",
                headers={"Authorization": "Bearer sk-team-a", "Connection": "close"},
                json={"job_type": "fanout"},
                timeout=60,
            )
            return r.status_code

        def workers_that_counted() -> int:
            return sum(
                1
                for f in multiproc.glob("counter_*.db")
                if any("litellm_jobs_started" in key for key, *_ in MmapedDict.read_all_values_from_file(str(f)))
            )

        # Until both workers have opened jobs (the kernel hands each connection to either): bounded.
        created = 0
        with ThreadPoolExecutor(8) as pool:
            while workers_that_counted() < 2:
                assert created < 800, f"one worker took every request\n{server.log_tail()}"
                assert list(pool.map(create, range(40))) == [201] * 40
                created += 40
        started = metric_values(server)[("litellm_jobs_started_total", (("job_type", "fanout"), ("team", "team-a")))]
        assert started == created  # the sum of both workers' counts
    finally:
        server.stop(timeout=30)


def test_the_window_and_repeated_closes(proxy: tuple[Proxy, Workload]) -> None:
    server, work = proxy
    future = api(server, "/api/analytics/job-types", KEY, since="2999-01-01T00:00:00").json()
    assert future["job_types"] == []
    past = api(server, "/api/analytics/job-types", KEY, until="2000-01-01").json()
    assert past["job_types"] == []
    first = min(api(server, f"/api/jobs/{j}", KEY).json()["created_at"] for j in work.statuses)
    window = api(server, "/api/analytics/job-types", KEY, since=first).json()
    assert sum(r["jobs_started"] for r in window["job_types"]) == len(work.statuses)
    assert api(server, "/api/analytics/job-types", KEY, since="yesterday").status_code == 400
    assert api(server, f"/api/teams/{TEAM}/usage", KEY, period="9999-12").status_code == 400
    # Completing a completed job again answers the same and counts nothing twice.
    done = next(j for j, s in work.statuses.items() if s == "completed" and work.types[j] == "doc")
    labels = {"job_type": "doc", "team": TEAM, "status": "completed"}
    before = metric_values(server)[("litellm_jobs_closed_total", tuple(sorted(labels.items())))]
    assert post(server, f"/api/jobs/{done}/complete", {"status": "completed"}).status_code == 200
    assert metric_values(server)[("litellm_jobs_closed_total", tuple(sorted(labels.items())))] == before
