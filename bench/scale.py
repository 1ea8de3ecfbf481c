"""The scale proof: two replicas × two workers sharing Redis and PostgreSQL, a kill -9 and a Redis restart.

    .venv/bin/python -m bench.scale --minutes 10 --redis standalone   # one redis-server (AOF), restarted at 2/3
    .venv/bin/python -m bench.scale --minutes 10 --redis cluster      # three masters, one of them restarted
    .venv/bin/python -m bench.scale --minutes 10 --bare               # two bare proxies × two workers, same load
    .venv/bin/python -m bench.scale --minutes 1 --redis standalone    # the smoke run
    .venv/bin/python -m bench.scale --minutes 0 --saturation-s 60     # only the alternating saturation rounds

Each replica is ``litellm --config <cfg> --num_workers 2`` (uvicorn's supervisor: a worker that dies is
started again). The load (``bench/load.py``'s ``MixedLoad``) is an open loop at a fixed rate of chat
calls spread over both replicas: calls of open jobs (created and completed through the plugin's routes,
their calls alternating between the replicas, one of them streamed), single-call jobs (untagged calls)
and streams, from five teams, two of them with small grants (their 402s are expected). At 1/3 of the
load one uvicorn worker of replica r1 gets SIGKILL; at 2/3 the Redis server is restarted (SIGTERM, then
started again on the same port and data folder: the AOF keeps the journal). A sample of the answered
calls and created jobs is read back through the other replica (read-your-writes visibility). Then a
closed-loop saturation phase alternates the plugin pair with a bare pair, the writers are drained
(``/api/jobs/health``), the replicas stopped with SIGTERM, and PostgreSQL is checked: every answered
call has one record, captures never exceed grants, ``litellm-jobs reconcile`` finds no drift. A bare
pair (``--bare``) gets the same load and the same kill -9 (there is no Redis to restart).

Output: ``bench/results/<stamp>/scale.json``, ``scale.md``, and ``requests.jsonl.gz`` (every request,
every read-back; not committed). Every process is started in its own session and stopped by its PID;
the databases are ``jobs_scale_*`` (created and dropped here), Redis is our own redis-server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gzip
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import httpx
import psycopg
import redis
import yaml  # type: ignore[import-untyped]
from tests.support.redis_cluster import cluster_ports
from tests.support.services import SUPPORT, FakeUpstream, clean_env, free_port, proxy_config, stop_process, wait_for

from .load import Mix, MixedLoad, MixedRecorder, Probe, Sent, Target
from .procs import ADMIN_DB, MASTER_KEY, ROOT, database_url

#: The teams of tests/support/test_auth.py; the grant of each is a share of the jobs it will open
#: (None: plenty). team-c runs out about halfway, team-d almost at once.
TEAMS: tuple[tuple[str, str, float | None], ...] = (
    ("sk-team-a", "team-a", None),
    ("sk-team-b", "team-b", None),
    ("sk-team-c", "team-c", 0.4),
    ("sk-team-d", "team-d", 0.05),
    ("sk-team-e", "team-e", None),
)
PLENTY = Decimal(1_000_000)
REDIS_PREFIX = "scale"
DB_PREFIX = "jobs_scale"
#: LiteLLM's --timeout_worker_healthcheck for the replicas (see start_replica).
HEALTHCHECK_S = 60
SCHEMA = "litellm_jobs"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- processes --------------------------------------------------------------------------------------


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command name (field 3 of proc(5) is index 0)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_of(pid: int) -> float:
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def session_pids(sid: int) -> list[int]:
    """Every live process of the session ``sid`` (a process we started with start_new_session)."""
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = _stat(int(entry.name))
                if int(fields[3]) == sid and fields[0] != "Z":
                    out.append(int(entry.name))
    return out


def established_by_pid(port: int, pids: list[int]) -> dict[int, int]:
    """How many ESTABLISHED connections on local ``port`` each process holds (by socket inode)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "01":
                    inodes.add(cols[9])
    out: dict[int, int] = {}
    for pid in pids:
        n = 0
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(fd.path)
                    if link.startswith("socket:[") and link[8:-1] in inodes:
                        n += 1
        out[pid] = n
    return out


@dataclass
class Replica:
    """``litellm --config config.yaml --num_workers N`` in a session of its own."""

    name: str
    plugin: bool
    proc: subprocess.Popen[bytes]
    port: int
    workdir: Path
    log_path: Path
    workers: int
    #: every worker pid seen (by the sampler): more than ``workers`` means workers were replaced
    seen_workers: set[int] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tracked_pids(self) -> list[int]:
        """The session's processes, noting its workers (the sampler calls this every 2 s)."""
        self.seen_workers.update(self.worker_pids())
        return self.pids()

    def target(self) -> Target:
        return Target(self.name, self.url)

    def pids(self) -> list[int]:
        return session_pids(self.proc.pid)

    def worker_pids(self) -> list[int]:
        """uvicorn's workers: the session's processes started by multiprocessing's spawn."""
        out = []
        for pid in self.pids():
            with contextlib.suppress(OSError):
                if pid != self.proc.pid and b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    out.append(pid)
        return sorted(out)

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def health(self) -> tuple[int, dict[str, Any]]:
        path = "/api/jobs/health" if self.plugin else "/health/liveliness"
        r = httpx.get(self.url + path, timeout=10)
        body = r.json() if self.plugin else {}
        return r.status_code, body

    def serving_workers(self) -> dict[int, int]:
        """Each worker's established connections after a burst of concurrent keep-alive requests: a
        worker still starting accepts none."""

        async def burst() -> dict[int, int]:
            limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
            async with httpx.AsyncClient(limits=limits, timeout=10) as client:
                await asyncio.gather(
                    *(client.get(self.url + "/health/liveliness") for _ in range(16)), return_exceptions=True
                )
                return established_by_pid(self.port, self.worker_pids())  # while the connections are open

        return asyncio.run(burst())

    def wait_ready(self, timeout: float) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.health()[0] != 200:
                return False
            seen = self.serving_workers()
            return len(seen) == self.workers and all(n > 0 for n in seen.values())

        try:
            wait_for(ready, timeout=timeout, interval=0.5, what=f"both workers of {self.name} to serve")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n--- {self.name} log ---\n{self.log_tail()}") from exc

    def stop(self, timeout: float = 90.0) -> int:
        return stop_process(self.proc, timeout=timeout)


