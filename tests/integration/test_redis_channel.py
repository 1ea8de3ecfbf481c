"""The pipelined script connection of Redis credits, against a real redis-server of the test's own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from litellm_jobs_plugin.redis_channel import RedisChannel, supports
from tests.support.outages import OwnRedis, own_redis
from tests.support.services import wait_for_async

ECHO = "return {KEYS[1], ARGV[1]}"
FAIL = "return redis.error_reply('ERR refused by the script')"
SET = "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('GET', KEYS[1])"
#: Keeps Redis busy (it answers nobody meanwhile) for ARGV[1] milliseconds.
BUSY = """
local t = redis.call('TIME')
local start = t[1] * 1000 + math.floor(t[2] / 1000)
repeat
  t = redis.call('TIME')
until t[1] * 1000 + math.floor(t[2] / 1000) - start >= tonumber(ARGV[1])
return 1
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[OwnRedis]:
    with own_redis(tmp_path / "redis") as r:
        yield r


@pytest.fixture
async def channel(server: OwnRedis) -> AsyncIterator[RedisChannel]:
    c = RedisChannel(server.url)
    try:
        yield c
    finally:
        await c.aclose()


def load(url: str, script: str) -> str:
    return str(redis.Redis.from_url(url).script_load(script))


def test_only_a_single_redis_without_tls_uses_it() -> None:
    assert supports("redis://127.0.0.1:6379/0")
    assert supports("unix:///run/redis.sock")
    assert not supports("rediss://cache.example:6380")
    assert not supports("redis+cluster://a:1,b:2")


async def test_concurrent_calls_share_the_connection_and_each_gets_its_own_reply(
    server: OwnRedis, channel: RedisChannel
) -> None:
    sha = load(server.url, ECHO)
    replies = await asyncio.gather(*(channel.evalsha(sha, [f"k{i}"], [i]) for i in range(300)))
    assert replies == [[f"k{i}".encode(), str(i).encode()] for i in range(300)]
    clients = redis.Redis.from_url(server.url).client_list()
    assert len(clients) == 2  # the channel's one connection, and this client_list's


async def test_a_caller_that_gives_up_does_not_shift_the_replies_of_the_others(
    server: OwnRedis, channel: RedisChannel
) -> None:
    echo, busy = load(server.url, ECHO), load(server.url, BUSY)
    assert await channel.evalsha(echo, ["w"], ["connected"]) == [b"w", b"connected"]
    slow = asyncio.create_task(channel.evalsha(busy, [], [200]))
    first = asyncio.create_task(channel.evalsha(echo, ["a"], ["first"]))
    await asyncio.sleep(0)  # both tasks ran to their wait: both commands are written, Redis busy with the first
    assert not first.done()
    first.cancel()
    second = await channel.evalsha(echo, ["b"], ["second"])
    assert second == [b"b", b"second"]
    assert await slow == 1
    assert first.cancelled()


async def test_error_replies_raise_the_errors_redis_py_would_and_the_connection_goes_on(
    server: OwnRedis, channel: RedisChannel
) -> None:
    echo, fail = load(server.url, ECHO), load(server.url, FAIL)
    with pytest.raises(NoScriptError):
        await channel.evalsha("0" * 40, [], [])
    with pytest.raises(ResponseError, match="refused by the script"):
        await channel.evalsha(fail, [], [])
    assert await channel.evalsha(echo, ["k"], ["still here"]) == [b"k", b"still here"]


async def test_it_uses_the_database_of_the_url(server: OwnRedis) -> None:
    url = server.url.rsplit("/", 1)[0] + "/5"
    sha = load(url, SET)
    channel = RedisChannel(url)
    try:
        assert await channel.evalsha(sha, ["where"], ["db5"]) == b"db5"
    finally:
        await channel.aclose()
    assert redis.Redis.from_url(url).get("where") == b"db5"
    assert redis.Redis.from_url(server.url).get("where") is None


async def test_a_redis_that_does_not_answer_in_time_fails_the_call_and_the_next_one_reconnects(
    server: OwnRedis,
) -> None:
    echo, busy = load(server.url, ECHO), load(server.url, BUSY)
    channel = RedisChannel(server.url, timeout_s=0.2)
    try:
        waiting = asyncio.create_task(channel.evalsha(echo, ["x"], ["behind the busy script"]))
        with pytest.raises(RedisTimeoutError):
            await channel.evalsha(busy, [], [600])
        with pytest.raises((RedisConnectionError, RedisTimeoutError)):
            await waiting  # behind it on the dropped connection: failed, never handed another command's reply
        channel.timeout_s = 5.0
        assert await channel.evalsha(echo, ["y"], ["after"]) == [b"y", b"after"]
    finally:
        await channel.aclose()


async def test_a_restarted_redis_fails_calls_while_down_then_serves_them_again(
    server: OwnRedis, channel: RedisChannel
) -> None:
    sha = load(server.url, ECHO)
    assert await channel.evalsha(sha, ["k"], ["before"]) == [b"k", b"before"]
    server.stop()
    with pytest.raises(RedisConnectionError):
        await channel.evalsha(sha, ["k"], ["down"])
    server.start()
    with pytest.raises(NoScriptError):  # a restarted Redis has no scripts: the caller loads it again
        await channel.evalsha(sha, ["k"], ["after"])
    sha = load(server.url, ECHO)
    assert await channel.evalsha(sha, ["k"], ["after"]) == [b"k", b"after"]


