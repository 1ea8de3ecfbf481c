"""Instructions per request: a proxy under ``valgrind --tool=callgrind --instr-atstart=no``.

For a window of requests: ``callgrind_control -i on PID`` and ``-z`` (zero), N requests (sequential:
the worst case for the writer's batching, one call per batch; or at a concurrency of 8: the batches
amortize over several calls, as in production), a fixed settle time (the writer's batch and any
follow-up of the last call run inside the window),
``callgrind_control -d`` (dump), ``-i off``; the program total is read with ``callgrind_annotate``.
An idle window of the same proxy (no request) gives its background rate in instructions per
second, so per-request work can be told from time-driven work (timers, pollers), which valgrind's
~50x slowdown over-weights.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .load import Scenario, closed_loop
from .procs import ProxyProc

_TOTAL = re.compile(r"^\s*([\d,]+)\s+\(100\.0%\)\s+PROGRAM TOTALS", re.M)


def _ctl(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True, timeout=120)


def program_total(dump: Path) -> int:
    out = subprocess.run(
        ["callgrind_annotate", "--threshold=100", str(dump)], check=True, capture_output=True, text=True, timeout=300
    ).stdout
    m = _TOTAL.search(out)
    if m is None:
        raise RuntimeError(f"no PROGRAM TOTALS in callgrind_annotate {dump}")
    return int(m[1].replace(",", ""))


def _latest_dump(proxy: ProxyProc, before: set[Path]) -> Path:
    for _ in range(200):
        new = sorted(set(proxy.workdir.glob("callgrind.out.*")) - before, key=lambda p: p.stat().st_mtime)
        if new:
            time.sleep(0.2)  # let the dump finish writing
            return new[-1]
        time.sleep(0.1)
    raise RuntimeError(f"no callgrind dump appeared in {proxy.workdir}")


@dataclass
class Window:
    instructions: int
    requests: int
    seconds: float
    ok: int
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def per_request(self) -> float:
        return self.instructions / self.requests if self.requests else float("nan")


def measure(
    proxy: ProxyProc,
    scenario: Scenario | None,
    *,
    requests: int,
    settle_s: float,
    job_id: str | None = None,
    concurrency: int = 1,
) -> Window:
    """One instrumented window: ``requests`` calls, ``concurrency`` at a time (``None``: idle for ``settle_s``)."""
    before = set(proxy.workdir.glob("callgrind.out.*"))
    _ctl("-i", "on", str(proxy.pid))
    _ctl("-z", str(proxy.pid))
    t0 = time.monotonic()
    ok = 0
    statuses: dict[int, int] = {}
    if scenario is not None:
        body = scenario.body(job_id)
        result = asyncio.run(
            closed_loop(proxy.url, lambda: body, concurrency=concurrency, requests=requests, timeout_s=300)
        )
        ok = result.ok
        statuses = dict(result.statuses)
    time.sleep(settle_s)
    seconds = time.monotonic() - t0
    _ctl("-d", str(proxy.pid))
    _ctl("-i", "off", str(proxy.pid))
    dump = _latest_dump(proxy, before)
    proxy.dumps.append(dump)
    return Window(program_total(dump), requests if scenario is not None else 0, seconds, ok, statuses)


def warm(proxy: ProxyProc, scenario: Scenario, *, requests: int, job_id: str | None = None) -> dict[int, int]:
    """Un-instrumented requests before a window; fails only when none succeeds (the statuses are returned)."""
    body = scenario.body(job_id)
    result = asyncio.run(closed_loop(proxy.url, lambda: body, concurrency=1, requests=requests, timeout_s=300))
    if result.ok == 0:
        raise RuntimeError(f"warm-up of {proxy.variant.name}/{scenario.name}: {result.statuses}\n{proxy.log_tail()}")
    return dict(result.statuses)
