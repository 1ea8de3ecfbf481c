from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import openai

from tests.support.services import Proxy, wait_for

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


def wait_writer_idle(proxy: Proxy, timeout: float = 30) -> None:
    wait_for(
        lambda: proxy.health().json()["writer"]["buffer_depth"] == 0,
        timeout=timeout,
        what="the writer's buffer to drain",
    )


def cost_header(headers: httpx.Headers) -> Decimal:
    return Decimal(headers["x-litellm-response-cost"])