def test_it_runs_on_uvloop_the_proxy_s_event_loop(server: OwnRedis) -> None:
    uvloop = pytest.importorskip("uvloop")
    sha = load(server.url, ECHO)

    async def calls() -> list[object]:
        channel = RedisChannel(server.url)
        try:
            return list(await asyncio.gather(*(channel.evalsha(sha, ["k"], [i]) for i in range(50))))
        finally:
            await channel.aclose()

    assert uvloop.run(calls()) == [[b"k", str(i).encode()] for i in range(50)]


async def test_a_pipeline_writes_its_commands_at_once_and_answers_in_order(
    server: OwnRedis, channel: RedisChannel
) -> None:
    replies = await channel.pipeline([("set", "p", "1"), ("incr", "p"), ("get", "p")])
    assert replies == [b"OK", 2, b"2"]


async def test_an_error_in_a_pipeline_raises_after_every_reply_is_in_and_the_connection_goes_on(
    server: OwnRedis, channel: RedisChannel
) -> None:
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await channel.pipeline([("set", "s", "text"), ("lpush", "s", "x"), ("set", "after", "ran")])
    # the command after the error ran (Redis does not stop a pipeline), and its reply did not shift
    assert await channel.pipeline([("get", "after")]) == [b"ran"]


async def test_a_blocking_read_waits_past_the_channel_timeout_when_told_and_wakes_at_an_append(
    server: OwnRedis,
) -> None:
    reader = RedisChannel(server.url, timeout_s=0.2)
    try:
        await reader.pipeline([("xgroup", "create", "st", "g", "0", "mkstream")])
        read = asyncio.create_task(
            reader.pipeline(
                [("xreadgroup", "group", "g", "c", "count", 10, "block", 5000, "streams", "st", ">")], timeout_s=10
            )
        )
        await asyncio.wait((read,), timeout=0.5)  # longer than the channel's own timeout: still waiting
        assert not read.done()
        await asyncio.to_thread(redis.Redis.from_url(server.url).xadd, "st", {"v": "1"})
        async with asyncio.timeout(5):
            (answer,) = await read
        [[stream, [[entry_id, fields]]]] = answer
        assert (stream, fields) == (b"st", [b"v", b"1"])
        assert entry_id
    finally:
        await reader.aclose()


async def test_commands_sent_while_it_connects_run_in_the_database_of_the_url(server: OwnRedis) -> None:
    # AUTH then SELECT go first on a new connection: a command that arrives while they are in flight
    # waits for them; it is never written between the two (it would run in database 0)
    redis.Redis.from_url(server.url).config_set("requirepass", "s3cret")
    host_port = server.url.split("://", 1)[1].rsplit("/", 1)[0]
    url, url0 = f"redis://:s3cret@{host_port}/7", f"redis://:s3cret@{host_port}/0"
    sha = load(url, SET)
    channel = RedisChannel(url)
    try:
        calls = [asyncio.create_task(channel.evalsha(sha, ["k0"], [0]))]
        while not calls[0].done() and len(calls) < 10_000:  # a new call each turn of the loop, until the first's answer
            calls.append(asyncio.create_task(channel.evalsha(sha, [f"k{len(calls)}"], [len(calls)])))
            await asyncio.sleep(0)
        assert await asyncio.gather(*calls) == [str(i).encode() for i in range(len(calls))]
        n = len(calls)
    finally:
        await channel.aclose()
    assert n > 2
    assert redis.Redis.from_url(url).dbsize() == n
    assert redis.Redis.from_url(url0).dbsize() == 0


async def test_a_timer_due_with_its_reply_already_in_leaves_the_connection_alone(
    server: OwnRedis, channel: RedisChannel
) -> None:
    from litellm_jobs_plugin.redis_channel import _expire

    sha = load(server.url, ECHO)
    assert await channel.evalsha(sha, ["k"], ["connected"]) == [b"k", b"connected"]
    answered: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    answered.set_result("the reply")
    line = channel._line
    assert line is not None
    _expire(line, [answered], 5.0)  # what a timer firing in the same turn as the reply does
    assert line.transport is not None
    assert not line.transport.is_closing()
    assert await channel.evalsha(sha, ["k"], ["same connection"]) == [b"k", b"same connection"]
    assert len(redis.Redis.from_url(server.url).client_list()) == 2  # no reconnection: the channel's and this one


async def test_a_blocking_read_given_up_leaves_later_entries_to_the_other_readers(server: OwnRedis) -> None:
    admin = redis.Redis.from_url(server.url)
    admin.xgroup_create("st", "g", id="0", mkstream=True)
    reader = RedisChannel(server.url)
    try:
        read = asyncio.create_task(
            reader.pipeline(
                [("xreadgroup", "group", "g", "gone", "count", 10, "block", 60_000, "streams", "st", ">")], timeout_s=90
            )
        )

        def blocked_clients() -> int:
            return int(admin.info("clients")["blocked_clients"])

        await wait_for_async(lambda: asyncio.to_thread(lambda: blocked_clients() == 1), within=5)
        read.cancel()
        with pytest.raises(asyncio.CancelledError):
            await read
        # the read's connection is closed, not left blocking in Redis
        await wait_for_async(lambda: asyncio.to_thread(lambda: blocked_clients() == 0), within=5)
        admin.xadd("st", {"v": "after"})
        [[_, [(_, fields)]]] = admin.xreadgroup("g", "live", {"st": ">"}, count=10)
        assert fields == {b"v": b"after"}
        assert admin.xpending("st", "g")["consumers"] == [{"name": b"live", "pending": 1}]
    finally:
        await reader.aclose()
