"""The latency the plugin adds to a non-streamed answer, timed where it is spent: in its hooks.

The wall-clock stage of ``bench/run.py`` compares end-to-end percentiles of the plugin and bare
proxies; on a shared machine the bare proxy's own P50 moves by more than the plugin's share between
rounds. This script times the two hooks an answer waits for — admission (pre-call) and the answer's
record (post-call) — inside the proxy (``bench/hook_timer.py``), at the same moderate open-loop rate,
next to the end-to-end percentiles of the plugin proxy and the bare proxy in alternating rounds::

    .venv/bin/python -m bench.hook_latency                    # plugin and plugin-redis, 2 rounds of 20 s at 30/s
    .venv/bin/python -m bench.hook_latency --variants plugin-redis --rounds 3 --seconds 30

Calls of one open job (the hold taken once), then single-call jobs (a hold and a closure per call).
Results: ``bench/results/<stamp>/hooks.md`` and ``hooks.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from tests.support.services import FakeUpstream, wait_for

from bench.load import LoadResult, Scenario, closed_loop, open_loop
from bench.procs import ROOT, ProxyProc, Variant, cleanup, start_proxy

VARIANTS = {
    "plugin": Variant("plugin", plugin=True, wrap="hook_timer"),
    "plugin-redis": Variant("plugin-redis", plugin=True, redis=True, wrap="hook_timer"),
}
BARE = Variant("bare", plugin=False)
SCENARIOS = (Scenario("open_job", False, "open_job"), Scenario("single_call", False, "none"))
WARM = 50  # calls before each window (a multiple of 10: the timer writes every 10th call)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def pct(xs: list[float], p: float) -> float:
    ys = sorted(xs)
    return ys[min(len(ys) - 1, max(0, round(p / 100 * len(ys)) - 1))] if ys else float("nan")


def timed_calls(path: Path, n: int) -> dict[str, list[float]] | None:
    """The timer's file once it holds ``n`` calls of each hook."""
    try:
        times: dict[str, list[float]] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return times if all(len(v) >= n for v in times.values()) else None


def window(p: ProxyProc, sc: Scenario, job: str, rate: float, seconds: float) -> LoadResult:
    body = sc.body(job)
    asyncio.run(closed_loop(p.url, lambda: body, concurrency=1, requests=WARM))
    result: LoadResult = asyncio.run(open_loop(p.url, lambda: body, rate=rate, duration_s=seconds))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="plugin,plugin-redis")
    ap.add_argument("--rate", type=float, default=30.0, help="requests per second (open loop)")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of a window")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    n = int(args.rate * args.seconds)
    assert n % 10 == 0, "rate x seconds must be a multiple of 10"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    outdir = ROOT / "bench" / "results" / stamp
    outdir.mkdir(parents=True)
    tmp = Path("/tmp") / f"jobs-hooks-{stamp}"
    tmp.mkdir()
    rows: list[dict[str, Any]] = []
    with FakeUpstream.run(tmp) as upstream:
        bare = start_proxy(tmp, upstream, BARE, callgrind=False)
        try:
            bare.wait_ready(180)
            for name in args.variants.split(","):
                timer_file = tmp / f"{name}-hooks.json"
                variant = dataclasses.replace(VARIANTS[name], extra_env=(("HOOK_TIMER_FILE", str(timer_file)),))
                proxy = start_proxy(tmp, upstream, variant, callgrind=False)
                try:
                    proxy.wait_ready(180)
                    proxy.grant()
                    for sc in SCENARIOS:
                        row: dict[str, Any] = {"variant": name, "scenario": sc.name, "rounds": []}
                        for rnd in range(args.rounds):
                            pair = [(bare, "bare"), (proxy, name)]
                            measured: dict[str, Any] = {}
                            for p, who in pair if rnd % 2 == 0 else pair[::-1]:
                                done = len((timed_calls(timer_file, 0) or {}).get("post_call", []))
                                job = f"hooks-{sc.name}-{rnd}"
                                r = window(
                                    p,
                                    sc if p is proxy else Scenario("bare", False, sc.tag),
                                    job,
                                    args.rate,
                                    args.seconds,
                                )
                                measured[who] = {"p50": r.pct(50), "p99": r.pct(99), "errors": r.errors}
                                if p is proxy:
                                    expected = done + WARM + n
                                    times = wait_for(
                                        lambda: timed_calls(timer_file, expected),  # noqa: B023 (awaited here)
                                        timeout=60,
                                        what="the hook timer's file",
                                    )
                                    for hook, xs in times.items():
                                        window_xs = xs[done + WARM : done + WARM + n]
                                        measured[hook] = {str(q): pct(window_xs, q) for q in (50, 90, 99)}
                            log(f"{name}/{sc.name} r{rnd}: {json.dumps(measured)}")
                            row["rounds"].append(measured)
                        rows.append(row)
                finally:
                    cleanup(proxy)
        finally:
            cleanup(bare)

    def med(row: dict[str, Any], *path: str) -> float:
        vals = []
        for r in row["rounds"]:
            v: Any = r
            for key in path:
                v = v[key]
            vals.append(float(v))
        return statistics.median(vals)

    lines = [
        f"# Hook latency {stamp}",
        "",
        f"Command: `{' '.join(['.venv/bin/python -m bench.hook_latency', *sys.argv[1:]])}`; open loop at "
        f"{args.rate:g}/s, windows of {args.seconds:g} s, {args.rounds} rounds (medians of rounds).",
        "",
        "| cell | pre-call P50/P90/P99 ms | post-call P50/P90/P99 ms | hooks P50 sum ms | "
        "end to end P50/P99 ms | bare P50/P99 ms | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        name = row["variant"]
        pre = "/".join(f"{med(row, 'pre_call', q):.2f}" for q in ("50", "90", "99"))
        post = "/".join(f"{med(row, 'post_call', q):.2f}" for q in ("50", "90", "99"))
        added = med(row, "pre_call", "50") + med(row, "post_call", "50")
        e2e = f"{med(row, name, 'p50'):.1f}/{med(row, name, 'p99'):.1f}"
        bare_e2e = f"{med(row, 'bare', 'p50'):.1f}/{med(row, 'bare', 'p99'):.1f}"
        errors = sum(r[name]["errors"] + r["bare"]["errors"] for r in row["rounds"])
        lines.append(f"| {name}/{row['scenario']} | {pre} | {post} | {added:.2f} | {e2e} | {bare_e2e} | {errors} |")
    (outdir / "hooks.json").write_text(json.dumps(rows, indent=1, default=str))
    (outdir / "hooks.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    log(f"results: {outdir / 'hooks.md'}")


if __name__ == "__main__":
    main()
