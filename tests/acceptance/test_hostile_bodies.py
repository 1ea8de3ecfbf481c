"""Bodies a client trying not to pay sends, and what it gets: a 4xx in OpenAI's error JSON, never
a 500, and nothing changed (no job, no hold, no charge, no record).

- ``NaN``, ``Infinity`` and ``-Infinity`` (Python's json reads them): in a create body they used to
  leave a hold on a job that had no row, in a complete body they completed and charged the job
  behind a 500, and in a tracked chat call's metadata they went through. Now a 400 in every credit
  mode.
- A structured answer that fails its schema: the 502 quoted the whole model answer and stored it
  as the job's ``error_message`` (completions are never stored). Now an excerpt, and the rule only.
- A body of hundreds of MB, chunked, with an honest or a lying Content-Length: it used to be read
  whole (proxy RSS +566 MiB) before the 64 KiB limit refused it. Now the proxy's RSS stays put.
- Job ids ``.`` and ``..``: HTTP clients resolve them out of ``/api/jobs/../complete``, so the job
  could never be completed and its hold waited for expiry. Now refused.
"""

from __future__ import annotations

import contextlib
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.acceptance.helpers import TEAM_A, client, tag, wait_writer_idle
from tests.conftest import query
from tests.support.services import FakeUpstream, Proxy, wait_for

MESSAGES: list[Any] = [{"role": "user", "content": "Classify this ticket"}]
JSON_HEADERS = {"Authorization": f"Bearer {TEAM_A}", "content-type": "application/json"}


def post_raw(proxy: Proxy, path: str, raw: bytes, key: str = TEAM_A) -> httpx.Response:
    """POST bytes as they are (the OpenAI SDK and httpx's json= refuse to encode NaN)."""
    headers = {"Authorization": f"Bearer {key}", "content-type": "application/json"}
    return httpx.post(f"{proxy.url}{path}", content=raw, headers=headers, timeout=60)


def post(proxy: Proxy, path: str, body: Any, key: str = TEAM_A) -> httpx.Response:
    return httpx.post(f"{proxy.url}{path}", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def balance(proxy: Proxy, team: str = "team-a") -> dict[str, Any]:
    r = httpx.get(f"{proxy.url}/api/teams/{team}", headers={"Authorization": f"Bearer sk-{team}"}, timeout=30)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def refused(r: httpx.Response, status: int, type_: str, param: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error: dict[str, Any] = r.json()["error"]
    assert (error["type"], error["code"]) == (type_, str(status)), error
    if param is not None:
        assert error["param"] == param, error
    return error


def job_rows(url: str, job_id: str) -> list[dict[str, Any]]:
    return query(url, "SELECT job_id, status, credits_held, credits_charged FROM jobs WHERE job_id = %s", job_id)


def settled(proxy: Proxy, url: str) -> None:
    """Everything accepted so far is written: a job created after the refused requests is in
    PostgreSQL and the writer's buffer is empty (the refused requests would have come first)."""
    sentinel = f"sentinel-{uuid.uuid4().hex[:8]}"
    r = post(proxy, "/api/jobs/create", {"job_type": "sentinel", "job_id": sentinel})
    assert r.status_code == 201, r.text
    wait_for(lambda: job_rows(url, sentinel), timeout=30, what="the sentinel job's row")
    wait_writer_idle(proxy)
    r = post(proxy, f"/api/jobs/{sentinel}/complete", {"status": "failed"})
    assert r.status_code == 200, r.text


# -- NaN, Infinity, -Infinity: nothing changes, in every credit mode ---------------------------


def test_nan_and_infinities_are_a_400_that_change_nothing(
    start_proxy: Callable[..., Proxy], database_url: str, upstream: FakeUpstream, credit_mode: dict[str, str]
) -> None:
    proxy = start_proxy(database_url, env=credit_mode)
    proxy.grant("team-a", 100)
    before = balance(proxy)
    upstream_calls = upstream.stats().get("_total", 0)

    # /api/jobs/create: used to be a 500 that left a hold on a job with no row.
    for i, constant in enumerate((b"NaN", b"Infinity", b"-Infinity")):
        job_id = f"nan-create-{i}"
        r = post_raw(
            proxy,
            "/api/jobs/create",
            b'{"job_type": "t", "job_id": "%s", "metadata": {"n": %s}}'
            % (
                job_id.encode(),
                constant,
            ),
        )
        error = refused(r, 400, "invalid_job_metadata", "body")
        assert constant.decode().lstrip("-") in error["message"]
    assert balance(proxy) == before

    # A tracked chat call whose metadata LiteLLM reads with Python's json: went through before.
    for raw, where in (
        (
            b'{"model": "ChatAgent", "messages": [{"role": "user", "content": "hi"}], '
            b'"metadata": {"job_id": "nan-chat", "job_type": "t", "anything": NaN}}',
            "metadata.anything",
        ),
        (
            b'{"model": "ChatAgent", "messages": [{"role": "user", "content": "hi"}], '
            b'"metadata": {"job_id": "nan-chat", "job_type": "t", "job_metadata": {"deep": [1, -Infinity]}}}',
            "metadata.job_metadata.deep.1",
        ),
    ):
        # The error names where the bad number is.
        error = refused(post_raw(proxy, "/v1/chat/completions", raw), 400, "invalid_job_metadata", where)
        assert "NaN or an infinity" in error["message"]
    assert upstream.stats().get("_total", 0) == upstream_calls  # no upstream call was made
    assert balance(proxy) == before

    # /complete: used to be a 500 that completed and charged the job all the same.
    job_id = "nan-complete"
    assert post(proxy, "/api/jobs/create", {"job_type": "t", "job_id": job_id}).status_code == 201
    held = balance(proxy)
    assert held["credits_held"] > before["credits_held"]
    r = post_raw(proxy, f"/api/jobs/{job_id}/complete", b'{"status": "completed", "result": {"x": NaN}}')
    refused(r, 400, "invalid_job_metadata", "body")
    assert balance(proxy) == held  # still held, not charged

    settled(proxy, database_url)
    for i in range(3):
        assert job_rows(database_url, f"nan-create-{i}") == []
    assert job_rows(database_url, "nan-chat") == []
    assert query(database_url, "SELECT count(*) AS n FROM calls WHERE job_id = %s", "nan-chat") == [{"n": 0}]
    [row] = job_rows(database_url, job_id)
    assert (row["status"], row["credits_charged"]) == ("pending", 0)

    # The job is still the client's to complete, properly.
    done = post(proxy, f"/api/jobs/{job_id}/complete", {"status": "completed", "result": {"x": "NaN"}})
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "completed"


# -- a refused structured answer is neither echoed whole nor stored ----------------------------

LONG_ANSWER_CHARS = 10_000
ANSWER_SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "Answer",
        "schema": {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]},
    },
}


