"""A small, bounded async load generator (aiohttp): closed loop at a fixed concurrency, or open
loop at a fixed rate with a cap on requests in flight. Latencies are per request, start to last byte."""

from __future__ import annotations

import asyncio
import dataclasses
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


# -- the mixed load of the scale proof (bench/scale.py) ---------------------------------------------
#
# Calls of open jobs (created and completed through the plugin's routes, their calls spread over the
# replicas), single-call jobs (untagged calls) and streams, from several teams, against a pair of
# replicas. Every request is kept (status, replica, the call record's id), and a sample of the answered
# calls and created jobs is read back through the other replica (read-your-writes visibility).

CHAT_PATH = "/v1/chat/completions"
PROMPT = "Say hello to the scale proof."
#: Streams send four chunks 20 ms apart (the fake upstream's ``[chunks:N:GAP]``): a stream lasts long
#: enough for a kill to land in one.
STREAM_PROMPT = "Say hello to the scale proof. [chunks:4:0.02]"


@dataclass(frozen=True)
class Target:
    """One replica of the pair: its name (``r1``, ``r2``) and base URL."""

    name: str
    url: str


@dataclass(frozen=True)
class Mix:
    """What the mixed load sends. Shares are of chat calls; the rest are calls of open jobs."""

    teams: tuple[tuple[str, str], ...]  # (key, team)
    plugin: bool = True  # create and complete jobs through the routes (a bare proxy has none)
    single_call_share: float = 0.5  # untagged calls: a single-call job each (JOBS_UNTAGGED=single_call_job)
    single_stream_every: int = 3  # every third single-call job is streamed
    calls_per_job: int = 4
    stream_call: int = 2  # the open job's call (0-based) that is streamed
    call_gap_s: float = 0.2  # an open job's calls start this far apart (or when the previous one ended)
    job_type: str = "scale-open"
    sample_calls_every: int = 20  # every Nth answered call is read back (0: none)
    sample_creates_every: int = 5  # every Nth created job is read back before its first call (0: none)
    probe_interval_s: float = 0.05
    probe_deadline_s: float = 30.0

    def chat_body(self, *, stream: bool, job_id: str | None) -> bytes:
        payload: dict[str, Any] = {
            "model": "ChatAgent",
            "messages": [{"role": "user", "content": STREAM_PROMPT if stream else PROMPT}],
        }
        if stream:
            payload["stream"] = True
        if job_id is not None:
            payload["metadata"] = {"job_id": job_id, "job_type": self.job_type}
        return json.dumps(payload).encode()


@dataclass
class Sent:
    """One request of the mixed load, as the client saw it."""

    phase: str
    kind: str  # call | stream | create | complete
    scenario: str  # open_job | single_call
    replica: str
    team: str
    t_start: float  # seconds since the load's epoch
    t_end: float = 0.0
    status: int = 0  # 0: no HTTP answer (connection refused or reset, timeout)
    complete: bool = False  # a 200 read to its end (a stream: through its [DONE], with no error event)
    error: str | None = None
    job_id: str | None = None  # ours for an open job, x-job-id for a single-call job
    record_id: str | None = None  # x-job-call-id, else x-litellm-call-id
    litellm_call_id: str | None = None
    ordinal: int = 0  # an answered call's position among its job's answered calls
    late_s: float = 0.0  # started this long after its scheduled time (in-flight cap, or a slow predecessor)

    @property
    def latency_ms(self) -> float:
        return (self.t_end - self.t_start) * 1000

    @property
    def answered(self) -> bool:
        return self.status == 200 and self.complete


@dataclass
class Probe:
    """A read-back: how long after the answer the other replica showed the write."""

    kind: str  # call | create
    replica: str  # where it was read
    job_id: str
    record_id: str | None
    t_answer: float
    #: call: /calls lists the record; job: GET /api/jobs/{id} counts it (total_calls >= ordinal), or, for
    #: a create, answers it pending; listed: in ?status=pending (creates only). None: not within the deadline.
    call_s: float | None = None
    job_s: float | None = None
    listed_s: float | None = None
    same_replica_pending: bool | None = None  # creates: GET on the replica that created it, at once
    #: reads until each showed the write (1: at once); 0 while not shown
    call_reads: int = 0
    job_reads: int = 0
    listed_reads: int = 0
    first_statuses: list[int] = field(default_factory=list)  # the first reads' statuses (a 404 is a miss)
    error: str | None = None
    phase: str = ""


