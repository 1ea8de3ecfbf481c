"""A small, bounded async load generator (aiohttp): closed loop at a fixed concurrency, or open
loop at a fixed rate with a cap on requests in flight. Latencies are per request, start to last byte."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .procs import TEAM_KEY


@dataclass(frozen=True)
class Scenario:
    """One kind of call: untagged, of an open job, or a single-call job, streamed or not."""

    name: str
    stream: bool
    tag: str  # "none" (untagged) | "open_job" (one job id per round)

    def body(self, job_id: str | None) -> bytes:
        payload: dict[str, Any] = {
            "model": "ChatAgent",
            "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
        }
        if self.stream:
            payload["stream"] = True
        if self.tag == "open_job" and job_id is not None:
            payload["metadata"] = {"job_id": job_id, "job_type": "bench"}
        return json.dumps(payload).encode()


@dataclass
class LoadResult:
    ok: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.ok / self.wall_s if self.wall_s else 0.0

    def pct(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        xs = sorted(self.latencies_ms)
        return xs[min(len(xs) - 1, max(0, round(p / 100 * len(xs)) - 1))]


HEADERS = {"Authorization": f"Bearer {TEAM_KEY}", "Content-Type": "application/json"}


async def _one(session: aiohttp.ClientSession, url: str, body: bytes, result: LoadResult) -> None:
    t0 = time.perf_counter()
    try:
        async with session.post(url, data=body, headers=HEADERS) as resp:
            await resp.read()
            status = resp.status
    except Exception:
        result.errors += 1
        return
    result.statuses[status] = result.statuses.get(status, 0) + 1
    if status == 200:
        result.ok += 1
        result.latencies_ms.append((time.perf_counter() - t0) * 1000)
    else:
        result.errors += 1


def _session(limit: int, timeout_s: float) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, force_close=False),
        timeout=aiohttp.ClientTimeout(total=timeout_s),
    )


async def closed_loop(
    base_url: str,
    body: Callable[[], bytes],
    *,
    concurrency: int,
    duration_s: float | None = None,
    requests: int | None = None,
    timeout_s: float = 120.0,
) -> LoadResult:
    """``concurrency`` workers, each sending its next request when the last one ended; stops after
    ``duration_s`` or ``requests`` in total."""
    url = base_url + "/v1/chat/completions"
    result = LoadResult()
    sent = 0
    async with _session(concurrency, timeout_s) as session:
        t0 = time.perf_counter()
        deadline = t0 + duration_s if duration_s is not None else float("inf")

        async def worker() -> None:
            nonlocal sent
            while time.perf_counter() < deadline and (requests is None or sent < requests):
                sent += 1
                await _one(session, url, body(), result)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.wall_s = time.perf_counter() - t0
    return result


async def open_loop(
    base_url: str, body: Callable[[], bytes], *, rate: float, duration_s: float, max_in_flight: int = 64
) -> LoadResult:
    """Requests started at a fixed rate (evenly spaced) for ``duration_s``; at most ``max_in_flight``."""
    url = base_url + "/v1/chat/completions"
    result = LoadResult()
    gate = asyncio.Semaphore(max_in_flight)
    tasks: list[asyncio.Task[None]] = []
    async with _session(max_in_flight, 120.0) as session:

        async def fire() -> None:
            async with gate:
                await _one(session, url, body(), result)

        t0 = time.perf_counter()
        n = int(rate * duration_s)
        for i in range(n):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(fire()))
        await asyncio.gather(*tasks)
        result.wall_s = time.perf_counter() - t0
    return result


def new_job_id() -> str:
    return f"bench-{uuid.uuid4().hex[:12]}"
