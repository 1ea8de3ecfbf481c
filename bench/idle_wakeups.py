"""What an idle plugin proxy wakes up for, and how often (``bench/wake_counter.py`` inside the proxy).

Idle work costs instructions on every request's window under callgrind and CPU on every replica, so
it is worth seeing by name::

    .venv/bin/python -m bench.idle_wakeups                     # plugin, then plugin-redis, 60 s each
    .venv/bin/python -m bench.idle_wakeups --variants plugin-redis --seconds 120

Prints each coroutine or callback the event loop resumed, per second, busiest first.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tests.support.services import FakeUpstream, wait_for

from bench.procs import Variant, cleanup, start_proxy

VARIANTS = {
    "plugin": Variant("plugin", plugin=True, wrap="wake_counter"),
    "plugin-redis": Variant("plugin-redis", plugin=True, redis=True, wrap="wake_counter"),
}


def counts(path: Path) -> dict[str, float]:
    doc = json.loads(path.read_text())
    return {"at": doc["at"], **doc["counts"]}


def measure(variant: Variant, seconds: float) -> dict[str, float]:
    """Wake-ups per second of an idle proxy of ``variant``, over ``seconds`` after a 15 s settle."""
    tmp = Path("/tmp") / f"jobs-idle-{time.strftime('%Y%m%d-%H%M%S')}-{variant.name}"
    tmp.mkdir()
    with FakeUpstream.run(tmp) as upstream:
        proxy = start_proxy(tmp, upstream, variant, callgrind=False)
        try:
            proxy.wait_ready(120)
            dump = proxy.workdir / "wakeups.json"
            wait_for(dump.exists, timeout=30, what="the wake counter's first dump")
            time.sleep(15)  # start-up work (migrations, first loads) settles; this is not a synchronisation
            first = counts(dump)
            time.sleep(seconds)
            last = counts(dump)
        finally:
            cleanup(proxy)
    span = last["at"] - first["at"]
    return {k: (v - first.get(k, 0)) / span for k, v in last.items() if k != "at" and v > first.get(k, 0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="plugin,plugin-redis")
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()
    for name in args.variants.split(","):
        rates = measure(VARIANTS[name], args.seconds)
        print(f"## {name}: wake-ups per second, idle ({sum(rates.values()):.1f} in all)")
        for what, rate in sorted(rates.items(), key=lambda kv: -kv[1]):
            print(f"{rate:8.2f}  {what}")


if __name__ == "__main__":
    main()