def start_replica(
    tmp: Path, upstream: FakeUpstream, name: str, *, plugin: bool, env: dict[str, str], workers: int
) -> Replica:
    workdir = tmp / f"{name}-{uuid.uuid4().hex[:6]}"
    workdir.mkdir(parents=True)
    shutil.copy(SUPPORT / "test_auth.py", workdir / "test_auth.py")
    config = proxy_config(upstream)
    if not plugin:
        config["litellm_settings"] = {**config["litellm_settings"], "callbacks": []}
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    full_env = clean_env()
    full_env["LITELLM_LOG"] = "ERROR"
    full_env["PYTHONFAULTHANDLER"] = "1"
    full_env.update(env)
    litellm_bin = str(Path(sys.executable).with_name("litellm"))
    cmd = [sys.executable, litellm_bin, "--config", "config.yaml", "--host", "127.0.0.1", "--port", str(port)]
    # uvicorn's supervisor pings each worker every 0.5 s and kills one that does not answer in
    # --timeout_worker_healthcheck (5 s by default): on a busy 2-core machine a worker importing LiteLLM
    # missed it again and again (three workers killed before one served, a bare proxy as well).
    cmd += ["--num_workers", str(workers), "--timeout_worker_healthcheck", str(HEALTHCHECK_S)]
    log_path = workdir / "proxy.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=workdir, env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Replica(name, plugin, proc, port, workdir, log_path, workers)