@dataclass
class MixedRecorder:
    """Everything the mixed load sent and read back, in one place for the caller."""

    epoch: float = field(default_factory=time.monotonic)
    sent: list[Sent] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    answered_calls: int = 0
    created: int = 0
    probe_tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.epoch


def _other(targets: tuple[Target, ...], target: Target) -> Target:
    return next((t for t in targets if t.name != target.name), target)


class MixedLoad:
    """The scale proof's driver: an open loop at a fixed rate of chat calls, or a closed loop."""

    def __init__(self, targets: tuple[Target, ...], mix: Mix, rec: MixedRecorder, *, max_in_flight: int = 256):
        self.targets = targets
        self.mix = mix
        self.rec = rec
        self.gate = asyncio.Semaphore(max_in_flight)
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> MixedLoad:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=False),
            timeout=aiohttp.ClientTimeout(total=120.0),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.rec.probe_tasks:
            await asyncio.gather(*self.rec.probe_tasks, return_exceptions=True)
            self.rec.probe_tasks.clear()
        if self.session is not None:
            await self.session.close()

    # -- one request ---------------------------------------------------------------------------

    async def _post(self, sent: Sent, target: Target, path: str, key: str, body: bytes) -> bytes:
        assert self.session is not None
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        sent.t_start = self.rec.now()
        data = b""
        try:
            async with self.session.post(target.url + path, data=body, headers=headers) as resp:
                sent.status = resp.status
                sent.litellm_call_id = resp.headers.get("x-litellm-call-id")
                sent.record_id = resp.headers.get("x-job-call-id") or sent.litellm_call_id
                if resp.headers.get("x-job-id"):
                    sent.job_id = resp.headers["x-job-id"]
                data = await resp.read()
                sent.complete = resp.status == 200
        except Exception as exc:  # a reset, a refused connection, a timeout: recorded, never raised
            sent.error = type(exc).__name__
        sent.t_end = self.rec.now()
        self.rec.sent.append(sent)
        return data

    async def chat(
        self, phase: str, target: Target, key: str, team: str, *, stream: bool, job_id: str | None, ordinal: int = 1
    ) -> Sent:
        sent = Sent(
            phase,
            "stream" if stream else "call",
            "open_job" if job_id else "single_call",
            target.name,
            team,
            0.0,
            job_id=job_id,
        )
        body = await self._post(sent, target, CHAT_PATH, key, self.mix.chat_body(stream=stream, job_id=job_id))
        if sent.status == 200 and stream:
            # a stream whose connection broke, or that carried an error event, is not an answer
            sent.complete = sent.complete and b"[DONE]" in body and b'"error"' not in body
            if not sent.complete and sent.error is None:
                sent.error = "incomplete_stream"
        elif sent.status != 200 and sent.error is None:
            sent.error = _error_type(body)
        if sent.answered:
            sent.ordinal = ordinal
            self.rec.answered_calls += 1
            every = self.mix.sample_calls_every
            if self.mix.plugin and every and self.rec.answered_calls % every == 0 and sent.job_id:
                probe = Probe("call", _other(self.targets, target).name, sent.job_id, sent.record_id, sent.t_end)
                probe.phase = phase
                self.rec.probes.append(probe)
                self.rec.probe_tasks.append(asyncio.create_task(self._probe_call(probe, key, ordinal)))
        return sent

    async def _route(self, phase: str, kind: str, target: Target, key: str, team: str, path: str, body: Any) -> Sent:
        sent = Sent(phase, kind, "open_job", target.name, team, 0.0)
        raw = await self._post(sent, target, path, key, json.dumps(body).encode())
        if sent.status not in (200, 201) and sent.error is None:
            sent.error = _error_type(raw)
        sent.complete = sent.status in (200, 201)
        return sent

    # -- read-backs -----------------------------------------------------------------------------

    async def _get(self, target: Target, path: str, key: str) -> tuple[int, Any]:
        assert self.session is not None
        async with self.session.get(target.url + path, headers={"Authorization": f"Bearer {key}"}) as resp:
            body = await resp.json(content_type=None) if resp.status == 200 else None
            return resp.status, body

    def _target(self, name: str) -> Target:
        return next(t for t in self.targets if t.name == name)

    async def _probe_call(self, probe: Probe, key: str, ordinal: int) -> None:
        """Poll /calls and the job through the other replica until the answered call shows in both."""
        target = self._target(probe.replica)
        deadline = probe.t_answer + self.mix.probe_deadline_s
        try:
            while self.rec.now() < deadline and (probe.call_s is None or probe.job_s is None):
                if probe.call_s is None:
                    status, body = await self._get(target, f"/api/jobs/{probe.job_id}/calls", key)
                    probe.call_reads += 1
                    if len(probe.first_statuses) < 2:
                        probe.first_statuses.append(status)
                    if status == 200 and any(c.get("call_id") == probe.record_id for c in body["calls"]):
                        probe.call_s = self.rec.now() - probe.t_answer
                if probe.job_s is None:
                    status, body = await self._get(target, f"/api/jobs/{probe.job_id}", key)
                    probe.job_reads += 1
                    if status == 200 and int(body.get("total_calls") or 0) >= ordinal:
                        probe.job_s = self.rec.now() - probe.t_answer
                if probe.call_s is None or probe.job_s is None:
                    await asyncio.sleep(self.mix.probe_interval_s)
        except Exception as exc:
            probe.error = type(exc).__name__

    async def _probe_create(self, probe: Probe, key: str, origin: Target) -> None:
        """Right after a 201: the job is pending on both replicas and in ?status=pending of the other."""
        other = self._target(probe.replica)
        listing = f"/api/jobs?status=pending&job_type={self.mix.job_type}&limit=500"
        deadline = probe.t_answer + self.mix.probe_deadline_s
        try:
            status, body = await self._get(origin, f"/api/jobs/{probe.job_id}", key)
            probe.same_replica_pending = status == 200 and body.get("status") == "pending"
            while self.rec.now() < deadline and (probe.job_s is None or probe.listed_s is None):
                if probe.job_s is None:
                    status, body = await self._get(other, f"/api/jobs/{probe.job_id}", key)
                    probe.job_reads += 1
                    if len(probe.first_statuses) < 2:
                        probe.first_statuses.append(status)
                    if status == 200 and body.get("status") == "pending":
                        probe.job_s = self.rec.now() - probe.t_answer
                if probe.listed_s is None:
                    status, body = await self._get(other, listing, key)
                    probe.listed_reads += 1
                    if status == 200 and any(j.get("job_id") == probe.job_id for j in body["jobs"]):
                        probe.listed_s = self.rec.now() - probe.t_answer
                if probe.job_s is None or probe.listed_s is None:
                    await asyncio.sleep(self.mix.probe_interval_s)
        except Exception as exc:
            probe.error = type(exc).__name__

    # -- the items: a single-call job, an open job's session ------------------------------------

    def _pick(self, n: int) -> tuple[Target, str, str]:
        key, team = self.mix.teams[n % len(self.mix.teams)]
        return self.targets[n % len(self.targets)], key, team

    async def single(self, phase: str, n: int, *, late_s: float = 0.0) -> None:
        target, key, team = self._pick(n)
        stream = self.mix.single_stream_every > 0 and n % self.mix.single_stream_every == 1
        sent = await self.chat(phase, target, key, team, stream=stream, job_id=None)
        sent.late_s = late_s

    async def job(self, phase: str, n: int, *, start: float | None = None, late_s: float = 0.0) -> None:
        """Create (plugin only), ``calls_per_job`` calls alternating over the replicas, complete."""
        first, key, team = self._pick(n)
        order = [first, _other(self.targets, first)]
        job_id = f"scale-{phase}-{n}-{uuid.uuid4().hex[:8]}"
        if self.mix.plugin:
            created = await self._route(
                phase, "create", first, key, team, "/api/jobs/create", {"job_type": self.mix.job_type, "job_id": job_id}
            )
            created.job_id = job_id
            created.late_s = late_s
            if created.status != 201:
                return
            self.rec.created += 1
            every = self.mix.sample_creates_every
            if every and self.rec.created % every == 0:
                probe = Probe("create", order[1].name, job_id, None, created.t_end)
                probe.phase = phase
                self.rec.probes.append(probe)
                await self._probe_create(probe, key, first)
        answered = 0
        base = self.rec.now() if start is None else start
        for i in range(self.mix.calls_per_job):
            wait = base + i * self.mix.call_gap_s - self.rec.now()
            if wait > 0:
                await asyncio.sleep(wait)  # pacing of the open loop, not a synchronisation
            sent = await self.chat(
                phase, order[i % 2], key, team, stream=i == self.mix.stream_call, job_id=job_id, ordinal=answered + 1
            )
            answered += sent.answered
        if self.mix.plugin:
            done = await self._route(
                phase, "complete", order[1], key, team, f"/api/jobs/{job_id}/complete", {"status": "completed"}
            )
            done.job_id = job_id

    # -- loops ----------------------------------------------------------------------------------

    async def open_loop(self, phase: str, *, rate: float, duration_s: float) -> None:
        """``rate`` chat calls per second for ``duration_s``: single-call jobs evenly spaced at their
        share of it, open jobs started at theirs (each ``calls_per_job`` calls ``call_gap_s`` apart)."""
        single_rate = rate * self.mix.single_call_share
        job_rate = rate * (1 - self.mix.single_call_share) / self.mix.calls_per_job
        t0 = self.rec.now()
        plan: list[tuple[float, str, int]] = []
        if single_rate > 0:
            plan += [(t0 + k / single_rate, "single", k) for k in range(int(single_rate * duration_s))]
        if job_rate > 0:
            plan += [(t0 + k / job_rate, "job", k) for k in range(int(job_rate * duration_s))]
        plan.sort()
        tasks: list[asyncio.Task[None]] = []

        async def fire(at: float, what: str, k: int) -> None:
            async with self.gate:
                late = max(0.0, self.rec.now() - at)
                if what == "single":
                    await self.single(phase, k, late_s=late)
                else:
                    await self.job(phase, k, start=max(at, self.rec.now()), late_s=late)

        for at, what, k in plan:
            delay = at - self.rec.now()
            if delay > 0:
                await asyncio.sleep(delay)  # the open loop's schedule
            tasks.append(asyncio.create_task(fire(at, what, k)))
        await asyncio.gather(*tasks)

    async def closed_loop(self, phase: str, *, concurrency: int, duration_s: float) -> None:
        """``concurrency`` clients, each sending its next item when the last one ended: an open job
        (its calls back to back) one time in five, else a single-call job (the open loop's call mix)."""
        deadline = self.rec.now() + duration_s
        counts = {"item": 0, "single": 0, "job": 0}

        async def client() -> None:
            while self.rec.now() < deadline:
                counts["item"] += 1
                kind = "job" if counts["item"] % 5 == 0 else "single"
                counts[kind] += 1
                if kind == "job":
                    await self.job(phase, counts["job"])
                else:
                    await self.single(phase, counts["single"])

        mix = self.mix
        self.mix = dataclasses.replace(mix, call_gap_s=0.0)
        try:
            await asyncio.gather(*(client() for _ in range(concurrency)))
        finally:
            self.mix = mix


def _error_type(body: bytes) -> str:
    """The error JSON's ``type`` (OpenAI's shape), else a short excerpt."""
    try:
        error = json.loads(body).get("error") or {}
        return str(error.get("type") or error.get("code") or "error")
    except (ValueError, AttributeError):
        return body[:60].decode(errors="replace") or "empty"
