from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

from tests.support.services import Fleet, Proxy, wait_for

#: A sample of /metrics: its name and its labels, sorted.
SampleKey = tuple[str, tuple[tuple[str, str], ...]]

TEAM_A, TEAM_B = "sk-team-a", "sk-team-b"


def client(proxy: Proxy, key: str = TEAM_A) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url, api_key=key, max_retries=0, timeout=60)


def tag(job_id: str, job_type: str = "document_analysis", **extra: Any) -> dict[str, Any]:
    return {"metadata": {"job_id": job_id, "job_type": job_type, **extra}}


def api(proxy: Proxy, path: str, key: str = TEAM_A, **params: Any) -> httpx.Response:
    return httpx.get(f"{proxy.url}{path}", headers={"Authorization": f"Bearer {key}"}, params=params, timeout=30)


def wait_for_job(
    proxy: Proxy, job_id: str, *, calls: int, key: str = TEAM_A, timeout: float = 30, **params: Any
) -> dict[str, Any]:
    """The job once it has ``calls`` recorded calls (the writer works off the request path)."""

    def ready() -> dict[str, Any] | None:
        r = api(proxy, f"/api/jobs/{job_id}", key, **params)
        if r.status_code == 200 and r.json()["total_calls"] >= calls:
            body: dict[str, Any] = r.json()
            return body
        return None

    job: dict[str, Any] = wait_for(ready, timeout=timeout, what=f"{calls} calls on job {job_id}")
    return job


def wait_writer_idle(proxy: Proxy | Fleet, timeout: float = 30) -> None:
    """Until every replica's writer has written what it buffered."""
    wait_for(
        lambda: all(p.health().json()["writer"]["buffer_depth"] == 0 for p in proxy.replicas),
        timeout=timeout,
        what="the writer's buffer to drain",
    )


def metric_samples(
    proxy: Proxy | Fleet, key: str = "sk-master", prefix: str = "litellm_jobs_"
) -> dict[SampleKey, float]:
    """The samples of ``/metrics/`` named ``prefix...`` as ``key`` reads them, summed over the replicas:
    each replica counts what it served, a fleet's figure is their sum (as a Prometheus ``sum`` would)."""
    values: dict[SampleKey, float] = {}
    for replica in proxy.replicas:
        r = httpx.get(f"{replica.url}/metrics/", headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert r.status_code == 200, r.text
        for family in text_string_to_metric_families(r.text):
            for sample in family.samples:
                if sample.name.startswith(prefix):
                    name = (sample.name, tuple(sorted(sample.labels.items())))
                    values[name] = values.get(name, 0.0) + sample.value
    return values


def cost_header(headers: httpx.Headers) -> Decimal:
    return Decimal(headers["x-litellm-response-cost"])