class OwnRedis:
    """Our redis-server with the production settings the docs ask for (AOF, ``appendfsync everysec``),
    restartable on the same port and data folder."""

    kind = "standalone"

    def __init__(self, home: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("no redis-server binary")
        self.binary = binary
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def args(self) -> list[str]:
        return [
            *("--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.home), "--save", ""),
            *("--appendonly", "yes", "--appendfsync", "everysec", "--maxmemory-policy", "noeviction"),
        ]

    def start(self) -> None:
        log = (self.home / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [self.binary, *self.args()], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        wait_for(lambda: redis.Redis(port=self.port).ping(), timeout=60, what=f"redis-server on {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=30)
            self.proc = None

    def restart(self) -> dict[str, Any]:
        """SIGTERM (Redis writes its AOF and exits), then the same server again; the timings."""
        t0 = time.monotonic()
        self.stop()
        t1 = time.monotonic()
        self.start()
        return {"server": f"redis-server :{self.port}", "stop_s": t1 - t0, "down_s": time.monotonic() - t1}

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc is not None and self.proc.poll() is None else []

    def close(self) -> None:
        self.stop()


class OwnCluster:
    """Three masters on loopback (as tests/support/redis_cluster.py), with AOF; one master restartable."""

    kind = "cluster"

    def __init__(self, home: Path) -> None:
        server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if server is None or cli is None:
            raise RuntimeError("no redis-server or redis-cli binary")
        self.binary = server
        self.home = home
        self.ports = cluster_ports(3)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        for port in self.ports:
            self.start_node(port)
        nodes = [f"127.0.0.1:{p}" for p in self.ports]
        subprocess.run(
            [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_for(self.ok, timeout=60, what="the cluster to be ok")

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def start_node(self, port: int) -> None:
        home = self.home / str(port)
        home.mkdir(parents=True, exist_ok=True)
        args = ["--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes"]
        args += ["--cluster-config-file", str(home / "nodes.conf"), "--dir", str(home), "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "everysec", "--maxmemory-policy", "noeviction"]
        log = (home / "redis.log").open("ab")
        self.procs[port] = subprocess.Popen(
            [self.binary, *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        wait_for(lambda: redis.Redis(port=port).ping(), timeout=60, what=f"redis-server on {port}")

    def ok(self) -> bool:
        return all(redis.Redis(port=p).cluster("info").get("cluster_state") == "ok" for p in self.ports)

    def restart(self) -> dict[str, Any]:
        """Restart the first master (SIGTERM: its AOF is written; then the same node, same nodes.conf)."""
        port = self.ports[0]
        slots = [
            (int(r[0]), int(r[1]))
            for r in redis.Redis(port=port).execute_command("CLUSTER SLOTS")  # type: ignore[no-untyped-call]
            if int(r[2][1]) == port
        ]
        t0 = time.monotonic()
        stop_process(self.procs.pop(port), timeout=30)
        t1 = time.monotonic()
        self.start_node(port)
        wait_for(self.ok, timeout=120, what="the cluster to be ok again")
        return {
            "server": f"cluster master :{port} (1 of 3; slots {slots})",
            "stop_s": t1 - t0,
            "down_s": time.monotonic() - t1,
        }

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs.values() if p.poll() is None]

    def close(self) -> None:
        for proc in self.procs.values():
            stop_process(proc, timeout=30)
        self.procs = {}


def create_database() -> str:
    name = f"{DB_PREFIX}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_DB, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return database_url(name)


def drop_database(url: str) -> None:
    name = str(psycopg.conninfo.conninfo_to_dict(url)["dbname"])
    if not name.startswith(DB_PREFIX + "_"):
        raise ValueError(f"refusing to drop {name}: not a scale-proof database")
    with psycopg.connect(ADMIN_DB, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- CPU and machine load, sampled in a thread -------------------------------------------------------


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy since boot (every core; /proc/stat)."""
    values = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class Sampler(threading.Thread):
    """Every ``interval`` s: load average, machine CPU, and each group's CPU (the sum over every process
    ever seen in it, at its last reading: a killed worker keeps what it had used)."""

    def __init__(self, groups: dict[str, Callable[[], list[int]]], interval: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.groups = groups
        self.interval = interval
        self.last: dict[str, dict[int, float]] = defaultdict(dict)
        self.samples: list[dict[str, Any]] = []
        self.halt = threading.Event()
        self.lock = threading.Lock()
        self.epoch = time.monotonic()

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            for name, pids_of in list(self.groups.items()):
                with contextlib.suppress(Exception):
                    for pid in pids_of():
                        with contextlib.suppress(OSError, IndexError, ValueError):
                            self.last[name][pid] = cpu_of(pid)
            snap = {
                "t": time.monotonic() - self.epoch,
                "load": os.getloadavg(),
                "machine_busy_s": machine_busy_s(),
                "driver_cpu_s": sum(os.times()[:2]),
                "cpu": {name: sum(by_pid.values()) for name, by_pid in self.last.items()},
            }
            self.samples.append(snap)
            return snap

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            self.snapshot()


def pg_backends(url: str) -> Callable[[], list[int]]:
    name = str(psycopg.conninfo.conninfo_to_dict(url)["dbname"])

    def pids() -> list[int]:
        with psycopg.connect(ADMIN_DB, autocommit=True) as conn:
            return [int(r[0]) for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (name,))]

    return pids


def cpu_between(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    dt = b["t"] - a["t"]
    return {
        "seconds": dt,
        "machine_busy_cores": (b["machine_busy_s"] - a["machine_busy_s"]) / dt if dt else 0.0,
        "driver_cores": (b["driver_cpu_s"] - a["driver_cpu_s"]) / dt if dt else 0.0,
        "cpu_s": {k: b["cpu"].get(k, 0.0) - a["cpu"].get(k, 0.0) for k in b["cpu"]},
        "load_at_end": b["load"],
    }


# -- the run --------------------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    pair: str  # plugin | bare
    kind: str  # open | closed
    t0: float
    t1: float
    cpu: dict[str, Any] = field(default_factory=dict)
    upstream_requests: int = 0


@dataclass
class Run:
    args: argparse.Namespace
    outdir: Path
    rec: MixedRecorder = field(default_factory=MixedRecorder)
    phases: list[Phase] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    res: dict[str, Any] = field(default_factory=dict)

    def event(self, what: str, **details: Any) -> None:
        entry = {"t": round(self.rec.now(), 3), "what": what, **details}
        self.events.append(entry)
        log(f"event t={entry['t']:.1f}s: {what} {json.dumps(details, default=str)}")


def grants_for(args: argparse.Namespace) -> dict[str, Decimal]:
    """Each team's grant: plenty, or a share of the jobs the load opens for it."""
    jobs = args.rate * args.minutes * 60 * (0.5 + 0.5 / 4) / len(TEAMS)
    return {team: PLENTY if share is None else Decimal(max(5, round(jobs * share))) for _, team, share in TEAMS}


def grant(replica: Replica, team: str, amount: Decimal) -> None:
    r = httpx.post(
        f"{replica.url}/api/teams/{team}/credits",
        headers={"Authorization": f"Bearer {MASTER_KEY}"},
        json={"amount": str(amount), "idempotency_key": f"scale-grant-{team}-{uuid.uuid4().hex}"},
        timeout=60,
    )
    r.raise_for_status()


def upstream_total(upstream: FakeUpstream) -> int:
    return int(upstream.stats().get("_total", 0))


@contextlib.contextmanager
def pair(
    tmp: Path, upstream: FakeUpstream, *, plugin: bool, env: dict[str, str], workers: int, names: tuple[str, str]
) -> Iterator[list[Replica]]:
    replicas: list[Replica] = []
    try:
        for name in names:
            replicas.append(start_replica(tmp, upstream, name, plugin=plugin, env=env, workers=workers))
        for r in replicas:
            r.wait_ready(timeout=300)
        yield replicas
    finally:
        for r in replicas:
            r.stop()


def kill_a_worker(run: Run, replica: Replica) -> None:
    """SIGKILL the busiest uvicorn worker of ``replica``; then wait for the supervisor's new one to serve."""
    workers = replica.worker_pids()
    conns = established_by_pid(replica.port, workers)
    victim = max(workers, key=lambda p: conns.get(p, 0))
    os.kill(victim, signal.SIGKILL)
    run.event("kill -9", replica=replica.name, pid=victim, workers_before=workers, connections=conns)

    def replaced() -> list[int]:
        return [p for p in replica.worker_pids() if p not in workers]

    def new_one_serves(new: int) -> bool:
        # a burst of new connections: the clients' keep-alive pools would stay on the old worker
        return replica.serving_workers().get(new, 0) > 0

    try:
        new = wait_for(replaced, timeout=120, interval=0.1, what="a new worker")
        run.event("new worker started", replica=replica.name, pid=new[0])
        wait_for(lambda: new_one_serves(new[0]), timeout=180, interval=0.5, what="the new worker to serve")
        run.event("new worker serving", replica=replica.name, pid=new[0])
    except TimeoutError as exc:
        run.event("worker not replaced", replica=replica.name, error=str(exc))


def restart_redis(run: Run, server: OwnRedis | OwnCluster) -> None:
    run.event("redis restart begins", kind=server.kind)
    timings = server.restart()
    run.event("redis back", **timings)


async def load_phase(
    run: Run, targets: tuple[Target, ...], mix: Mix, faults: dict[float, Callable[[], None]], clock: PhaseClock
) -> None:
    """The open loop, with the faults fired at their times (in threads: the loop goes on meanwhile);
    the phase ends with the open loop (a fault still being waited for is not part of it)."""
    duration = run.args.minutes * 60

    async def fire(at: float, fault: Callable[[], None], t0: float) -> None:
        await asyncio.sleep(max(0.0, t0 + at - run.rec.now()))  # the fault's time in the schedule
        await asyncio.to_thread(fault)

    async with MixedLoad(targets, mix, run.rec, max_in_flight=run.args.max_in_flight) as load:
        t0 = run.rec.now()
        fault_tasks = [asyncio.create_task(fire(at * duration, f, t0)) for at, f in faults.items()]
        await load.open_loop("load", rate=run.args.rate, duration_s=duration)
        clock.end()
        await asyncio.gather(*fault_tasks)


async def closed_phase(run: Run, name: str, targets: tuple[Target, ...], mix: Mix) -> None:
    async with MixedLoad(targets, mix, run.rec, max_in_flight=10_000) as load:
        await load.closed_loop(name, concurrency=run.args.concurrency, duration_s=run.args.saturation_s)


class PhaseClock:
    """A phase's start and end: times, CPU and the upstream's request count at each."""

    def __init__(self, run: Run, sampler: Sampler, upstream: FakeUpstream) -> None:
        self.run, self.sampler, self.upstream = run, sampler, upstream
        self.start = (run.rec.now(), sampler.snapshot(), upstream_total(upstream))
        self.stop: tuple[float, dict[str, Any], int] | None = None

    def end(self) -> None:
        if self.stop is None:
            self.stop = (self.run.rec.now(), self.sampler.snapshot(), upstream_total(self.upstream))


@contextlib.contextmanager
def measured(
    run: Run, sampler: Sampler, upstream: FakeUpstream, name: str, pair_name: str, kind: str
) -> Iterator[PhaseClock]:
    """Record a phase's times, CPU and upstream requests (until ``clock.end()``, or its end)."""
    clock = PhaseClock(run, sampler, upstream)
    try:
        yield clock
    finally:
        clock.end()
        assert clock.stop is not None
        (t0, a, u0), (t1, b, u1) = clock.start, clock.stop
        phase = Phase(name, pair_name, kind, t0, t1, cpu_between(a, b))
        phase.upstream_requests = u1 - u0
        run.phases.append(phase)
        log(f"phase {name}: {t1 - t0:.0f} s, load average {b['load'][0]:.2f}")


def wait_drained(run: Run, replicas: list[Replica], timeout: float = 180.0) -> dict[str, Any]:
    """Until every replica answers, six times running (both workers), journal backlog 0 and buffer 0."""
    last: dict[str, Any] = {}

    def drained() -> bool:
        for r in replicas:
            for _ in range(6):
                status, body = r.health()
                writer = body.get("writer") or {}
                journal = writer.get("journal") or {}
                last[r.name] = {"status": status, "writer": writer}
                if status != 200 or writer.get("buffer_depth") != 0 or journal.get("backlog", 0) != 0:
                    return False
        return True

    t0 = time.monotonic()
    try:
        wait_for(drained, timeout=timeout, interval=0.5, what="the writers to drain")
        run.event("drained", seconds=round(time.monotonic() - t0, 2))
        return {"drained": True, "seconds": time.monotonic() - t0, "health": last}
    except TimeoutError:
        run.event("not drained", health=last)
        return {"drained": False, "seconds": time.monotonic() - t0, "health": last}


# -- checks against PostgreSQL --------------------------------------------------------------------------


def query(url: str, sql: str, *params: Any) -> list[dict[str, Any]]:
    with psycopg.connect(url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        return list(conn.execute(sql, params))


def verify(run: Run, db: str, replicas: list[Replica]) -> dict[str, Any]:
    """Every answered call has exactly one record; captures ≤ grants; one capture per job; reconcile."""
    sent = [s for s in run.rec.sent if s.phase == "load" or s.phase.startswith("sat-plugin")]
    calls = [s for s in sent if s.kind in ("call", "stream")]
    answered = [s for s in calls if s.answered]
    ids = [s.record_id for s in answered if s.record_id]
    out: dict[str, Any] = {"answered_calls": len(answered), "answered_without_record_id": len(answered) - len(ids)}
    dup_ids = [i for i, n in Counter(ids).items() if n > 1]
    out["record_ids_answered_twice"] = dup_ids[:20]
    rows = query(
        db, f"SELECT team_id, call_id, job_id, status, stream FROM {SCHEMA}.calls WHERE call_id = ANY(%s)", ids
    )
    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_id[row["call_id"]].append(row)
    missing = [s for s in answered if s.record_id and s.record_id not in by_id]
    twice = [i for i, rs in by_id.items() if len(rs) > 1]
    wrong = [
        s.record_id
        for s in answered
        if s.record_id in by_id
        and any(
            r["team_id"] != s.team or r["status"] != "success" or (s.job_id and r["job_id"] != s.job_id)
            for r in by_id[s.record_id]
        )
    ]
    events = query(
        db,
        f"SELECT call_id, count(*) AS n FROM {SCHEMA}.call_events WHERE call_id = ANY(%s) AND status = 'success' "
        "GROUP BY 1 HAVING count(*) <> 1",
        ids,
    )
    kill_times = [e["t"] for e in run.events if e["what"] == "kill -9"]
    out["records"] = {
        "answered_with_a_record": len(answered) - len(missing),
        "missing": len(missing),
        "missing_detail": [
            {
                "record_id": s.record_id,
                "kind": s.kind,
                "scenario": s.scenario,
                "replica": s.replica,
                "team": s.team,
                "t_end": round(s.t_end, 3),
                "phase": s.phase,
                "s_before_kill": [round(k - s.t_end, 3) for k in kill_times],
            }
            for s in missing[:50]
        ],
        "missing_by_kind": dict(Counter(s.kind for s in missing)),
        "ids_with_more_than_one_row": twice[:20],
        "rows_with_wrong_team_job_or_status": wrong[:20],
        "ids_without_exactly_one_success_event": [dict(e) for e in events[:20]],
    }
    teams = [t for _, t, _ in TEAMS]
    answered_set = set(ids)
    other_rows = query(
        db,
        f"SELECT call_id, team_id, job_id, status, stream FROM {SCHEMA}.calls WHERE team_id = ANY(%s) "
        "AND NOT (call_id = ANY(%s))",
        teams,
        list(answered_set),
    )
    not_answered = {s.record_id: s for s in calls if s.record_id and not s.answered}
    out["records"]["rows_without_an_answered_call"] = len(other_rows)
    out["records"]["rows_without_an_answered_call_by_client_outcome"] = dict(
        Counter(
            f"{not_answered[r['call_id']].status}:{not_answered[r['call_id']].error}"
            if r["call_id"] in not_answered
            else "no response seen (reset or a bare phase)"
            for r in other_rows
        )
    )
    out["records"]["rows_total"] = query(db, f"SELECT count(*) AS n FROM {SCHEMA}.calls")[0]["n"]

    # Credits: per team, grants vs captures (the ledger), the accounts, one capture per job at most.
    ledger = query(
        db,
        f"SELECT team_id, kind, count(*) AS n, sum(amount) AS amount FROM {SCHEMA}.credit_ledger GROUP BY 1, 2",
    )
    per_team: dict[str, dict[str, Any]] = defaultdict(dict)
    for row in ledger:
        per_team[row["team_id"]][row["kind"]] = {"n": row["n"], "amount": str(row["amount"])}
    accounts = query(
        db,
        "SELECT team_id, credits_allocated, credits_charged, credits_held, credits_remaining "
        f"FROM {SCHEMA}.credit_accounts",
    )
    over: list[str] = []
    for acc in accounts:
        t = acc["team_id"]
        grants = sum(Decimal(per_team[t].get(k, {}).get("amount", "0")) for k in ("grant", "adjust"))
        captures = Decimal(per_team[t].get("capture", {}).get("amount", "0"))
        per_team[t]["account"] = {k: str(v) for k, v in acc.items() if k != "team_id"}
        per_team[t]["captures_le_grants"] = captures <= grants
        if captures > grants or acc["credits_remaining"] < 0 or acc["credits_held"] < 0:
            over.append(t)
    double_captures = query(
        db,
        f"SELECT team_id, job_id, count(*) AS n FROM {SCHEMA}.credit_ledger WHERE kind = 'capture' "
        "GROUP BY 1, 2 HAVING count(*) > 1",
    )
    double_holds = query(
        db,
        f"SELECT team_id, job_id, count(*) AS n FROM {SCHEMA}.credit_ledger WHERE kind = 'hold' "
        "GROUP BY 1, 2 HAVING count(*) > 1",
    )
    out["credits"] = {
        "per_team": per_team,
        "teams_over_their_grants": over,
        "jobs_captured_more_than_once": [dict(r) for r in double_captures[:20]],
        "jobs_held_more_than_once": [dict(r) for r in double_holds[:20]],
    }

    # Jobs: the completes answered 200 are completed and charged once; single-call jobs answered 200.
    completed = [s.job_id for s in sent if s.kind == "complete" and s.status == 200 and s.job_id]
    singles = [s.job_id for s in answered if s.scenario == "single_call" and s.job_id]
    jobs = {
        r["job_id"]: r
        for r in query(
            db,
            "SELECT job_id, status, credits_charged, credits_held, total_calls "
            f"FROM {SCHEMA}.jobs WHERE job_id = ANY(%s)",
            completed + singles,
        )
    }
    out["jobs"] = {
        "completed_by_route": len(completed),
        "completed_by_route_not_completed": [j for j in completed if jobs.get(j, {}).get("status") != "completed"][:20],
        "single_call_answered": len(singles),
        "single_call_status": dict(Counter(jobs[j]["status"] if j in jobs else "no row" for j in singles)),
        "charged_more_than_the_price": [j for j, r in jobs.items() if r["credits_charged"] > 1][:20],
        "open_at_end": query(
            db,
            f"SELECT status, count(*) AS n, sum(credits_held) AS held FROM {SCHEMA}.jobs "
            "WHERE status IN ('pending', 'in_progress') GROUP BY 1",
        ),
        "by_status": query(db, f"SELECT status, count(*) AS n FROM {SCHEMA}.jobs GROUP BY 1 ORDER BY 1"),
    }
    # Each job left open, with what its client saw (a complete that failed, a call cut by the kill...).
    seen: dict[str, list[str]] = defaultdict(list)
    for s in sent:
        if s.job_id:
            seen[s.job_id].append(
                f"{s.kind}:{s.status}{'' if s.answered or s.status == 201 else ':' + str(s.error)}@{s.t_end:.2f}"
            )
    out["jobs"]["open_at_end_detail"] = [
        {**{k: str(v) for k, v in r.items()}, "client_saw": seen.get(r["job_id"], ["no request carried its id"])}
        for r in query(
            db,
            "SELECT team_id, job_id, status, single_call, credits_held, total_calls, admitted_calls "
            f"FROM {SCHEMA}.jobs WHERE status IN ('pending', 'in_progress') ORDER BY created_at LIMIT 50",
        )
    ]

    # litellm-jobs reconcile, as an operator runs it.
    env = clean_env()
    env["JOBS_DATABASE_URL"] = db
    rec = subprocess.run(
        [str(Path(sys.executable).with_name("litellm-jobs")), "reconcile", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out["reconcile"] = {"exit_code": rec.returncode, "stdout": rec.stdout[-4000:], "stderr": rec.stderr[-2000:]}
    with contextlib.suppress(ValueError):
        out["reconcile"]["report"] = json.loads(rec.stdout)

    shutdown_lines = [
        line.strip() for r in replicas for line in r.log_text().splitlines() if "shutting down: flushed" in line
    ]
    out["shutdown_lines"] = shutdown_lines
    out["ok"] = {
        "every_answered_call_has_one_record": not missing and not twice and not wrong and not events,
        "no_rows_without_an_answered_call": not other_rows,
        "captures_le_grants": not over,
        "no_job_captured_twice": not double_captures,
        "reconcile_clean": rec.returncode == 0,
    }
    return out


# -- figures ----------------------------------------------------------------------------------------------


def pct(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    ys = sorted(xs)
    return ys[min(len(ys) - 1, max(0, round(p / 100 * len(ys)) - 1))]


def phase_figures(run: Run, phase: Phase) -> dict[str, Any]:
    sent = [s for s in run.rec.sent if s.phase == phase.name]
    dur = phase.t1 - phase.t0
    replicas = sorted({s.replica for s in sent})
    out: dict[str, Any] = {
        "seconds": dur,
        "pair": phase.pair,
        "kind": phase.kind,
        "upstream_requests": phase.upstream_requests,
        "cpu": phase.cpu,
        "statuses": {},
        "per_replica": {},
        "latency_ms": {},
    }
    for kind in ("call", "stream", "create", "complete"):
        of_kind = [s for s in sent if s.kind == kind]
        if not of_kind:
            continue
        out["statuses"][kind] = dict(
            Counter(f"{s.status}" + ("" if s.answered or s.status in (201,) else f":{s.error}") for s in of_kind)
        )
        lat = [s.latency_ms for s in of_kind if s.answered or (kind == "create" and s.status == 201)]
        out["latency_ms"][kind] = {
            "n": len(lat),
            **{f"p{p}": pct(lat, p) for p in (50, 95, 99)},
            "max": max(lat, default=None),
        }
    for name in replicas:
        mine = [s for s in sent if s.replica == name]
        answered = [s for s in mine if s.kind in ("call", "stream") and s.answered]
        routes = [s for s in mine if s.kind in ("create", "complete") and s.status in (200, 201)]
        cpu_s = phase.cpu.get("cpu_s", {}).get(name)
        ok = len(answered) + len(routes)
        out["per_replica"][name] = {
            "answered_calls": len(answered),
            "answered_calls_per_s": len(answered) / dur if dur else 0.0,
            "route_answers_per_s": len(routes) / dur if dur else 0.0,
            "requests_sent": len(mine),
            "requests_per_s": len(mine) / dur if dur else 0.0,
            "cpu_cores": cpu_s / dur if cpu_s is not None and dur else None,
            # the replica's CPU (every process of it) over its answered calls; and over every answered
            # request (calls, create and complete); and over every request (402s and 503s included)
            "cpu_ms_per_answered_call": cpu_s * 1000 / len(answered) if cpu_s is not None and answered else None,
            "cpu_ms_per_answered_request": cpu_s * 1000 / ok if cpu_s is not None and ok else None,
            "cpu_ms_per_request": cpu_s * 1000 / len(mine) if cpu_s is not None and mine else None,
        }
    lates = [s.late_s for s in sent if s.late_s > 0]
    out["started_late_over_100ms"] = sum(1 for x in lates if x > 0.1)
    return out


def windows(run: Run, phase: Phase) -> list[dict[str, Any]]:
    """The load phase in 10 s windows: answered calls per s per replica, and non-2xx per kind."""
    out = []
    sent = [s for s in run.rec.sent if s.phase == phase.name]
    t = phase.t0
    while t < phase.t1:
        w = [s for s in sent if t <= s.t_start < t + 10]
        out.append(
            {
                "t": round(t - phase.t0),
                "answered_per_s": {
                    r: sum(1 for s in w if s.replica == r and s.kind in ("call", "stream") and s.answered) / 10
                    for r in ("r1", "r2")
                },
                "failed": dict(
                    Counter(f"{s.kind}:{s.status}" for s in w if s.status not in (200, 201) or not s.complete)
                ),
            }
        )
        t += 10
    return out


def probe_figures(probes: list[Probe]) -> dict[str, Any]:
    def stats(xs: list[float | None]) -> dict[str, Any]:
        got = [x for x in xs if x is not None]
        return {
            "n": len(xs),
            "missed": len(xs) - len(got),
            "p50_ms": None if not got else pct(got, 50) * 1000,  # type: ignore[operator]
            "p99_ms": None if not got else pct(got, 99) * 1000,  # type: ignore[operator]
            "max_ms": None if not got else max(got) * 1000,
            "over_1s": sum(1 for x in got if x > 1.0),
        }

    calls = [p for p in probes if p.kind == "call"]
    creates = [p for p in probes if p.kind == "create"]
    return {
        "calls": {
            "in_calls_list": stats([p.call_s for p in calls]),
            "in_job_total_calls": stats([p.job_s for p in calls]),
            "job_404_at_first_read": sum(1 for p in calls if 404 in p.first_statuses[:1]),
            "in_calls_list_at_first_read": sum(1 for p in calls if p.call_reads == 1 and p.call_s is not None),
            "counted_at_first_read": sum(1 for p in calls if p.job_reads == 1 and p.job_s is not None),
            "first_read_statuses": dict(Counter(str(p.first_statuses[:1]) for p in calls)),
            "errors": dict(Counter(p.error for p in calls if p.error)),
        },
        "creates": {
            "pending_on_the_same_replica_at_once": sum(1 for p in creates if p.same_replica_pending),
            "pending_on_the_other_replica": stats([p.job_s for p in creates]),
            "pending_on_the_other_replica_at_first_read": sum(
                1 for p in creates if p.job_reads == 1 and p.job_s is not None
            ),
            "listed_at_first_read": sum(1 for p in creates if p.listed_reads == 1 and p.listed_s is not None),
            "listed_as_pending": stats([p.listed_s for p in creates]),
            "n": len(creates),
            "errors": dict(Counter(p.error for p in creates if p.error)),
        },
    }


def report(res: dict[str, Any]) -> str:
    """The markdown summary."""
    lines = [f"# Scale proof {res['stamp']} — {res['setup']}", "", f"Command: `{res['command']}`", ""]
    m = res["machine"]
    lines += [
        f"Machine: {m['cpus']} CPUs, load average at start {m['load_at_start']}, at end {m.get('load_at_end')}; "
        f"commit {m['commit']}; LiteLLM {m['litellm']}.",
        "",
        f"Load: {res['settings']['rate']} chat calls/s (open loop) for {res['settings']['minutes']} min over two "
        f"replicas × {res['settings']['workers']} workers; saturation rounds: closed loop, "
        f"{res['settings']['concurrency']} clients, {res['settings']['saturation_s']} s each.",
        "",
        "## Events",
        "",
    ]
    for e in res["events"]:
        details = {k: v for k, v in e.items() if k not in ("t", "what")}
        lines.append(f"- t={e['t']:.1f} s: {e['what']} {json.dumps(details, default=str)}")
    lines += ["", "## Phases", ""]
    lines += [
        "| phase | pair | s | r1 answered/s | r2 answered/s | r1 CPU ms/call | r2 CPU ms/call | machine busy cores | "
        "load avg (end) | call P50/P99 ms | stream P50/P99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f(x: Any, fmt: str = ".1f") -> str:
        return "—" if x is None else format(x, fmt)

    for name, ph in res["phases"].items():
        rep = ph["per_replica"]
        r1, r2 = rep.get("r1", rep.get("b1", {})), rep.get("r2", rep.get("b2", {}))
        lat = ph["latency_ms"]
        lines.append(
            f"| {name} | {ph['pair']} | {ph['seconds']:.0f} | {f(r1.get('answered_calls_per_s'))} | "
            f"{f(r2.get('answered_calls_per_s'))} | {f(r1.get('cpu_ms_per_answered_call'))} | "
            f"{f(r2.get('cpu_ms_per_answered_call'))} | {ph['cpu'].get('machine_busy_cores', 0):.2f} | "
            f"{ph['cpu'].get('load_at_end', [0])[0]:.2f} | "
            f"{f(lat.get('call', {}).get('p50'))}/{f(lat.get('call', {}).get('p99'))} | "
            f"{f(lat.get('stream', {}).get('p50'))}/{f(lat.get('stream', {}).get('p99'))} |"
        )
    lines += [
        "",
        "Every request, per replica (calls, and the plugin pair's create and complete; 402s and 503s counted in "
        '"sent"): sent/s, answered/s (200 or 201), the replica\'s CPU ms per answered request and per request sent.',
        "",
        "| phase | replica | sent/s | answered/s | CPU cores | CPU ms/answered | CPU ms/sent |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, ph in res["phases"].items():
        for rname, rep in sorted(ph["per_replica"].items()):
            lines.append(
                f"| {name} | {rname} | {f(rep.get('requests_per_s'))} | "
                f"{f(rep['answered_calls_per_s'] + rep['route_answers_per_s'])} | {f(rep.get('cpu_cores'), '.2f')} | "
                f"{f(rep.get('cpu_ms_per_answered_request'))} | {f(rep.get('cpu_ms_per_request'))} |"
            )
    lines += ["", "## Statuses (load phase)", ""]
    load = res["phases"].get("load")
    if load:
        for kind, counts in load["statuses"].items():
            lines.append(f"- {kind}: `{json.dumps(counts)}`")
    v = res.get("verify")
    if v:
        lines += ["", "## Checks (PostgreSQL after the drain and a SIGTERM stop)", ""]
        lines += [f"- {k}: **{'yes' if ok else 'NO'}**" for k, ok in v["ok"].items()]
        r = v["records"]
        lines += [
            f"- answered calls (200, streams through [DONE]): {v['answered_calls']}; with a record: "
            f"{r['answered_with_a_record']}; missing: {r['missing']} {json.dumps(r['missing_by_kind'])}; "
            f"ids with more than one row: {len(r['ids_with_more_than_one_row'])}; rows for no answered call: "
            f"{r['rows_without_an_answered_call']} {json.dumps(r['rows_without_an_answered_call_by_client_outcome'])}",
            f"- jobs: {json.dumps(v['jobs']['by_status'], default=str)}; open at the end: "
            f"{json.dumps(v['jobs']['open_at_end'], default=str)}; single-call jobs answered 200 by status: "
            f"{json.dumps(v['jobs']['single_call_status'])}",
            f"- reconcile: exit {v['reconcile']['exit_code']}",
            "",
            "| team | grants | captures | held | remaining |",
            "|---|---|---|---|---|",
        ]
        for team, t in sorted(v["credits"]["per_team"].items()):
            acc = t.get("account", {})
            lines.append(
                f"| {team} | {t.get('grant', {}).get('amount', '0')} | {t.get('capture', {}).get('amount', '0')} "
                f"({t.get('capture', {}).get('n', 0)} jobs) | {acc.get('credits_held')} | "
                f"{acc.get('credits_remaining')} |"
            )
    p = res.get("visibility")
    if p:
        c, cr = p["calls"], p["creates"]
        lines += [
            "",
            "## Read-your-writes visibility (load phase, through the other replica)",
            "",
            "| read | n | P50 ms | P99 ms | max ms | over 1 s | missed (30 s) |",
            "|---|---|---|---|---|---|---|",
        ]
        rows: list[tuple[str, dict[str, Any]]] = [
            ("answered call in GET /api/jobs/{id}/calls", c["in_calls_list"]),
            ("answered call counted in GET /api/jobs/{id}", c["in_job_total_calls"]),
            ("created job pending in GET /api/jobs/{id}", cr["pending_on_the_other_replica"]),
            ("created job in ?status=pending", cr["listed_as_pending"]),
        ]
        parts = (
            ("outside_faults", "outside the faults"),
            ("during_faults", "during a fault (to +10 s)"),
            ("saturation_rounds", "saturation rounds (closed loop)"),
        )
        for part, label in parts:
            if p.get(part):
                rows += [
                    (f"… {label}: call in /calls", p[part]["calls"]["in_calls_list"]),
                    (f"… {label}: call counted in the job", p[part]["calls"]["in_job_total_calls"]),
                ]
        for label, s in rows:
            lines.append(
                f"| {label} | {s['n']} | {f(s['p50_ms'])} | {f(s['p99_ms'])} | {f(s['max_ms'])} | {s['over_1s']} | "
                f"{s['missed']} |"
            )
        lines += [
            "",
            f"Shown at the first read (through the other replica): the call in /calls "
            f"{c['in_calls_list_at_first_read']} of {c['in_calls_list']['n']}, counted in the job "
            f"{c['counted_at_first_read']} of {c['in_job_total_calls']['n']}; a created job pending "
            f"{cr['pending_on_the_other_replica_at_first_read']} of {cr['n']}, listed as pending "
            f"{cr['listed_at_first_read']} of {cr['n']}; on the replica that created it, pending at once "
            f"{cr['pending_on_the_same_replica_at_once']} of {cr['n']}. First read of an answered call's job: "
            f"{json.dumps(c['first_read_statuses'])} (a 404 would be a job not yet visible).",
        ]
    lines.append("")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    def sh(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=ROOT).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "?"

    dirty = sh("git", "status", "--porcelain", "--", "src")
    diff = subprocess.run(["git", "diff", "--", "src"], capture_output=True, cwd=ROOT, timeout=30).stdout
    return {
        # others' work in progress in src/ is what the replicas ran: which files, and the diff's digest
        "src_uncommitted": dirty.splitlines(),
        "src_diff_sha256": hashlib.sha256(diff).hexdigest() if diff else None,
        "cpus": os.cpu_count(),
        "load_at_start": [round(x, 2) for x in os.getloadavg()],
        "commit": sh("git", "rev-parse", "--short", "HEAD") + (" with uncommitted changes in src/" if dirty else ""),
        "litellm": sh(sys.executable, "-c", "import importlib.metadata as m; print(m.version('litellm'))"),
        "redis_server": sh("redis-server", "--version"),
    }


# -- main -------------------------------------------------------------------------------------------------


def run_scale(args: argparse.Namespace, run: Run, tmp: Path) -> None:
    res = run.res
    stack = contextlib.ExitStack()
    with stack:
        upstream = stack.enter_context(FakeUpstream.run(tmp))
        groups: dict[str, Callable[[], list[int]]] = {"upstream": lambda: [upstream.proc.pid]}
        sampler = Sampler(groups)
        sampler.start()
        stack.callback(sampler.halt.set)
        teams = tuple((key, team) for key, team, _ in TEAMS)
        db: str | None = None
        server: OwnRedis | OwnCluster | None = None
        if args.bare:
            env: dict[str, str] = {}
        else:
            server = OwnCluster(tmp / "redis-cluster") if args.redis == "cluster" else OwnRedis(tmp / "redis")
            stack.callback(server.close)
            groups["redis"] = server.pids
            db = create_database()
            if not args.keep_db:
                stack.callback(drop_database, db)
            groups["postgres"] = pg_backends(db)
            env = {"JOBS_DATABASE_URL": db, "JOBS_REDIS_URL": server.url, "JOBS_REDIS_PREFIX": REDIS_PREFIX}
            res["redis"] = {"kind": server.kind, "url": server.url}
        res["database"] = db
        pair_kind = "bare" if args.bare else "plugin"
        names = ("b1", "b2") if args.bare else ("r1", "r2")
        log(f"starting the {pair_kind} pair ({args.workers} workers each)")
        replicas = stack.enter_context(
            pair(tmp, upstream, plugin=not args.bare, env=env, workers=args.workers, names=names)
        )
        all_replicas = list(replicas)
        # the load's replica names are r1/r2 for either pair (the figures compare them)
        targets = tuple(Target(n, r.url) for n, r in zip(("r1", "r2"), replicas, strict=True))
        for n, r in zip(("r1", "r2"), replicas, strict=True):
            groups[n] = r.tracked_pids
        res["replicas"] = {
            n: {"port": r.port, "pid": r.proc.pid, "workers": r.worker_pids()}
            for n, r in zip(("r1", "r2"), replicas, strict=True)
        }
        if not args.bare:
            res["grants"] = {t: str(a) for t, a in grants_for(args).items()}
            for team, amount in grants_for(args).items():
                grant(replicas[0], team, amount)
        mix = Mix(teams=teams, plugin=not args.bare, sample_calls_every=args.sample_every)
        log(f"{pair_kind} pair ready: {res['replicas']}")

        faults: dict[float, Callable[[], None]] = {}
        if not args.no_faults:
            faults[1 / 3] = lambda: kill_a_worker(run, replicas[0])
            if server is not None:
                faults[2 / 3] = lambda: restart_redis(run, server)
        run.rec.epoch = time.monotonic()
        sampler.epoch = run.rec.epoch
        if args.minutes > 0:
            with measured(run, sampler, upstream, "load", pair_kind, "open") as clock:
                asyncio.run(load_phase(run, targets, mix, faults, clock))
            log(f"load done: {len(run.rec.sent)} requests, {len(run.rec.probes)} read-backs")
        # The saturation rounds send the funded teams' calls only (no 402s: both pairs do the same work,
        # but for the plugin's create and complete of each open job).
        mix = dataclasses.replace(mix, teams=tuple((k, t) for k, t, share in TEAMS if share is None))

        # Saturation: closed loop, the plugin pair and a bare pair alternating (both stay up meanwhile).
        if args.saturation_rounds and args.saturation_s > 0:
            if args.bare:
                others: list[tuple[str, tuple[Target, ...], Mix]] = [("bare", targets, mix)]
            else:
                log("starting a bare pair for the alternating saturation rounds")
                bare = stack.enter_context(
                    pair(tmp, upstream, plugin=False, env={}, workers=args.workers, names=("b1", "b2"))
                )
                groups["b1"], groups["b2"] = bare[0].tracked_pids, bare[1].tracked_pids
                res["bare_pair"] = {r.name: {"port": r.port, "pid": r.proc.pid} for r in bare}
                all_replicas.extend(bare)
                bare_targets = (Target("b1", bare[0].url), Target("b2", bare[1].url))
                others = [
                    ("plugin", targets, mix),
                    ("bare", bare_targets, dataclasses.replace(mix, plugin=False)),
                ]
            for rnd in range(args.saturation_rounds):
                order = others if rnd % 2 == 0 else others[::-1]
                for pair_name, tg, mx in order:
                    name = f"sat-{pair_name}-{rnd + 1}"
                    with measured(run, sampler, upstream, name, pair_name, "closed"):
                        asyncio.run(closed_phase(run, name, tg, mx))

        if not args.bare:
            res["drain"] = wait_drained(run, replicas)
            run.event("stopping the replicas (SIGTERM)")
            res["exit_codes"] = {r.name: r.stop() for r in replicas}
            run.event("replicas stopped", codes=res["exit_codes"])
            assert db is not None
            res["verify"] = verify(run, db, replicas)
            log(f"checks: {json.dumps(res['verify']['ok'])}")
        res["logs_tail"] = {r.name: r.log_tail(40) for r in replicas}
        res["workers_seen"] = {r.name: sorted(r.seen_workers) for r in all_replicas}
        for r in all_replicas:  # the bare pair's too (a worker replaced there is explained by its log)
            with contextlib.suppress(OSError):
                shutil.copy(r.log_path, run.outdir / f"proxy-{r.name}.log")
        sampler.halt.set()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="the open-loop load's duration")
    ap.add_argument("--redis", choices=("standalone", "cluster"), default="standalone")
    ap.add_argument("--bare", action="store_true", help="two bare proxies (callbacks: []), same load and kill -9")
    ap.add_argument("--rate", type=float, default=16.0, help="chat calls per second over both replicas")
    ap.add_argument("--workers", type=int, default=2, help="--num_workers of each replica")
    ap.add_argument("--sample-every", type=int, default=20, help="read back every Nth answered call")
    ap.add_argument("--concurrency", type=int, default=16, help="closed-loop clients in the saturation rounds")
    ap.add_argument("--saturation-s", type=float, default=30.0, help="seconds of each saturation round")
    ap.add_argument("--saturation-rounds", type=int, default=2, help="rounds (each: plugin pair, then bare pair)")
    ap.add_argument("--max-in-flight", type=int, default=256)
    ap.add_argument("--no-faults", action="store_true", help="no kill -9, no Redis restart")
    ap.add_argument("--keep-db", action="store_true", help="keep the jobs_scale_* database")
    ap.add_argument("--report", type=Path, help="only rebuild the figures of a finished run's folder")
    args = ap.parse_args()
    if args.report:
        rebuild(args.report)
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    outdir = ROOT / "bench" / "results" / stamp
    outdir.mkdir(parents=True, exist_ok=True)
    setup = "bare pair" if args.bare else f"plugin pair, Redis {args.redis}"
    run = Run(args, outdir)
    run.res.update(
        {
            "stamp": stamp,
            "setup": setup,
            "command": " ".join([".venv/bin/python -m bench.scale", *sys.argv[1:]]),
            "settings": {k: v for k, v in vars(args).items()},
            "machine": machine(),
        }
    )
    log(f"scale proof: {setup}, {args.minutes} min at {args.rate} calls/s -> {outdir}")
    error: BaseException | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="jobs-scale-") as tmp:
            run_scale(args, run, Path(tmp))
    except BaseException as exc:
        error = exc
        run.res["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        save(run)
        if error is None:
            log(f"results: {outdir / 'scale.md'}")


def fault_windows(events: list[dict[str, Any]], tail_s: float = 10.0) -> list[tuple[float, float]]:
    """From each fault to ``tail_s`` after its recovery (the new worker serving; Redis back)."""
    out = []
    starts = {"kill -9": ("new worker serving", "worker not replaced"), "redis restart begins": ("redis back",)}
    for i, e in enumerate(events):
        if e["what"] in starts:
            end = next((f["t"] for f in events[i + 1 :] if f["what"] in starts[e["what"]]), e["t"] + 120)
            out.append((e["t"], end + tail_s))
    return out


def visibility(run: Run) -> dict[str, Any] | None:
    """The read-backs' figures in the load phase: all of them, and apart those answered during a fault
    (to 10 s after it); and those of the saturation rounds (a saturated machine)."""
    load = [p for p in run.rec.probes if p.phase == "load"]
    if not load:
        return None
    spans = fault_windows(run.events)

    def during(p: Probe) -> bool:
        return any(a <= p.t_answer <= b for a, b in spans)

    saturated = [p for p in run.rec.probes if p.phase.startswith("sat-")]
    return {
        **probe_figures(load),
        "fault_windows_s": spans,
        "outside_faults": probe_figures([p for p in load if not during(p)]),
        "during_faults": probe_figures([p for p in load if during(p)]),
        "saturation_rounds": probe_figures(saturated) if saturated else None,
    }


def save(run: Run) -> None:
    """The raw log first, then scale.json and scale.md (figures computed from the raw log; a failure
    computing them is recorded, never a reason to lose the checks)."""
    with gzip.open(run.outdir / "requests.jsonl.gz", "wt") as out:
        for s in run.rec.sent:
            out.write(json.dumps({"type": "request", **dataclasses.asdict(s)}) + "\n")
        for p in run.rec.probes:
            out.write(json.dumps({"type": "probe", **dataclasses.asdict(p)}) + "\n")
    res = run.res
    res.setdefault("machine", {})["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    res["events"] = run.events
    res["phases_raw"] = [dataclasses.asdict(ph) for ph in run.phases]
    figures(run)


def figures(run: Run) -> None:
    res = run.res
    try:
        res["phases"] = {}
        for ph in run.phases:
            res["phases"][ph.name] = phase_figures(run, ph)
            if ph.name == "load":
                res["phases"][ph.name]["windows_10s"] = windows(run, ph)
        res["visibility"] = visibility(run)
        (run.outdir / "scale.md").write_text(report(res))
    except Exception as exc:
        res["figures_error"] = f"{type(exc).__name__}: {exc}"
        log(f"figures failed: {res['figures_error']} (rebuild with --report {run.outdir})")
    (run.outdir / "scale.json").write_text(json.dumps(res, indent=1, default=str))


def rebuild(outdir: Path) -> None:
    """``--report DIR``: the figures and scale.md again, from scale.json and requests.jsonl.gz."""
    res = json.loads((outdir / "scale.json").read_text())
    run = Run(argparse.Namespace(**res["settings"]), outdir, res=res)
    run.events = res["events"]
    run.phases = [Phase(**ph) for ph in res["phases_raw"]]
    with gzip.open(outdir / "requests.jsonl.gz", "rt") as lines:
        for line in lines:
            row = json.loads(line)
            if row.pop("type") == "probe":
                run.rec.probes.append(Probe(**row))
            else:
                run.rec.sent.append(Sent(**row))
    res.pop("figures_error", None)
    figures(run)
    log(f"rebuilt {outdir / 'scale.md'}")


if __name__ == "__main__":
    main()
