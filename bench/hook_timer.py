"""The plugin with a stopwatch on the two hooks a non-streamed answer waits for (``bench/hook_latency.py``).

Loaded by a test proxy instead of ``litellm_jobs_plugin.plugin``: the same plugin object, its pre-call
hook (admission) and post-call success hook (the answer's record) wrapped to time each call, wall
clock, in the proxy's own event loop. Every 10th call of each hook writes all durations so far, in
milliseconds, to the JSON file named by ``HOOK_TIMER_FILE``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from litellm_jobs_plugin.hooks import plugin

_OUT = Path(os.environ.get("HOOK_TIMER_FILE", "hook_times.json"))
_TIMES: dict[str, list[float]] = {"pre_call": [], "post_call": []}


def _dump() -> None:
    tmp = _OUT.with_suffix(".tmp")
    tmp.write_text(json.dumps(_TIMES))
    tmp.replace(_OUT)


def _timed(name: str, hook: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await hook(*args, **kwargs)
        finally:
            times = _TIMES[name]
            times.append((time.perf_counter() - started) * 1000)
            if len(times) % 10 == 0:
                _dump()

    return timed


# instance attributes: LiteLLM calls the hooks through the instance, so these run in their place
plugin.async_pre_call_hook = _timed("pre_call", plugin.async_pre_call_hook)  # type: ignore[method-assign,assignment]
plugin.async_post_call_success_hook = _timed("post_call", plugin.async_post_call_success_hook)  # type: ignore[method-assign,assignment]

__all__ = ["plugin"]
