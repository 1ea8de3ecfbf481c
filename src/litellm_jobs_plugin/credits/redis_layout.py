"""Where the plugin's data lives in Redis (every key name, per team shard) and how it connects to a
single Redis or to a Redis Cluster."""

from __future__ import annotations

import zlib
from urllib.parse import unquote

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from ..journal import Client


class RedisKeys:
    """Every Redis key the plugin uses, in one place. Ids are length-prefixed: they may hold ':'.

    Each team belongs to one of ``shards`` shards (a stable hash of its id), and every key of the
    team carries its shard's hash tag, ``{<prefix>:<shard>}``: the account, its grants, its jobs, and
    the shard's open-jobs index, journal stream and sentinel. Every script touches the keys of one
    team, so of one hash slot: what a Redis Cluster requires, and harmless on a single Redis.
    """

    def __init__(self, prefix: str, shards: int = 1) -> None:
        if shards < 1:
            raise ValueError("shards must be at least 1")
        self.prefix = prefix
        self.shards = shards

    def shard(self, team_id: str) -> int:
        """The team's shard: a stable hash (every replica, every version agrees)."""
        return zlib.crc32(team_id.encode()) % self.shards

    def tag(self, shard: int) -> str:
        return f"{{{self.prefix}:{shard}}}"

    def _of(self, team_id: str) -> str:
        return self.tag(self.shard(team_id))

    def account(self, team_id: str) -> str:
        return f"{self._of(team_id)}:acct:{team_id}"

    def grants(self, team_id: str) -> str:
        return f"{self._of(team_id)}:grants:{team_id}"

    def job(self, team_id: str, job_id: str) -> str:
        return f"{self._of(team_id)}:job:{self.member(team_id, job_id)}"

    def open_jobs_for(self, team_id: str) -> str:
        """The open-jobs index (the reaper's) the team's jobs are in: its shard's."""
        return f"{self._of(team_id)}:open"

    def journal_for(self, team_id: str) -> str:
        """The journal stream the team's records go to: its shard's."""
        return f"{self._of(team_id)}:journal"

    def loaded(self, team_id: str) -> str:
        """The sentinel of the team's shard: present once the shard's state is loaded from PostgreSQL."""
        return f"{self._of(team_id)}:loaded"

    covered_by = loaded

    @property
    def open_sets(self) -> list[str]:
        return [f"{self.tag(n)}:open" for n in range(self.shards)]

    @property
    def journals(self) -> list[str]:
        return [f"{self.tag(n)}:journal" for n in range(self.shards)]

    @property
    def sentinels(self) -> list[str]:
        """Every shard's sentinel."""
        return [f"{self.tag(n)}:loaded" for n in range(self.shards)]

    @property
    def rebuild_lock(self) -> str:
        return f"{self.prefix}:rebuild"

    @property
    def legacy_journal(self) -> str:
        """The journal stream of versions before the sharded layout: read until empty after an upgrade."""
        return f"{self.prefix}:journal"

    @staticmethod
    def member(team_id: str, job_id: str) -> str:
        return f"{len(team_id)}:{team_id}:{job_id}"

    @staticmethod
    def parse_member(member: str) -> tuple[str, str]:
        length, rest = member.split(":", 1)
        n = int(length)
        return rest[:n], rest[n + 1 :]


CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
#: Shards when JOBS_REDIS_SHARDS is unset: one on a single Redis, 16 on a cluster (spread over its masters).
DEFAULT_SHARDS = {False: 1, True: 16}


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def connect(url: str, *, max_connections: int = 50) -> Client:
    """A client for ``redis://``/``rediss://`` (one Redis) or ``redis+cluster://[user:password@]host:port,host:port``
    (a Redis Cluster: any of its nodes; ``rediss+cluster://`` for TLS)."""
    if not is_cluster_url(url):
        # A blocking pool: under a burst, calls wait for a connection instead of failing. Short socket
        # timeouts: an unreachable Redis fails a call in seconds (503), never hangs it.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=10,
            socket_connect_timeout=2,
            socket_timeout=5,
            retry_on_timeout=False,
        )
        return aioredis.Redis(connection_pool=pool)
    scheme, rest = url.split("://", 1)
    rest = rest.split("/", 1)[0].split("?", 1)[0]
    credentials, _, hosts = rest.rpartition("@")
    username, _, password = credentials.partition(":")
    nodes = []
    for host in hosts.split(","):
        name, _, port = host.strip().rpartition(":")
        if not name or not port.isdigit():
            raise ValueError(f"JOBS_REDIS_URL: {host!r} is not host:port")
        nodes.append(ClusterNode(name.strip("[]"), int(port)))
    return RedisCluster(
        startup_nodes=nodes,
        username=unquote(username) or None,
        password=unquote(password) or None,
        ssl=scheme.lower().startswith("rediss"),
        # A connection limit per node; past it a command fails (503) instead of waiting: generous.
        max_connections=max(max_connections * 8, 512),
        socket_connect_timeout=2,
        socket_timeout=5,
    )