@pytest.fixture(scope="module")
def proxy(shared_proxy: Proxy) -> Proxy:
    return shared_proxy


def test_a_long_answer_failing_its_schema_is_quoted_short_and_not_stored(
    proxy: Proxy, module_database_url: str
) -> None:
    job_id = f"long-answer-{uuid.uuid4().hex[:8]}"
    body = {
        "job_type": "extraction",
        "job_id": job_id,
        "model": "Extractor",
        "messages": [{"role": "user", "content": f"Extract [long-json:{LONG_ANSWER_CHARS}]"}],
        "response_format": ANSWER_SCHEMA,
    }
    r = post(proxy, "/api/jobs/create-and-call", body)
    error = refused(r, 502, "invalid_structured_output", "response_format")
    assert len(error["message"]) <= 600, len(error["message"])  # was 10,112 characters
    assert "truncated" in error["message"]
    assert r.json()["status"] == "failed"

    rows = wait_for(
        lambda: query(module_database_url, "SELECT status, error_message FROM jobs WHERE job_id = %s", job_id),
        timeout=30,
        what="the failed job's row",
    )
    [row] = rows
    assert row["status"] == "failed"
    assert "LONG-ANSWER" not in row["error_message"]  # no part of the completion is stored
    assert "properties/answer/type" in row["error_message"]

    # The call route answers the same excerpt (it stores nothing of its own).
    r = post(
        proxy, f"/api/jobs/{job_id}-call/llm-call", {k: v for k, v in body.items() if k not in {"job_type", "job_id"}}
    )
    error = refused(r, 502, "invalid_structured_output")
    assert len(error["message"]) <= 600, len(error["message"])


# -- job ids that do not survive a URL path ----------------------------------------------------


