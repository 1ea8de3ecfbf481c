"""What a hostile client can make the plugin store, and what a team key can read of other teams.

A client chooses the model names of its calls: a name the router does not know fails before any
upstream call, costs nothing, and must not reach its job's record (else every such call grows the
job without limit, for free). A team key may read ``/metrics`` (any key LiteLLM accepts may), so the
plugin's series carry no team label unless the operator opts in; each team reads its own figures
through the plugin's team-scoped routes, which refuse another team's.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.acceptance.helpers import TEAM_A, TEAM_B, api, client, metric_samples, tag, wait_for_job
from tests.support.services import ROOT, FakeUpstream, Proxy, proxy_config

MASTER = "sk-master"
#: The shipped configuration's callbacks: the plugin and LiteLLM's Prometheus /metrics.
CALLBACKS = {"callbacks": ["litellm_jobs_plugin.plugin", "prometheus"]}
MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def proxy(
    tmp_path_factory: pytest.TempPathFactory,
    upstream: FakeUpstream,
    module_database_url: str,
    start_in_mode: Callable[..., Proxy],
) -> Iterator[Proxy]:
    server = start_in_mode(
        tmp_path_factory.mktemp("hostile"),
        proxy_config(upstream, litellm_settings=CALLBACKS),
        env={"JOBS_DATABASE_URL": module_database_url},
    )
    for team in ("team-a", "team-b"):
        server.grant(team, 1000)
    yield server
    server.stop(timeout=30)


def new_job_id(what: str) -> str:
    return f"{what}-{uuid.uuid4().hex[:10]}"


def post(proxy: Proxy, path: str, key: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{proxy.url}{path}", headers={"Authorization": f"Bearer {key}"}, json=body, timeout=60)


def completed_job_of_team_a(proxy: Proxy, what: str) -> str:
    """A job of team-a with one answered call, completed (its credits charged)."""
    job_id = new_job_id(what)
    client(proxy, TEAM_A).chat.completions.create(model="Summarizer", messages=MESSAGES, extra_body=tag(job_id))  # type: ignore[arg-type]
    wait_for_job(proxy, job_id, calls=1)
    done = post(proxy, f"/api/jobs/{job_id}/complete", TEAM_A, {"status": "completed"})
    assert done.status_code == 200, done.text
    return job_id


def jobs_samples(proxy: Proxy, key: str) -> list[tuple[str, dict[str, str], float]]:
    """The ``litellm_jobs_*`` samples of ``/metrics/`` as ``key`` reads them (summed over the replicas)."""
    return [(name, dict(labels), v) for (name, labels), v in metric_samples(proxy, key).items()]


def value(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    return sum(v for n, got, v in samples if n == name and got == labels)


# -- model names ---------------------------------------------------------------------------------------


def test_unknown_model_names_never_reach_a_job(proxy: Proxy) -> None:
    job_id = new_job_id("hostile-models")
    oai = client(proxy, TEAM_A)
    for i in range(50):
        bogus = f"no-such-model-{i}-" + "x" * 20_000
        with pytest.raises(openai.APIStatusError) as refused:
            oai.chat.completions.create(model=bogus, messages=MESSAGES, extra_body=tag(job_id))  # type: ignore[arg-type]
        assert 400 <= refused.value.status_code < 500, refused.value
    oai.chat.completions.create(model="Summarizer", messages=MESSAGES, extra_body=tag(job_id))  # type: ignore[arg-type]

    # Every failed call is still recorded, with its cost (nothing) and without the client's string.
    job = wait_for_job(proxy, job_id, calls=51)
    assert (job["failed_calls"], job["successful_calls"]) == (50, 1)
    assert job["models_used"] == ["openai/gpt-4o-mini"]  # the Summarizer deployment's model
    r = api(proxy, f"/api/jobs/{job_id}")
    assert r.status_code == 200
    assert len(r.content) < 20_000, len(r.content)

    calls = api(proxy, f"/api/jobs/{job_id}/calls")
    assert calls.status_code == 200
    assert len(calls.content) < 100_000, len(calls.content)  # 50 records of 60 KB each before
    records = calls.json()["calls"]
    failed = [c for c in records if c["status"] == "failure"]
    assert len(failed) == 50
    for c in failed:
        assert (c["requested_model"], c["model_group"], c["model"]) == (None, None, None), c
        assert float(c["cost_usd"]) == 0
    [answered] = [c for c in records if c["status"] == "success"]
    assert (answered["requested_model"], answered["model_group"]) == ("Summarizer", "Summarizer")
    assert answered["model"] == "openai/gpt-4o-mini"


# -- other teams' figures ------------------------------------------------------------------------------


def test_metrics_carry_no_team_label_by_default(proxy: Proxy) -> None:
    completed_job_of_team_a(proxy, "metrics-default")
    for key in (TEAM_B, MASTER):  # whoever may read /metrics
        samples = jobs_samples(proxy, key)
        assert value(samples, "litellm_jobs_started_total", job_type="document_analysis") >= 1
        assert value(samples, "litellm_jobs_credits_charged_total", job_type="document_analysis") >= 1
        labelled = [(n, labels) for n, labels, _ in samples if "team" in labels]
        assert labelled == []


def test_metrics_team_labels_are_an_opt_in(start_proxy: Callable[..., Proxy], database_url: str) -> None:
    server = start_proxy(database_url, env={"JOBS_METRICS_TEAM_LABELS": "true"}, litellm_settings=CALLBACKS)
    server.grant("team-a", 100)
    completed_job_of_team_a(server, "metrics-opt-in")
    samples = jobs_samples(server, MASTER)
    assert value(samples, "litellm_jobs_started_total", job_type="document_analysis", team="team-a") == 1
    assert value(samples, "litellm_jobs_credits_charged_total", job_type="document_analysis", team="team-a") == 1


def test_a_team_key_never_reads_another_teams_figures(proxy: Proxy) -> None:
    job_id = completed_job_of_team_a(proxy, "cross-team")
    # team-b asking for team-a by name: refused on every route that takes a team.
    named = [
        ("/api/jobs", {"team_id": "team-a"}),
        (f"/api/jobs/{job_id}", {"team_id": "team-a"}),
        (f"/api/jobs/{job_id}/calls", {"team_id": "team-a"}),
        (f"/api/jobs/{job_id}/costs", {"team_id": "team-a"}),
        ("/api/teams/team-a", {}),
        ("/api/teams/team-a/usage", {"period": "2026-01"}),
        ("/api/analytics/job-types", {"team_id": "team-a"}),
    ]
    for path, params in named:
        r = api(proxy, path, TEAM_B, **params)
        assert r.status_code == 403, (path, r.status_code, r.text)
        assert job_id not in r.text
    refused = post(proxy, f"/api/jobs/{job_id}/complete", TEAM_B, {"status": "failed", "team_id": "team-a"})
    assert refused.status_code == 403, refused.text
    # team-b asking for team-a's job without naming the team: its own team's (no such job).
    for path in (f"/api/jobs/{job_id}", f"/api/jobs/{job_id}/calls", f"/api/jobs/{job_id}/costs"):
        r = api(proxy, path, TEAM_B)
        assert r.status_code == 404, (path, r.status_code, r.text)
    # team-b's own views hold only team-b.
    listed = api(proxy, "/api/jobs", TEAM_B)
    assert listed.status_code == 200
    assert all(j["team_id"] == "team-b" for j in listed.json()["jobs"])
    assert job_id not in listed.text
    analytics = api(proxy, "/api/analytics/job-types", TEAM_B)
    assert analytics.status_code == 200
    assert analytics.json()["team_id"] == "team-b"
    assert {t["team_id"] for t in analytics.json()["teams"]} <= {"team-b"}
    # The proxy admin may name team-a (the checks above refuse team-b, not the route).
    assert api(proxy, f"/api/jobs/{job_id}", MASTER, team_id="team-a").json()["team_id"] == "team-a"
    own = api(proxy, "/api/analytics/job-types", TEAM_A).json()
    assert {t["team_id"] for t in own["teams"]} == {"team-a"}


@pytest.mark.single_mode("the shipped litellm_config.yaml as a user starts it: one proxy, credits in process")
def test_the_shipped_configuration_keeps_teams_apart(tmp_path: Path, database_url: str) -> None:
    """litellm_config.yaml with demo_auth.py: /metrics refuses team keys, the series are fleet totals."""
    team_a, team_b, master = "sk-demo-team-a", "sk-demo-team-b", "sk-local-master"
    server = Proxy.launch(ROOT / "litellm_config.yaml", tmp_path, env={"JOBS_DATABASE_URL": database_url})
    try:
        server.grant("demo-team-a", 10, admin_key=master)
        job_id = new_job_id("shipped")
        client(server, team_a).chat.completions.create(model="ChatAgent", messages=MESSAGES, extra_body=tag(job_id))  # type: ignore[arg-type]
        wait_for_job(server, job_id, calls=1, key=team_a)
        # LiteLLM's own series carry every team's requests and spend: team keys do not read /metrics.
        for key in (team_a, team_b):
            refused = httpx.get(f"{server.url}/metrics/", headers={"Authorization": f"Bearer {key}"}, timeout=30)
            assert refused.status_code in (401, 403), refused.text
            assert "demo-team-a" not in refused.text
        samples = jobs_samples(server, master)
        assert value(samples, "litellm_jobs_started_total", job_type="document_analysis") == 1
        assert [labels for _, labels, _ in samples if "team" in labels] == []
        # team-b's figures of team-a through the plugin's routes: refused.
        for path, params in (
            (f"/api/jobs/{job_id}", {"team_id": "demo-team-a"}),
            ("/api/analytics/job-types", {"team_id": "demo-team-a"}),
            ("/api/teams/demo-team-a", {}),
        ):
            r = api(server, path, team_b, **params)
            assert r.status_code == 403, (path, r.status_code, r.text)
        assert api(server, f"/api/jobs/{job_id}", team_b).status_code == 404
    finally:
        server.stop(timeout=30)
