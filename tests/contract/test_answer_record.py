"""The record the plugin makes from a non-streamed answer is the one LiteLLM's success event carries.

The plugin records a non-streamed call in its post-call hook, from the response's hidden params,
so that the answer never waits for (nor leaves before) LiteLLM's success logging. That rests on
LiteLLM filling those params before the post-call hooks, with the cost it later logs (0 for a cache
hit) and the id of the deployment that answered (the fallback's, after a fallback). A probe listed
after the plugin writes both records of each call; they must agree field by field.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import credit_mode_env
from tests.support.services import FakeUpstream, Proxy, proxy_config, wait_for

KEY = "sk-team-a"


@pytest.fixture(params=["in_process", "redis"])
def probed_proxy(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    upstream: FakeUpstream,
    database_url: str,
    redis_server_url: str | None,
    redis_prefix: str,
) -> Iterator[tuple[Proxy, Path, str]]:
    out = tmp_path / "answers.jsonl"
    config = proxy_config(upstream)
    config["litellm_settings"]["callbacks"] = ["litellm_jobs_plugin.plugin", "answer_probe.probe"]
    env = {"JOBS_DATABASE_URL": database_url, "ANSWER_PROBE_FILE": str(out), "ANSWER_PROBE_YIELD_S": "0.05"}
    proxy = Proxy.start(
        tmp_path,
        config,
        env={**env, **credit_mode_env(request.param, redis_server_url, redis_prefix)},
        support_files=("answer_probe.py",),
    )
    try:
        proxy.grant("team-a", 1000)
        yield proxy, out, str(request.param)
    finally:
        proxy.stop(timeout=30)


def _records(out: Path) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    if out.exists():
        for line in out.read_text().splitlines():
            item = json.loads(line)
            found.setdefault(item["litellm_call_id"], {})[item["side"]] = item["event"]
    return found


def _order(out: Path) -> dict[str, list[str]]:
    """Each call's sides in the order they were written."""
    order: dict[str, list[str]] = {}
    for line in out.read_text().splitlines():
        item = json.loads(line)
        order.setdefault(item["litellm_call_id"], []).append(item["side"])
    return order


def test_the_answer_carries_the_record_its_success_event_logs(probed_proxy: tuple[Proxy, Path, str]) -> None:
    """Also: with Redis (where the plugin's post-call hook waits for Redis), LiteLLM's success logging
    starts only after the post-call hooks, though a hook after the plugin's waits 50 ms."""
    proxy, out, mode = probed_proxy
    job = f"contract-{uuid.uuid4().hex[:8]}"
    cached = f"cache me {uuid.uuid4()}"
    cases = {
        "plain": {"model": "Summarizer", "messages": [{"role": "user", "content": "hello"}]},
        "fallback": {"model": "ChatAgent", "messages": [{"role": "user", "content": "x [fail:500]"}]},
        "computed": {
            "model": "Summarizer",
            "messages": [{"role": "user", "content": cached}],
            "cache": {"use-cache": True},
        },
        "cache hit": {
            "model": "Summarizer",
            "messages": [{"role": "user", "content": cached}],
            "cache": {"use-cache": True},
        },
    }
    call_ids: dict[str, str] = {}
    for name, body in cases.items():
        body["metadata"] = {"job_id": job, "job_type": "contract"}
        r = httpx.post(
            f"{proxy.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60
        )
        assert r.status_code == 200, r.text
        call_ids[name] = r.headers["x-litellm-call-id"]

    def both_sides() -> dict[str, dict[str, Any]] | None:
        records = _records(out)
        done = all(len(records.get(c, {})) == 2 for c in call_ids.values())
        return records if done else None

    records = wait_for(both_sides, timeout=30, what="both records of every call")
    for name, call_id in call_ids.items():
        answer, logged = records[call_id]["answer"], records[call_id]["logged"]
        assert answer is not None, f"{name}: no record from the answer"
        assert logged is not None
        answer["cost_usd"], logged["cost_usd"] = Decimal(answer["cost_usd"]), Decimal(logged["cost_usd"])
        differing = {k for k in logged if k != "latency_ms" and answer[k] != logged[k]}
        assert not differing, f"{name}: {[(k, answer[k], logged[k]) for k in sorted(differing)]}"
    assert records[call_ids["fallback"]]["answer"]["model_group"] == "ChatAgent-fallback"
    assert records[call_ids["cache hit"]]["answer"]["cache_hit"] is True
    assert records[call_ids["cache hit"]]["answer"]["cost_usd"] == 0
    assert records[call_ids["computed"]]["answer"]["cost_usd"] > 0
    if mode == "redis":
        # a cache hit is logged by LiteLLM's cache path, which has no deferral: not asserted
        order = _order(out)
        early = {n: order[c] for n, c in call_ids.items() if n != "cache hit" and order[c] != ["answer", "logged"]}
        assert not early, f"LiteLLM logged these calls before their post-call hooks ended: {early}"