@pytest.mark.parametrize("job_id", [".", ".."])
def test_job_ids_of_dots_are_refused_at_creation_and_on_tagged_calls(
    proxy: Proxy, upstream: FakeUpstream, job_id: str
) -> None:
    before = balance(proxy)
    upstream_calls = upstream.stats().get("_total", 0)
    refused(post(proxy, "/api/jobs/create", {"job_type": "t", "job_id": job_id}), 400, "invalid_job_metadata", "job_id")
    call = {"job_type": "t", "job_id": job_id, "model": "ChatAgent", "messages": MESSAGES}
    refused(post(proxy, "/api/jobs/create-and-call", call), 400, "invalid_job_metadata", "job_id")
    with pytest.raises(openai.BadRequestError) as info:
        client(proxy).chat.completions.create(model="ChatAgent", messages=MESSAGES, extra_body=tag(job_id))
    body: Any = info.value.body
    assert (body["type"], body["param"]) == ("invalid_job_metadata", "metadata.job_id")
    assert balance(proxy) == before
    assert upstream.stats().get("_total", 0) == upstream_calls


# -- body limits bound memory ------------------------------------------------------------------

HUGE = 300 * 1024 * 1024
CHUNK = b"x" * (1024 * 1024)
#: How much the proxy's RSS may grow while it refuses a 300 MB body (it grew 566 MiB before).
RSS_GROWTH_BOUND_KIB = 20 * 1024


def status_kib(pid: int, field: str) -> int:
    for line in open(f"/proc/{pid}/status").read().splitlines():  # noqa: SIM115 - a /proc read
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def reset_peak(pid: int) -> None:
    """Start VmHWM (peak RSS) afresh from the current RSS, where the kernel allows it."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


HUGE_PREFIX = b'{"job_type": "t", "metadata": {"pad": "'


def huge_body() -> Iterator[bytes]:
    """~300 MB of a JSON object that never ends, made as it is sent."""
    yield HUGE_PREFIX
    for _ in range(HUGE // len(CHUNK)):
        yield CHUNK


def send_lying_length(proxy: Proxy, declared: int) -> bytes:
    """A POST declaring ``declared`` bytes that sends ~300 MB; what the proxy answered."""
    head = (
        f"POST /api/jobs/create HTTP/1.1\r\nHost: 127.0.0.1:{proxy.port}\r\ncontent-type: application/json\r\n"
        f"content-length: {declared}\r\n\r\n"
    ).encode()
    answer = b""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=60) as sock:
        sock.sendall(head)
        with contextlib.suppress(OSError):  # the proxy hangs up once the rest is not HTTP
            for chunk in huge_body():
                sock.sendall(chunk)
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                answer += chunk
    return answer


@pytest.mark.single_mode("one proxy process's memory, on its own socket (a front would hold the body, not it)")
def test_huge_bodies_are_refused_without_being_held_in_memory(proxy: Proxy) -> None:
    pid = proxy.proc.pid
    url = f"{proxy.url}/api/jobs/create"
    # Warm the refusal path up (imports, first allocations) before the baseline.
    refused(httpx.post(url, content=b"{" + b" " * 70_000 + b"}", timeout=30), 400, "invalid_job_metadata", "body")
    reset_peak(pid)
    rss_before, peak_before = status_kib(pid, "VmRSS"), status_kib(pid, "VmHWM")

    started = time.monotonic()
    # Chunked (no Content-Length), no key: refused once past 64 KiB.
    error = refused(httpx.post(url, content=huge_body(), timeout=300), 400, "invalid_job_metadata", "body")
    assert "over 65536 bytes" in error["message"]
    # An honest Content-Length: refused from the header, before any of the body is read.
    headers = {"content-length": str(len(HUGE_PREFIX) + HUGE), "content-type": "application/json"}
    error = refused(httpx.post(url, content=huge_body(), headers=headers, timeout=300), 400, "invalid_job_metadata")
    assert "over 65536 bytes" in error["message"]
    # A lying Content-Length (64 KiB declared, 300 MB sent): at most the declared bytes are read.
    answer = send_lying_length(proxy, 65536)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    elapsed = time.monotonic() - started

    rss_after, peak_after = status_kib(pid, "VmRSS"), status_kib(pid, "VmHWM")
    growth = {"rss": rss_after - rss_before, "peak": peak_after - peak_before}
    print(  # the figures, for the record (pytest -s)
        f"proxy RSS {rss_before} -> {rss_after} KiB, peak {peak_before} -> {peak_after} KiB "
        f"over 3 x 300 MB in {elapsed:.1f}s"
    )
    assert growth["rss"] <= RSS_GROWTH_BOUND_KIB, growth
    assert growth["peak"] <= RSS_GROWTH_BOUND_KIB, growth
    assert proxy.health().status_code == 200  # and the proxy serves on
