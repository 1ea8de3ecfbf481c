"""The benchmark: the plugin proxy against the bare proxy, side by side.

    .venv/bin/python -m bench.run quick        # a few minutes
    .venv/bin/python -m bench.run full         # the long one (memory run of 20 minutes, more rounds)
    .venv/bin/python -m bench.run quick --stages callgrind,wall

Stages: ``inproc`` (the plugin alone: its CPU per call without LiteLLM, ``bench/inproc.py``),
``callgrind`` (instructions per request, the primary figure), ``wall`` (throughput,
latency, CPU ms per request, alternating rounds), ``profile`` (py-spy of the plugin proxy under
load), ``memory`` (RSS over a long run; the in-process credit state under 1 million jobs),
``growth`` (100k jobs seeded in the database). Results: ``bench/results/<stamp>/results.json``
and ``report.md`` (a copy at ``bench/results/latest.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from tests.support.services import FakeUpstream

from . import callgrind, profile, seed
from .load import LoadResult, Scenario, closed_loop, open_loop
from .procs import (
    ROOT,
    TEAM,
    ProxyProc,
    Variant,
    cleanup,
    create_database,
    db_backend_cpu,
    db_cpu_delta,
    drop_database,
    start_proxy,
)

BARE = Variant("bare", plugin=False)
PLUGIN = Variant("plugin", plugin=True)
PLUGIN_ALLOW = Variant("plugin-allow", plugin=True, untagged="allow")
PLUGIN_REDIS = Variant("plugin-redis", plugin=True, redis=True)
PLUGIN_REDIS_ALLOW = Variant("plugin-redis-allow", plugin=True, redis=True, untagged="allow")
#: The floor: the plugin's hooks, each returning at once (what LiteLLM spends on calling them).
NULL = Variant("null", plugin=False, callback="null_plugin")
#: The plugin with webhooks (an endpoint for every event) and usage export (a CloudEvents sink) on:
#: what billing integrations cost per call, against PLUGIN in the same run.
PLUGIN_BILLING = Variant(
    "plugin-billing",
    plugin=True,
    billing=True,
    extra_env=(("JOBS_WEBHOOK_JOB_SETTLE_S", "0"), ("JOBS_EXPORT_INTERVAL_S", "0.5"), ("JOBS_EXPORT_DELAY_S", "0")),
)
#: The same, with delivery and export moved out of the proxy (`litellm-jobs worker` runs them): the
#: proxy's share. The database triggers still write every event's outbox row.
PLUGIN_BILLING_OFFLOADED = Variant(
    "plugin-billing-offloaded",
    plugin=True,
    billing=True,
    extra_env=(("JOBS_WEBHOOKS_ENABLED", "false"), ("JOBS_EXPORT_INTERVAL_S", "0")),
)
VARIANTS = {
    v.name: v
    for v in (
        BARE,
        NULL,
        PLUGIN,
        PLUGIN_ALLOW,
        PLUGIN_REDIS,
        PLUGIN_REDIS_ALLOW,
        PLUGIN_BILLING,
        PLUGIN_BILLING_OFFLOADED,
    )
}


@dataclasses.dataclass(frozen=True)
class Mode:
    cg_requests: int
    cg_warm: int
    cg_rounds: int
    cg_settle_s: float
    cg_idle_s: float
    wall_rounds: int
    wall_sat_s: float
    wall_lat_s: float
    concurrency: int
    rate_plain: float
    rate_stream: float
    profile_s: int
    memory_s: float
    local_jobs: int
    seed_jobs: int
    seed_calls_per_job: int
    seed_teams: int
    seed_big_job_calls: int
    variants: tuple[Variant, ...]
    #: Only the cells whose name (``variant/scenario/plain|stream``) matches this regex (``--only``).
    only: str | None = None


MODES = {
    "quick": Mode(
        cg_requests=20,
        cg_warm=5,
        cg_rounds=2,
        cg_settle_s=2.0,
        cg_idle_s=6.0,
        wall_rounds=2,
        wall_sat_s=4.0,
        wall_lat_s=4.0,
        concurrency=8,
        rate_plain=30.0,
        rate_stream=15.0,
        profile_s=12,
        memory_s=45.0,
        local_jobs=1_000_000,
        seed_jobs=100_000,
        seed_calls_per_job=2,
        seed_teams=1000,
        seed_big_job_calls=20_000,
        variants=(BARE, NULL, PLUGIN, PLUGIN_ALLOW, PLUGIN_REDIS),
    ),
    "full": Mode(
        cg_requests=100,
        cg_warm=20,
        cg_rounds=3,
        cg_settle_s=3.0,
        cg_idle_s=20.0,
        wall_rounds=5,
        wall_sat_s=15.0,
        wall_lat_s=15.0,
        concurrency=8,
        rate_plain=30.0,
        rate_stream=15.0,
        profile_s=30,
        memory_s=1200.0,
        local_jobs=1_000_000,
        seed_jobs=100_000,
        seed_calls_per_job=10,
        seed_teams=1000,
        seed_big_job_calls=100_000,
        variants=(BARE, NULL, PLUGIN, PLUGIN_ALLOW, PLUGIN_REDIS, PLUGIN_REDIS_ALLOW),
    ),
}


def scenarios_of(variant: Variant) -> list[Scenario]:
    """The calls each proxy gets; the bare proxy gets both body shapes (with and without metadata)."""
    out: list[Scenario] = []
    for stream in (False, True):
        if not variant.plugin:
            out += [Scenario("untagged", stream, "none"), Scenario("open_job", stream, "open_job")]
        elif variant.untagged == "allow":
            out.append(Scenario("untagged", stream, "none"))
        else:
            # untagged under JOBS_UNTAGGED=single_call_job: every call is a new job (hold, capture)
            out += [Scenario("single_call", stream, "none"), Scenario("open_job", stream, "open_job")]
    return out


def bare_twin(scenario: Scenario) -> Scenario:
    return Scenario("open_job" if scenario.tag == "open_job" else "untagged", scenario.stream, scenario.tag)


def cell_name(variant: Variant, scenario: Scenario) -> str:
    return f"{variant.name}/{scenario.name}/{'stream' if scenario.stream else 'plain'}"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@contextlib.contextmanager
def proxies(
    tmp: Path, upstream: FakeUpstream, variants: tuple[Variant, ...], *, cg: bool, database: str | None = None
) -> Iterator[dict[str, ProxyProc]]:
    started: dict[str, ProxyProc] = {}
    try:
        for v in variants:
            started[v.name] = start_proxy(tmp, upstream, v, callgrind=cg, database=database)
        for p in started.values():
            p.wait_ready(timeout=900 if cg else 180)
            p.grant()
            p.turn_on_billing(upstream.url)
        yield started
    finally:
        for p in started.values():
            cleanup(p, keep_database=database is not None)


def open_job_id(variant: Variant, rnd: int, stage: str) -> str:
    return f"bench-open-{stage}-{variant.name}-{rnd}"


# -- callgrind --------------------------------------------------------------------------------


#: The callgrind windows: sequential (one call per writer batch, the worst case for batching) and
#: concurrent (the same number of calls, 8 at a time: the batches amortize over several calls).
CG_WINDOWS = {"sequential": 1, "concurrent": 8}
#: How a cell's rounds are summarized: the median, except for the concurrent windows, where the
#: minimum is taken. Under valgrind (one thread at a time, ~50x slower) overlapping requests make
#: LiteLLM's own work timing-dependent (bare/open_job/stream at concurrency 8: 74.7 and 104.2 M in
#: two rounds, the extra in a regex path, ``sre_ucs1_match``); that noise only ever adds.
CG_ESTIMATOR: dict[str, Callable[[list[float]], float]] = {"sequential": statistics.median, "concurrent": min}


def stage_callgrind(tmp: Path, upstream: FakeUpstream, mode: Mode, res: dict[str, Any]) -> None:
    out: dict[str, Any] = {
        "windows": {name: {"concurrency": c, "cells": {}} for name, c in CG_WINDOWS.items()},
        "idle": {},
        "requests": mode.cg_requests,
        "settle_s": mode.cg_settle_s,
        "warm_statuses": {},
    }
    res["callgrind"] = out
    only = re.compile(mode.only) if mode.only else None
    with proxies(tmp, upstream, mode.variants, cg=True) as procs:
        log("callgrind: all proxies ready")
        for rnd in range(mode.cg_rounds):
            for v in mode.variants:
                p = procs[v.name]
                idle = callgrind.measure(p, None, requests=0, settle_s=mode.cg_idle_s)
                out["idle"].setdefault(v.name, []).append(idle.instructions / idle.seconds)
                for sc in scenarios_of(v):
                    job = open_job_id(v, rnd, "cg")
                    name = cell_name(v, sc)
                    if only is not None and not only.search(name):
                        continue
                    warm = callgrind.warm(p, sc, requests=mode.cg_warm, job_id=job)
                    out["warm_statuses"].setdefault(name, []).append({str(k): n for k, n in warm.items()})
                    for wname, conc in CG_WINDOWS.items():
                        w = callgrind.measure(
                            p, sc, requests=mode.cg_requests, settle_s=mode.cg_settle_s, job_id=job, concurrency=conc
                        )
                        health = p.writer_health()
                        cells = out["windows"][wname]["cells"]
                        cell = cells.setdefault(name, {"per_request": [], "seconds": [], "ok": [], "statuses": []})
                        cell["per_request"].append(w.per_request)
                        cell["seconds"].append(w.seconds)
                        cell["ok"].append(w.ok)
                        cell["statuses"].append({str(k): n for k, n in w.statuses.items()})
                        cell["writer_after"] = health
                        log(
                            f"callgrind r{rnd} {wname} {name}: {w.per_request / 1e6:.2f} M instr/request "
                            f"({w.ok}/{w.requests} ok, {w.seconds:.1f} s)"
                        )
        out["store_outages"] = {name: p.store_outages() for name, p in procs.items()}


def callgrind_summary(res: dict[str, Any], window: str = "sequential") -> list[dict[str, Any]]:
    cg = res.get("callgrind")
    if not cg:
        return []
    # the first run's results.json had one window (sequential) under "cells"
    cells = cg["windows"][window]["cells"] if "windows" in cg else (cg["cells"] if window == "sequential" else {})

    estimate = CG_ESTIMATOR[window]

    def clean(cell: dict[str, Any], key: str) -> list[float]:
        """A window with a failed request (its error path: LiteLLM's retries, fallback, traceback) is
        left out when a window of the cell had none."""
        xs = [x for x, ok in zip(cell[key], cell["ok"], strict=True) if ok == cg["requests"]]
        return xs or list(cell[key])

    rows = []
    for name, cell in cells.items():
        vname, sname, kind = name.split("/")
        per_request = clean(cell, "per_request")
        med = estimate(per_request)
        spread = (max(per_request) - min(per_request)) / med if med else 0.0
        idle_rate = statistics.median(cg["idle"].get(vname, [0.0]))
        window_s = statistics.median(clean(cell, "seconds"))
        corrected = med - idle_rate * window_s / cg["requests"]
        row: dict[str, Any] = {
            "cell": name,
            "variant": vname,
            "scenario": sname,
            "kind": kind,
            "instr": med,
            "spread": spread,
            "idle_rate": idle_rate,
            "corrected": corrected,
            "window_s": window_s,
            "failed": sum(cg["requests"] - ok for ok in cell["ok"]),
            "windows": len(per_request),
        }
        if vname != "bare":
            twin = cells.get(f"bare/{'open_job' if sname == 'open_job' else 'untagged'}/{kind}")
            if twin:
                bmed = estimate(clean(twin, "per_request"))
                bidle = statistics.median(cg["idle"]["bare"])
                bcorr = bmed - bidle * statistics.median(clean(twin, "seconds")) / cg["requests"]
                row["ratio"] = med / bmed
                row["ratio_corrected"] = corrected / bcorr
                row["delta"] = med - bmed
                row["delta_corrected"] = corrected - bcorr
        rows.append(row)
    return rows


# -- wall clock -------------------------------------------------------------------------------


def constant(body: bytes) -> Callable[[], bytes]:
    return lambda: body


def _run_load(coro: Any) -> LoadResult:
    result: LoadResult = asyncio.run(coro)
    return result


def wall_cell(p: ProxyProc, sc: Scenario, mode: Mode, job_id: str) -> dict[str, Any]:
    body = sc.body(job_id)
    _run_load(closed_loop(p.url, lambda: body, concurrency=mode.concurrency, duration_s=1.0))  # warm
    cpu0, db0 = p.cpu_seconds(), db_backend_cpu(p.database)
    sat = _run_load(closed_loop(p.url, lambda: body, concurrency=mode.concurrency, duration_s=mode.wall_sat_s))
    cpu1, db1 = p.cpu_seconds(), db_backend_cpu(p.database)
    rate = mode.rate_stream if sc.stream else mode.rate_plain
    lat = _run_load(open_loop(p.url, lambda: body, rate=rate, duration_s=mode.wall_lat_s))
    n = max(1, sat.ok)
    return {
        "rps": sat.rps,
        "sat_p50": sat.pct(50),
        "sat_p95": sat.pct(95),
        "sat_p99": sat.pct(99),
        "cpu_ms": (cpu1 - cpu0) * 1000 / n,
        "db_cpu_ms": db_cpu_delta(db0, db1) * 1000 / n,
        "errors": sat.errors + lat.errors,
        "statuses": {**{str(k): v for k, v in sat.statuses.items()}},
        "rate": rate,
        "p50": lat.pct(50),
        "p95": lat.pct(95),
        "p99": lat.pct(99),
    }


def stage_wall(procs: dict[str, ProxyProc], mode: Mode, res: dict[str, Any]) -> None:
    out: dict[str, Any] = {"rounds": mode.wall_rounds, "cells": {}}
    res["wall"] = out
    cells = [(v, sc) for v in (p.variant for p in procs.values()) for sc in scenarios_of(v)]
    for rnd in range(mode.wall_rounds):
        # alternate: every plugin cell right after its bare twin, the order rotated each round
        plugin_cells = [c for c in cells if c[0].name != BARE.name]  # the plugin variants and the null hooks
        k = rnd % max(1, len(plugin_cells))
        plugin_cells = plugin_cells[k:] + plugin_cells[:k]
        for v, sc in plugin_cells:
            # a plugin cell and its bare twin, one right after the other (which first alternates)
            pair = [(BARE, bare_twin(sc)), (v, sc)] if rnd % 2 == 0 else [(v, sc), (BARE, bare_twin(sc))]
            measured: dict[str, dict[str, Any]] = {}
            for pv, psc in pair:
                p = procs[pv.name]
                if p.proc.poll() is not None:
                    # a dead proxy's cells are left out (not counted as 0 req/s); the report says it exited
                    if pv.name not in out.setdefault("exited", {}):
                        out["exited"][pv.name] = {"code": p.proc.returncode, "log": p.log_tail(80)}
                        log(f"wall: {pv.name} exited with {p.proc.returncode}; its cells are skipped")
                    continue
                r = wall_cell(p, psc, mode, open_job_id(pv, rnd, "wall"))
                out["cells"].setdefault(cell_name(pv, psc), []).append(r)
                measured[pv.name] = r
                log(
                    f"wall r{rnd} {cell_name(pv, psc)}: {r['rps']:.1f} req/s, cpu {r['cpu_ms']:.2f} ms/req, "
                    f"p50/p99 at {r['rate']:.0f}/s {r['p50']:.1f}/{r['p99']:.1f} ms, errors {r['errors']}"
                )
            if v.name in measured and BARE.name in measured:
                measured[v.name]["bare"] = measured[BARE.name]  # what the summary compares it with


def wall_summary(res: dict[str, Any]) -> list[dict[str, Any]]:
    wall = res.get("wall")
    if not wall:
        return []
    cells = wall["cells"]
    keys = ["rps", "cpu_ms", "db_cpu_ms", "sat_p50", "sat_p99", "p50", "p95", "p99"]
    rows = []
    for name, runs in cells.items():
        vname = name.split("/")[0]
        row: dict[str, Any] = {"cell": name, "variant": vname, "errors": sum(r["errors"] for r in runs)}
        for k in keys:
            row[k] = statistics.median(r[k] for r in runs)
        if vname != "bare":
            twin_runs = [r["bare"] for r in runs if r.get("bare")]
            runs = [r for r in runs if r.get("bare")]
            if twin_runs:
                # per round: the plugin cell against the bare run right next to it
                n = len(runs)
                row["rps_ratio"] = statistics.median(runs[i]["rps"] / twin_runs[i]["rps"] for i in range(n))
                row["cpu_ratio"] = statistics.median(runs[i]["cpu_ms"] / twin_runs[i]["cpu_ms"] for i in range(n))
                row["cpu_added"] = statistics.median(runs[i]["cpu_ms"] - twin_runs[i]["cpu_ms"] for i in range(n))
                row["p50_added"] = statistics.median(runs[i]["p50"] - twin_runs[i]["p50"] for i in range(n))
                row["p99_added"] = statistics.median(runs[i]["p99"] - twin_runs[i]["p99"] for i in range(n))
        rows.append(row)
    return rows


# -- profile ----------------------------------------------------------------------------------


def stage_profile(tmp: Path, procs: dict[str, ProxyProc], mode: Mode, res: dict[str, Any]) -> None:
    out: dict[str, Any] = {}
    res["profile"] = out
    targets = [(PLUGIN, Scenario("single_call", False, "none")), (PLUGIN, Scenario("open_job", False, "open_job"))]
    targets += [(PLUGIN, Scenario("single_call", True, "none"))]
    if PLUGIN_ALLOW.name in procs:
        # nothing held: the hooks and the writer only
        targets.append((PLUGIN_ALLOW, Scenario("untagged", False, "none")))
    if PLUGIN_REDIS.name in procs:
        targets.append((PLUGIN_REDIS, Scenario("single_call", False, "none")))
    for v, sc in targets:
        p = procs[v.name]
        if p.proc.poll() is not None:
            out[cell_name(v, sc)] = {"error": f"the proxy exited with {p.proc.returncode}", "log": p.log_tail(80)}
            log(f"profile {cell_name(v, sc)}: skipped, the proxy exited with {p.proc.returncode}")
            continue
        raw = tmp / f"pyspy-{v.name}-{sc.name}-{int(sc.stream)}.txt"
        body = constant(sc.body(open_job_id(v, 99, "profile")))
        _run_load(closed_loop(p.url, body, concurrency=mode.concurrency, duration_s=1.0))
        spy = profile.record(p.pid, raw, seconds=mode.profile_s)
        time.sleep(1.0)
        cpu0 = p.cpu_seconds()
        load = _run_load(closed_loop(p.url, body, concurrency=mode.concurrency, duration_s=mode.profile_s - 2.0))
        cpu_ms = (p.cpu_seconds() - cpu0) * 1000 / max(1, load.ok)
        spy.wait(timeout=mode.profile_s + 60)
        if not raw.exists():
            out[cell_name(v, sc)] = {"error": f"no py-spy output (proxy exit code {p.proc.poll()})"}
            continue
        prof = profile.analyse(raw)
        name = cell_name(v, sc)
        out[name] = {
            "samples": prof.samples,
            "plugin_share": prof.plugin_share,
            "cpu_ms_per_request": cpu_ms,
            "plugin_us_per_call": prof.plugin_share * cpu_ms * 1000,
            "top_inclusive": prof.inclusive.most_common(15),
            "top_plugin_frames": prof.plugin_leaf_modules.most_common(12),
            "top_leaves": prof.self_time.most_common(12),
            "raw": str(raw),
        }
        log(f"profile {name}: plugin {prof.plugin_share:.1%} of {prof.samples} samples, cpu {cpu_ms:.2f} ms/req")


# -- memory -----------------------------------------------------------------------------------


def local_credits_memory(jobs: int) -> dict[str, Any]:
    """The in-process credit backend's own state after ``jobs`` single-call jobs (open, close)."""
    code = f"""
import asyncio, json, time, tracemalloc, resource
from decimal import Decimal
from litellm_jobs_plugin.credits.local import LocalCredits
from litellm_jobs_plugin.credits.base import OpenJob
from litellm_jobs_plugin.models import JobStatus

async def main():
    lc = LocalCredits(None, None, None)
    lc._account("t").avail = Decimal(10**12)
    tracemalloc.start()
    samples = []
    t0 = time.perf_counter()
    for i in range({jobs}):
        job = f"call-{{i}}"
        await lc.open_job(OpenJob(team_id="t", job_id=job, new_type="default", requested_type=None,
                                  price=Decimal(1), single_call=True))
        await lc.close_job("t", job, JobStatus.COMPLETED)
        if (i + 1) % ({jobs} // 10) == 0:
            cur, peak = tracemalloc.get_traced_memory()
            samples.append({{"jobs": i + 1, "traced_mib": round(cur / 2**20, 1), "jobs_in_memory": len(lc._jobs),
                             "closed_remembered": len(lc._closed),
                             "rss_max_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}})
    print(json.dumps({{"samples": samples, "us_per_job": (time.perf_counter() - t0) / {jobs} * 1e6,
                      "max_closed": lc.max_closed}}))
asyncio.run(main())
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800, cwd=ROOT)
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def stage_memory(procs: dict[str, ProxyProc], mode: Mode, res: dict[str, Any]) -> None:
    out: dict[str, Any] = {"seconds": mode.memory_s}
    res["memory"] = out
    log(f"memory: in-process credit state under {mode.local_jobs} jobs")
    out["local_credits"] = local_credits_memory(mode.local_jobs)
    log(f"memory: {out['local_credits']}")
    sc = Scenario("single_call", False, "none")
    bare_sc = Scenario("untagged", False, "none")
    samples: dict[str, list[tuple[float, int, int]]] = {"plugin": [], "bare": []}
    done = {"plugin": 0, "bare": 0}
    stop_at = time.monotonic() + mode.memory_s

    def drive(name: str, p: ProxyProc, scenario: Scenario) -> None:
        body = scenario.body(None)
        while time.monotonic() < stop_at:
            r = _run_load(closed_loop(p.url, lambda: body, concurrency=4, duration_s=min(10.0, mode.memory_s)))
            done[name] += r.ok

    threads = [
        threading.Thread(target=drive, args=("plugin", procs[PLUGIN.name], sc)),
        threading.Thread(target=drive, args=("bare", procs[BARE.name], bare_sc)),
    ]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    while any(t.is_alive() for t in threads):
        for name, v in (("plugin", PLUGIN), ("bare", BARE)):
            samples[name].append((round(time.monotonic() - t0, 1), done[name], procs[v.name].rss_kib()))
        time.sleep(max(1.0, mode.memory_s / 40))
    for t in threads:
        t.join()
    out["rss"] = samples
    out["calls"] = dict(done)
    log(f"memory: {done} calls; rss plugin {samples['plugin'][0][2]}→{samples['plugin'][-1][2]} KiB")


# -- growth -----------------------------------------------------------------------------------


def stage_growth(
    tmp: Path, upstream: FakeUpstream, procs: dict[str, ProxyProc], mode: Mode, res: dict[str, Any]
) -> None:
    out: dict[str, Any] = {}
    res["growth"] = out
    url = create_database()
    try:
        seed.migrate(url)
        log("growth: seeding")
        out["seed"] = seed.seed(
            url,
            jobs=mode.seed_jobs,
            calls_per_job=mode.seed_calls_per_job,
            teams=mode.seed_teams,
            big_job_calls=mode.seed_big_job_calls,
        )
        log(f"growth: seeded {out['seed']}")
        out["refresh_ms_big_job"] = seed.explain_refresh(url, TEAM, seed.BIG_JOB)
        out["refresh_ms_seed_job"] = seed.explain_refresh(url, "seed-team-1", "seed-job-1")
        seeded_variant = Variant("plugin-seeded", plugin=True)
        p = start_proxy(tmp, upstream, seeded_variant, callgrind=False, database=url)
        try:
            p.wait_ready(timeout=300)
            p.grant()
            out["rss_kib_at_start"] = p.rss_kib()
            cells: dict[str, list[dict[str, Any]]] = {}
            empty = procs[PLUGIN.name]
            for rnd in range(mode.wall_rounds):
                for sc in (Scenario("single_call", False, "none"), Scenario("open_job", False, "open_job")):
                    pairs = [("empty", empty, open_job_id(PLUGIN, rnd, "growth")), ("seeded", p, seed.BIG_JOB)]
                    for label, proxy, job in pairs if rnd % 2 == 0 else pairs[::-1]:
                        r = wall_cell(proxy, sc, mode, job)
                        cells.setdefault(f"{label}/{sc.name}", []).append(r)
                        log(
                            f"growth r{rnd} {label}/{sc.name}: {r['rps']:.1f} req/s cpu {r['cpu_ms']:.2f} ms "
                            f"db {r['db_cpu_ms']:.2f} ms p50 {r['p50']:.1f} ms"
                        )
            out["wall"] = cells
        finally:
            cleanup(p, keep_database=True)
        # instructions on the seeded database (the same windows as the callgrind stage)
        cgp = start_proxy(tmp, upstream, seeded_variant, callgrind=True, database=url)
        try:
            cgp.wait_ready(timeout=900)
            cgp.grant()
            cg: dict[str, list[float]] = {}
            for rnd in range(mode.cg_rounds):
                for sc in (Scenario("single_call", False, "none"), Scenario("open_job", False, "open_job")):
                    callgrind.warm(cgp, sc, requests=mode.cg_warm, job_id=seed.BIG_JOB)
                    w = callgrind.measure(
                        cgp, sc, requests=mode.cg_requests, settle_s=mode.cg_settle_s, job_id=seed.BIG_JOB
                    )
                    cg.setdefault(sc.name, []).append(w.per_request)
                    log(f"growth callgrind r{rnd} seeded/{sc.name}: {w.per_request / 1e6:.2f} M instr/request")
            out["callgrind"] = cg
        finally:
            cleanup(cgp, keep_database=True)
    finally:
        with contextlib.suppress(Exception):
            drop_database(url)


# -- report -----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    def sh(*cmd: str) -> str:
        with contextlib.suppress(Exception):
            return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
        return ""

    lscpu = sh("lscpu")
    keep = ("Architecture", "CPU(s):", "Model name", "Thread(s) per core", "Core(s) per socket", "L2", "L3")
    commit = sh("git", "-C", str(ROOT), "rev-parse", "HEAD")
    dirty = bool(sh("git", "-C", str(ROOT), "status", "--porcelain", "--", "src"))
    return {
        "lscpu": [line for line in lscpu.splitlines() if line.strip().startswith(keep)],
        "kernel": platform.release(),
        "python": platform.python_version(),
        "litellm": sh(sys.executable, "-c", "import importlib.metadata as m; print(m.version('litellm'))"),
        "valgrind": sh("valgrind", "--version"),
        "postgres": sh("psql", "-h", "127.0.0.1", "-U", "postgres", "-tAc", "SHOW server_version"),
        "redis": sh("redis-cli", "-h", "127.0.0.1", "INFO", "server").split("redis_version:")[-1].split()[0:1],
        "commit": commit + (" with uncommitted changes in src/" if dirty else ""),
        "mem_total": sh("sh", "-c", "free -g | awk '/Mem:/ {print $2 \" GiB\"}'"),
    }


# -- the plugin alone ---------------------------------------------------------------------------


def stage_inproc(mode: Mode, res: dict[str, Any]) -> None:
    """The plugin's own CPU per call, without LiteLLM (``bench/inproc.py``), in a process of its own."""
    calls = 400 if mode.cg_requests < 50 else 2000
    out = subprocess.run(
        [sys.executable, "-m", "bench.inproc", "--calls", str(calls)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=3600,
    ).stdout
    res["inproc"] = {"calls": calls, "cells": json.loads(out.strip().splitlines()[-1])}
    log(f"inproc: {res['inproc']['cells']}")


def report(res: dict[str, Any]) -> str:
    lines = [f"# Benchmark run {res['stamp']} ({res['mode']})", "", f"Command: `{res['command']}`", ""]
    m = res["machine"]
    lines += [
        "Machine: " + "; ".join(m["lscpu"]),
        f"Kernel {m['kernel']}, Python {m['python']}, LiteLLM {m['litellm']}, {m['valgrind']}, "
        f"PostgreSQL {m['postgres']}, Redis {''.join(m['redis'])}, RAM {m['mem_total']}",
        f"Commit: {m['commit']}",
        "",
    ]
    cg: dict[str, Any] = res.get("callgrind") or {}
    if res.get("inproc"):
        lines += [
            f"## The plugin alone: CPU per call without LiteLLM (bench/inproc.py, {res['inproc']['calls']} calls)",
            "",
            "| cell / window | user µs/call | system µs/call | wall µs/call | writer batches |",
            "|---|---|---|---|---|",
        ]
        for name, c in res["inproc"]["cells"].items():
            lines.append(
                f"| {name} | {c['user_us']:.0f} | {c['sys_us']:.0f} | {c['wall_us']:.0f} | {c['batches']:.0f} |"
            )
        lines.append("")
    for window, conc in CG_WINDOWS.items():
        rows = callgrind_summary(res, window)
        if not rows:
            continue
        lines += [
            f"## Instructions per request (callgrind, {window}: {cg['requests']} requests per window at a "
            f"concurrency of {conc}, settle {cg['settle_s']} s, {CG_ESTIMATOR[window].__name__} of rounds)",
            "",
            "| cell | M instr/req | spread | plugin/bare | Δ M instr | idle M instr/s | window s | "
            "plugin/bare idle-corrected | Δ M idle-corrected | failed requests |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['cell']} | {r['instr'] / 1e6:.2f} | {r['spread']:.2%} | "
                f"{r.get('ratio', float('nan')):.4f} | {r.get('delta', 0) / 1e6:+.2f} | {r['idle_rate'] / 1e6:.2f} | "
                f"{r['window_s']:.1f} | {r.get('ratio_corrected', float('nan')):.4f} | "
                f"{r.get('delta_corrected', 0) / 1e6:+.2f} | {r['failed']} ({r['windows']} windows kept) |"
            )
        lines.append("")
    if cg and "store_outages" in cg:
        lines += [f"Store watch outages logged under callgrind: `{json.dumps(cg['store_outages'])}`", ""]
    wrows = wall_summary(res)
    if wrows:
        w = res["wall"]
        lines += [
            f"## Wall clock ({w['rounds']} alternating rounds, medians; saturation: closed loop, "
            f"moderate: open loop at the rate given)",
            "",
            "| cell | req/s | ×bare | CPU ms/req | ×bare | added CPU ms/req | DB CPU ms/req | "
            "P50/P95/P99 ms (moderate) | added P50 / P99 ms | P50/P99 ms (saturated) | errors |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in wrows:
            lines.append(
                f"| {r['cell']} | {r['rps']:.1f} | {r.get('rps_ratio', float('nan')):.3f} | {r['cpu_ms']:.2f} | "
                f"{r.get('cpu_ratio', float('nan')):.3f} | {r.get('cpu_added', float('nan')):+.2f} | "
                f"{r['db_cpu_ms']:.2f} | "
                f"{r['p50']:.1f}/{r['p95']:.1f}/{r['p99']:.1f} | "
                f"{r.get('p50_added', float('nan')):+.2f} / {r.get('p99_added', float('nan')):+.2f} | "
                f"{r['sat_p50']:.0f}/{r['sat_p99']:.0f} | {r['errors']} |"
            )
        lines.append("")
        for name, e in (w.get("exited") or {}).items():
            lines += [f"**{name} exited with {e['code']} during the wall stage** (its later cells skipped).", ""]
    prof = res.get("profile")
    if prof:
        lines += ["## Profile (py-spy, plugin proxy under saturation)", ""]
        for name, p in prof.items():
            if "error" in p:
                lines += [f"### {name}: {p['error']}", ""]
                continue
            lines += [
                f"### {name}: plugin {p['plugin_share']:.1%} of {p['samples']} samples × "
                f"{p['cpu_ms_per_request']:.2f} ms CPU/req ≈ {p['plugin_us_per_call']:.0f} µs per call",
                "",
                "Inclusive (plugin frames): "
                + ", ".join(f"`{n}` {c / max(1, p['samples']):.1%}" for n, c in p["top_inclusive"][:10]),
                "",
                "Deepest plugin frame: "
                + ", ".join(f"`{n}` {c / max(1, p['samples']):.1%}" for n, c in p["top_plugin_frames"][:8]),
                "",
            ]
    mem = res.get("memory")
    if mem:
        lines += ["## Memory", "", f"In-process credit state: `{json.dumps(mem.get('local_credits'))}`", ""]
        for name, s in mem.get("rss", {}).items():
            pts = s[:: max(1, len(s) // 8)] + s[-1:]
            points = ", ".join(f"({t}, {c}, {k / 1024:.0f})" for t, c, k in pts)
            lines.append(f"- {name} RSS (s, calls, MiB): {points}")
        lines.append("")
    g = res.get("growth")
    if g:
        lines += ["## Growth (seeded database)", "", f"Seed: `{json.dumps(g.get('seed'))}`", ""]
        lines.append(
            f"Aggregate refresh of one job (EXPLAIN ANALYZE): big job {g.get('refresh_ms_big_job', 0):.2f} ms, "
            f"seeded job {g.get('refresh_ms_seed_job', 0):.2f} ms; "
            f"RSS at start {g.get('rss_kib_at_start', 0) / 1024:.0f} MiB"
        )
        lines.append("")
        for name, runs in (g.get("wall") or {}).items():
            lines.append(
                f"- {name}: {statistics.median(r['rps'] for r in runs):.1f} req/s, "
                f"CPU {statistics.median(r['cpu_ms'] for r in runs):.2f} ms/req, "
                f"DB CPU {statistics.median(r['db_cpu_ms'] for r in runs):.2f} ms/req, "
                f"P50 {statistics.median(r['p50'] for r in runs):.1f} ms"
            )
        for name, xs in (g.get("callgrind") or {}).items():
            lines.append(f"- callgrind seeded/{name}: {statistics.median(xs) / 1e6:.2f} M instr/req ({xs})")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=sorted(MODES))
    ap.add_argument("--stages", default="inproc,callgrind,wall,profile,memory,growth")
    ap.add_argument("--variants", help=f"comma-separated, of {', '.join(VARIANTS)} (default: the mode's)")
    ap.add_argument("--only", help="regex on cell names (variant/scenario/plain|stream), e.g. 'plain$'")
    ap.add_argument("--rounds", type=int, help="callgrind rounds (default: the mode's)")
    args = ap.parse_args()
    mode = MODES[args.mode]
    if args.variants:
        mode = dataclasses.replace(mode, variants=tuple(VARIANTS[n] for n in args.variants.split(",")))
    if args.only:
        mode = dataclasses.replace(mode, only=args.only)
    if args.rounds:
        mode = dataclasses.replace(mode, cg_rounds=args.rounds)
    # SIGTERM unwinds like Ctrl-C: every process started is stopped by its PID in the finally blocks
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    stages = set(args.stages.split(","))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    outdir = ROOT / "bench" / "results" / stamp
    outdir.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {
        "stamp": stamp,
        "mode": args.mode,
        "command": " ".join([".venv/bin/python -m bench.run", *sys.argv[1:]]),
        "settings": dataclasses.asdict(mode),
        "machine": machine(),
    }

    def save() -> None:
        (outdir / "results.json").write_text(json.dumps(res, indent=1, default=str))
        text = report(res)
        (outdir / "report.md").write_text(text)
        (ROOT / "bench" / "results" / "latest.md").write_text(text)

    with tempfile.TemporaryDirectory(prefix="jobs-bench-") as tmp_s:
        tmp = Path(tmp_s)
        with FakeUpstream.run(tmp) as upstream:
            try:
                if "inproc" in stages:
                    stage_inproc(mode, res)
                    save()
                if "callgrind" in stages:
                    stage_callgrind(tmp, upstream, mode, res)
                    save()
                if stages & {"wall", "profile", "memory", "growth"}:
                    with proxies(tmp, upstream, mode.variants, cg=False) as procs:
                        log("native proxies ready")
                        if "wall" in stages:
                            stage_wall(procs, mode, res)
                            save()
                        if "profile" in stages:
                            stage_profile(outdir, procs, mode, res)
                            save()
                        if "growth" in stages:
                            stage_growth(tmp, upstream, procs, mode, res)
                            save()
                        if "memory" in stages:
                            stage_memory(procs, mode, res)
                            save()
            finally:
                save()
    log(f"results: {outdir / 'report.md'}")


if __name__ == "__main__":
    main()
