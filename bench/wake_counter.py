"""The plugin with a counter on every callback its event loop runs (``bench/idle_wakeups.py``).

Loaded by a test proxy instead of ``litellm_jobs_plugin.plugin``: the same plugin object; every
Python frame the event loop enters from C code (a task's coroutine resumed, a callback run) is counted
by its function, and the
counts are written every 5 s to the JSON file named by ``WAKE_COUNTER_FILE``. What an idle proxy
wakes up for, and how often, is then a diff of two dumps.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from litellm_jobs_plugin.hooks import plugin

_OUT = Path(os.environ.get("WAKE_COUNTER_FILE", "wakeups.json"))
_COUNTS: Counter[str] = Counter()
_BASE: list[Any] = [None]


def _profile(frame: Any, event: str, arg: Any) -> None:
    # A coroutine resumed by the event loop (C code, uvloop's too) has as its caller the Python frame
    # that runs the loop: each such call is one wake-up of that coroutine or callback.
    if event == "call" and frame.f_back is _BASE[0]:
        code = frame.f_code
        _COUNTS[f"{code.co_qualname} ({Path(code.co_filename).name}:{code.co_firstlineno})"] += 1


def _install() -> None:
    _BASE[0] = sys._getframe(1)  # the Python frame that runs the loop: the C loop code sits above it
    sys.setprofile(_profile)


try:  # LiteLLM imports callbacks inside its running loop: profile the loop's thread
    asyncio.get_running_loop().call_soon(_install)
except RuntimeError:
    _install()


def _dump_forever() -> None:
    while True:
        time.sleep(5)
        tmp = _OUT.with_suffix(".tmp")
        tmp.write_text(json.dumps({"at": time.time(), "counts": dict(_COUNTS)}))
        tmp.replace(_OUT)


threading.Thread(target=_dump_forever, daemon=True).start()

__all__ = ["plugin"]
