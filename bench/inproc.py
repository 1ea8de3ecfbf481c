"""The plugin's own cost per call, without LiteLLM: its hooks and its writer, in one process.

    .venv/bin/python -m bench.inproc                  # every cell, JSON on stdout
    .venv/bin/python -m bench.inproc --cells open_job --calls 2000

Each call goes through what LiteLLM calls on the plugin for a non-streamed call: the pre-call
hook, the success event, the post-call success hook and the response-headers hook, with a
request body and logging kwargs shaped like LiteLLM 1.106's, on uvloop as in the proxy. The writer
writes to a real PostgreSQL (and Redis for the ``redis`` cells) and is waited for: **sequential**
waits after each call (a batch per call, the worst case), **concurrent** after every 8 calls (8 calls
per batch).

Reported: user and system CPU microseconds per call (``getrusage``). Run under callgrind
(``bench.run --stages inproc``) the same driver gives the plugin's own instructions per call:
the difference between two runs of different lengths, so start-up cancels out.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime
import json
import os
import pstats
import resource
import sys
import time
import uuid
from decimal import Decimal
from typing import Any

import uvloop

from .procs import REDIS_URL, create_database, drop_database, drop_redis_prefix

HEADERS = {
    "host": "127.0.0.1:4000",
    "user-agent": "AsyncOpenAI/Python 1.99.9",
    "content-type": "application/json",
    "authorization": "Bearer sk-team-a",
    "accept": "application/json",
    "accept-encoding": "gzip, deflate",
    "x-stainless-lang": "python",
    "x-stainless-os": "Linux",
    "x-stainless-arch": "x64",
    "x-stainless-runtime": "CPython",
    "x-stainless-package-version": "1.99.9",
    "content-length": "120",
}

#: --profile: print where the measured window's CPU goes (cProfile; the figures then include its overhead).
PROFILE = False

CELLS = ("untagged", "single_call", "open_job", "redis_single_call", "redis_open_job")


def request(job_id: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "user_api_key_hash": "hashed-key",
        "user_api_key_team_id": "team-a",
        "headers": HEADERS,
        "endpoint": "http://127.0.0.1:4000/v1/chat/completions",
    }
    if job_id is not None:
        meta.update({"job_id": job_id, "job_type": "bench"})
    return {
        "model": "ChatAgent",
        "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
        "litellm_call_id": str(uuid.uuid4()),
        "proxy_server_request": {"url": meta["endpoint"], "method": "POST", "headers": HEADERS, "body": {}},
        "metadata": meta,
    }


def logging_kwargs(data: dict[str, Any]) -> dict[str, Any]:
    now = time.time()
    return {
        "litellm_call_id": data["litellm_call_id"],
        "litellm_params": {"metadata": data["metadata"]},
        "model": "gpt-4o-mini",
        "response_cost": 1.5e-05,
        "standard_logging_object": {
            "startTime": now - 0.02,
            "endTime": now,
            "model_id": "deployment-1",
            "model": "gpt-4o-mini",
            "call_type": "acompletion",
            "model_group": "ChatAgent",
            "custom_llm_provider": "openai",
            "prompt_tokens": 12,
            "completion_tokens": 9,
            "cache_hit": None,
            "stream": False,
        },
    }


async def run_cell(cell: str, calls: int, per_batch: int) -> dict[str, float]:
    from litellm.proxy._types import UserAPIKeyAuth

    from litellm_jobs_plugin.hooks import JobsPlugin
    from litellm_jobs_plugin.settings import Settings

    database = create_database()
    redis = cell.startswith("redis_")
    prefix = f"bench-inproc-{uuid.uuid4().hex[:8]}"
    env = {
        "database_url": database,
        "untagged": "allow" if cell == "untagged" else "single_call_job",
        "redis_url": REDIS_URL if redis else None,
        "redis_prefix": prefix,
        "reconcile_interval_s": 0,
    }
    plugin = JobsPlugin(Settings(**env))  # type: ignore[arg-type]
    key = UserAPIKeyAuth(api_key="hashed-key", team_id="team-a", user_id="u1")
    store = await plugin.start()
    credits = await plugin.credits()
    await credits.grant("team-a", Decimal(10**9), kind="grant", idempotency_key="bench")
    job = f"bench-{uuid.uuid4().hex[:6]}" if cell.endswith("open_job") else None
    try:

        async def one() -> None:
            data = request(job)
            await plugin.async_pre_call_hook(key, None, data, "acompletion")
            kwargs = logging_kwargs(data)
            start = end = datetime.datetime.now()
            # LiteLLM answers once post-call hooks have run; the success event is logged meanwhile
            logged = asyncio.ensure_future(plugin.async_log_success_event(kwargs, None, start, end))
            await plugin.async_post_call_success_hook(data, key, object())
            await plugin.async_post_call_response_headers_hook(data, key, object())
            await logged

        # Waiting for the writer: in process, its queue's join(); with Redis, Writer.flush() polls the
        # journal's backlog (two Redis commands every 20 ms), which would count as the plugin's CPU:
        # wait for the writer's own progress report instead (its observer runs after every batch).
        progress = asyncio.Event()
        observer = plugin.writer.observer
        # items the writer writes per call: the record; a single-call job's hold, then its record
        # with the closure's hold and capture
        items = 4 if cell == "redis_single_call" else 1

        def observe(stats: Any, depth: int) -> None:
            if observer is not None:
                observer(stats, depth)
            progress.set()

        plugin.writer.observer = observe

        async def written(target: int) -> None:
            while plugin.writer.stats.written + plugin.writer.stats.duplicates < target:
                progress.clear()
                if plugin.writer.stats.written + plugin.writer.stats.duplicates >= target:
                    break
                await asyncio.wait_for(progress.wait(), timeout=60)

        async def window(n: int) -> None:
            for _ in range(n // per_batch):
                target = plugin.writer.stats.written + plugin.writer.stats.duplicates + per_batch * items
                await asyncio.gather(*(one() for _ in range(per_batch)))
                if redis:
                    await written(target)
                else:
                    await plugin.writer.flush()

        await window(50)  # warm-up: prepared statements, Lua scripts, caches
        profiler = cProfile.Profile(time.process_time) if PROFILE else None
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        await window(calls)
        if profiler is not None:
            profiler.disable()
            # BENCH_PROFILE_SORT (pstats' key, default tottime), BENCH_PROFILE_FILTER (a path's part)
            stats = pstats.Stats(profiler, stream=sys.stderr)
            stats.sort_stats(os.environ.get("BENCH_PROFILE_SORT", "tottime"))
            stats.print_stats(os.environ.get("BENCH_PROFILE_FILTER", ""), 40)
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        if job is not None:
            written = await store.get_job("team-a", job)
            assert written is not None
            assert written.total_calls >= calls, written
        return {
            "user_us": (r1.ru_utime - r0.ru_utime) / calls * 1e6,
            "sys_us": (r1.ru_stime - r0.ru_stime) / calls * 1e6,
            "wall_us": wall / calls * 1e6,
            "batches": float(plugin.writer.stats.batches),
        }
    finally:
        await plugin.aclose()
        drop_database(database)
        if redis:
            drop_redis_prefix(prefix)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", default=",".join(CELLS))
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--per-batch", type=int, default=0, help="one window only: calls per writer batch")
    ap.add_argument("--profile", action="store_true", help="cProfile the measured window (stderr)")
    args = ap.parse_args()
    global PROFILE
    PROFILE = args.profile
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    out: dict[str, Any] = {}
    windows = {"sequential": 1, "concurrent": 8}
    if args.per_batch:
        windows = {f"per_batch_{args.per_batch}": args.per_batch}
    for cell in args.cells.split(","):
        for name, per in windows.items():
            out[f"{cell}/{name}"] = uvloop.run(run_cell(cell, args.calls, per))
            print(f"{cell}/{name}: {json.dumps(out[f'{cell}/{name}'])}", file=sys.stderr, flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
