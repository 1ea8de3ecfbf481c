"""The plugin's hot path under load, sampled with py-spy (``py-spy record --format raw``).

Each collapsed stack counts once for the plugin when any of its frames is in ``litellm_jobs_plugin``
(inclusive: what the plugin's code and the code it calls cost); self time is the leaf frame.
"""

from __future__ import annotations

import collections
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

PLUGIN_MARK = "litellm_jobs_plugin"
#: Leaf frames of a thread that waits (py-spy may sample them as active): not CPU.
IDLE_LEAVES = ("concurrent/futures/thread.py", "threading.py", "queue.py", "selectors.py")


def py_spy() -> str:
    return str(Path(sys.executable).with_name("py-spy"))


def record(pid: int, out: Path, *, seconds: int, rate: int = 200) -> subprocess.Popen[bytes]:
    """Start sampling ``pid`` for ``seconds`` (returns the py-spy process; wait for it). ``--gil``: only
    the thread holding the GIL is sampled, so samples are Python CPU, not threads waiting."""
    return subprocess.Popen(
        [
            py_spy(),
            "record",
            "--gil",
            "-p",
            str(pid),
            "-d",
            str(seconds),
            "-r",
            str(rate),
            "--format",
            "raw",
            "-o",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


@dataclass
class Profile:
    samples: int = 0
    plugin_samples: int = 0
    inclusive: collections.Counter[str] = field(default_factory=collections.Counter)
    self_time: collections.Counter[str] = field(default_factory=collections.Counter)
    plugin_leaf_modules: collections.Counter[str] = field(default_factory=collections.Counter)

    @property
    def plugin_share(self) -> float:
        return self.plugin_samples / self.samples if self.samples else 0.0


def _frame_name(frame: str) -> str:
    # "function (path/to/file.py:123)" -> "file.py:function"
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    path = path.split(PLUGIN_MARK + "/", 1)[-1] if PLUGIN_MARK in path else "/".join(path.split("/")[-2:])
    return f"{path}:{name}"


def analyse(raw: Path) -> Profile:
    prof = Profile()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = stack.split(";")
        if any(mark in frames[-1] for mark in IDLE_LEAVES):
            continue
        prof.samples += count
        plugin_frames = [f for f in frames if PLUGIN_MARK in f]
        if plugin_frames:
            prof.plugin_samples += count
            seen: set[str] = set()
            for f in plugin_frames:
                name = _frame_name(f)
                if name not in seen:
                    prof.inclusive[name] += count
                    seen.add(name)
            # the deepest plugin frame: where the plugin's time goes (including what it calls)
            leaf = frames[-1]
            prof.self_time[_frame_name(leaf)] += count
            prof.plugin_leaf_modules[_frame_name(plugin_frames[-1])] += count
    return prof
