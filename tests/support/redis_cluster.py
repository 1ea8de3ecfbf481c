"""A three-master Redis Cluster on loopback ports (with a replica per master if asked), stopped by PID."""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.cluster import ClusterNode, RedisCluster

from tests.support.services import stop_process, wait_for


def _port_pair_free(port: int) -> bool:
    """The port and its cluster bus port (port + 10000) are both free on loopback."""
    for p in (port, port + 10000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                return False
    return True


def cluster_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        port = random.randint(20000, 29999)
        if port not in ports and _port_pair_free(port):
            ports.append(port)
    return ports


@dataclass
class RedisClusterServers:
    ports: list[int]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The plugin's JOBS_REDIS_URL for this cluster."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def client(self) -> RedisCluster:
        return RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in self.ports])

    def master_of(self, key: str) -> int:
        """The port of the master that serves ``key``'s slot now."""
        client = self.client()
        try:
            return int(client.get_node_from_key(key).port)
        finally:
            client.close()

    def kill(self, port: int) -> None:
        """``kill -9`` the node on ``port``."""
        proc = self.procs[self.ports.index(port)]
        proc.kill()
        proc.wait(timeout=10)

    def stop(self) -> None:
        for proc in self.procs:
            stop_process(proc, timeout=10)
        self.procs = []


@contextlib.contextmanager
def redis_cluster(
    tmp: Path, *, replicas: int = 0, node_timeout_ms: int = 15_000
) -> Iterator[RedisClusterServers | None]:
    """Three masters and ``replicas`` replicas of each (None when the redis-server or redis-cli binary is
    missing); a master unreachable for ``node_timeout_ms`` is failed over to its replica."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        yield None
        return
    cluster = RedisClusterServers(cluster_ports(3 * (1 + replicas)))
    try:
        for port in cluster.ports:
            home = tmp / str(port)
            home.mkdir(parents=True, exist_ok=True)
            args = ["--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes"]
            args += ["--cluster-config-file", str(home / "nodes.conf"), "--dir", str(home)]
            args += ["--save", "", "--appendonly", "no", "--cluster-node-timeout", str(node_timeout_ms)]
            cluster.procs.append(
                subprocess.Popen(
                    [server, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
                )
            )
        for port in cluster.ports:
            wait_for(lambda p=port: redis.Redis(port=p).ping(), timeout=20, what=f"redis-server on {port}")
        nodes = [f"127.0.0.1:{p}" for p in cluster.ports]
        subprocess.run(
            [cli, "--cluster", "create", *nodes, "--cluster-replicas", str(replicas), "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )

        def ready() -> bool:
            return all(
                redis.Redis(port=p).cluster("info").get("cluster_state") == "ok"  # type: ignore[no-untyped-call]
                for p in cluster.ports
            )

        wait_for(ready, timeout=30, what="the cluster to be ok")
        yield cluster
    finally:
        cluster.stop()
