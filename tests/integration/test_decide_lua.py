"""Redis decides in Lua; everything else decides in ``credits/decide.py``. Fed the same states and
requests, the scripts and the pure functions must decide alike: same verdict, same changes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal
from importlib import resources
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from litellm_jobs_plugin.credits import decide
from litellm_jobs_plugin.models import JobStatus, from_micro, to_micro
from tests.conftest import REDIS_TEST_PREFIX

STATES = [s.value for s in JobStatus]
MONEY = st.sampled_from([Decimal(0), Decimal("0.5"), Decimal(1), Decimal(2), Decimal(3)])
COSTS = st.sampled_from([Decimal(0), Decimal("0.25"), Decimal("0.5"), Decimal(1)])


def script(client: redis.Redis, name: str) -> Any:
    source = resources.files("litellm_jobs_plugin.credits").joinpath("lua", f"{name}.lua").read_text("utf-8")
    return client.register_script(source)


@pytest.fixture(scope="module")
def client(redis_server_url: str | None) -> Iterator[redis.Redis]:
    if redis_server_url is None:
        pytest.skip("no Redis server (JOBS_TEST_REDIS_URL unset and no redis-server binary)")
    c = redis.Redis.from_url(redis_server_url, decode_responses=True)
    yield c
    c.close()


jobs = st.one_of(
    st.none(),
    st.builds(
        decide.JobState,
        state=st.sampled_from(STATES),
        job_type=st.sampled_from(["a", "b"]),
        calls=st.integers(0, 3),
        max_calls=st.one_of(st.none(), st.integers(1, 3)),
        max_cost=st.one_of(st.none(), st.sampled_from([Decimal("0.5"), Decimal(1)])),
        cost=COSTS,
    ),
)


def put_state(client: redis.Redis, keys: list[str], available: Decimal, job: decide.JobState | None) -> None:
    client.set(keys[4], "1")  # the sentinel: the state is loaded
    client.hset(keys[0], mapping={"avail": to_micro(available), "held": 0, "loaded": "1"})
    if job is not None:
        client.hset(
            keys[1],
            mapping={
                "state": job.state,
                "type": job.job_type,
                "hold": to_micro(Decimal(1)),
                "calls": job.calls,
                "max_calls": job.max_calls or 0,
                "max_cost": str(job.max_cost or 0),
                "cost": str(job.cost),
                "last": 1000,
                "inc": "1",
            },
        )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    job=jobs,
    available=MONEY,
    price=MONEY,
    requested=st.sampled_from([None, "a", "b"]),
    count_call=st.booleans(),
    create_only=st.booleans(),
    refused=st.booleans(),
)
def test_open_job_lua_decides_as_the_pure_rules(
    client: redis.Redis,
    job: decide.JobState | None,
    available: Decimal,
    price: Decimal,
    requested: str | None,
    count_call: bool,
    create_only: bool,
    refused: bool,
) -> None:
    base = f"{REDIS_TEST_PREFIX}-decide-{uuid.uuid4().hex[:8]}"
    keys = [f"{base}:acct", f"{base}:job", f"{base}:open", f"{base}:journal", f"{base}:loaded"]
    put_state(client, keys, available, job)
    args = [
        2000,
        requested or "",
        "a",
        to_micro(price),
        0,
        "0",
        "1" if create_only else "0",
        "1" if count_call else "0",
        "m",
        "in_progress" if count_call else "pending",
        "t",
        "j",
        "0",
        "0" if refused else "1",
    ]
    try:
        result = script(client, "open_job")(keys=keys, args=args)
        if job is not None:
            verdict = decide.join(job, requested_type=requested, count_call=count_call, create_only=create_only)
            expected = "exists" if verdict is decide.Verdict.OK and create_only else verdict.value
            assert result[0] == expected
            calls_after = int(client.hget(keys[1], "calls") or 0)
            counted = verdict is decide.Verdict.OK and count_call and not create_only
            assert calls_after == job.calls + int(counted)
            assert from_micro(client.hget(keys[0], "avail") or 0) == available  # joining never moves money
        else:
            verdict = decide.open_new(available, price, refused=refused)
            assert result[0] == verdict.value
            opened = verdict is decide.Verdict.OK
            assert from_micro(client.hget(keys[0], "avail") or 0) == available - (price if opened else 0)
            assert from_micro(client.hget(keys[0], "held") or 0) == (price if opened else 0)
            assert client.exists(keys[1]) == int(opened)
            assert client.xlen(keys[3]) == int(opened)  # the hold is journaled with the decision
    finally:
        client.delete(*keys)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    state=st.sampled_from(STATES),
    status=st.sampled_from([JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.EXPIRED]),
    hold=MONEY,
    last=st.integers(0, 3000),
    cutoff=st.one_of(st.none(), st.integers(0, 3000)),
    charge=st.one_of(st.none(), MONEY, st.just(Decimal("0.333333"))),
)
def test_close_job_lua_decides_as_the_pure_rules(
    client: redis.Redis,
    state: str,
    status: JobStatus,
    hold: Decimal,
    last: int,
    cutoff: int | None,
    charge: Decimal | None,
) -> None:
    base = f"{REDIS_TEST_PREFIX}-decide-{uuid.uuid4().hex[:8]}"
    keys = [f"{base}:acct", f"{base}:job", f"{base}:open", f"{base}:loaded"]
    client.set(keys[3], "1")
    held = hold if state in decide.OPEN_STATES else Decimal(0)
    client.hset(keys[0], mapping={"avail": to_micro(Decimal(5)), "held": to_micro(held), "loaded": "1"})
    client.hset(keys[1], mapping={"state": state, "type": "a", "hold": to_micro(hold), "calls": 1, "last": last})
    try:
        charged = "" if charge is None else str(to_micro(charge))
        args = [status.value, 5000, "" if cutoff is None else str(cutoff), "m", 60, charged]
        result = script(client, "close_job")(keys=keys, args=args)
        verdict = decide.close(state, status, last_activity=last, idle_cutoff=cutoff)
        assert result[0] == verdict.value
        avail = from_micro(client.hget(keys[0], "avail") or 0)
        held_after = from_micro(client.hget(keys[0], "held") or 0)
        if verdict is decide.CloseVerdict.CLOSED:
            avail_change, held_change = decide.settlement(hold, status, charge)
            assert (avail, held_after) == (Decimal(5) + avail_change, held + held_change)
            assert client.hget(keys[1], "state") == status.value
        else:
            assert (avail, held_after) == (Decimal(5), held)
            assert client.hget(keys[1], "state") == state
    finally:
        client.delete(*keys)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(job=jobs, available=MONEY, price=MONEY, count_call=st.booleans())
def test_without_the_sentinel_no_script_decides_anything(
    client: redis.Redis, job: decide.JobState | None, available: Decimal, price: Decimal, count_call: bool
) -> None:
    """A Redis that lost its data (here: only the sentinel) answers 'rebuild' and changes nothing."""
    base = f"{REDIS_TEST_PREFIX}-decide-{uuid.uuid4().hex[:8]}"
    acct, job_key, open_key, journal, loaded, grants = (
        f"{base}:{name}" for name in ("acct", "job", "open", "journal", "loaded", "grants")
    )
    put_state(client, [acct, job_key, open_key, journal, loaded], available, job)
    client.delete(loaded)
    before = {k: client.dump(k) for k in (acct, job_key, open_key, journal, grants)}
    try:
        opened = script(client, "open_job")(
            keys=[acct, job_key, open_key, journal, loaded],
            args=[
                2000,
                "",
                "a",
                to_micro(price),
                0,
                "0",
                "0",
                "1" if count_call else "0",
                "m",
                "pending",
                "t",
                "j",
                "0",
                "1",
            ],
        )
        closed = script(client, "close_job")(
            keys=[acct, job_key, open_key, loaded, journal],
            args=["completed", 5000, "", "m", 60, "", "t", "j", "0", "{}"],
        )
        cost = script(client, "add_cost")(keys=[job_key, open_key, loaded, journal], args=["0.5", 3000, "m", "{}"])
        grant = script(client, "apply_grant")(keys=[acct, grants, loaded], args=["e1", to_micro(Decimal(1))])
        assert (opened, closed, cost, grant) == (["rebuild"], ["rebuild"], "rebuild", ["rebuild"])
        assert {k: client.dump(k) for k in before} == before
    finally:
        client.delete(acct, job_key, open_key, journal, loaded, grants)


def test_load_job_loads_an_open_job_once_and_indexes_it(client: redis.Redis) -> None:
    base = f"{REDIS_TEST_PREFIX}-decide-{uuid.uuid4().hex[:8]}"
    keys = [f"{base}:job", f"{base}:open"]
    args = ["in_progress", "a", to_micro(Decimal(1)), 2, 0, "0", "0.25", 1234, "99", "m"]
    try:
        assert script(client, "load_job")(keys=keys, args=args) == 1
        assert script(client, "load_job")(keys=keys, args=[*args[:3], 7, *args[4:]]) == 0  # Redis's wins
        assert client.hgetall(keys[0]) == {
            "state": "in_progress",
            "type": "a",
            "hold": "1000000",
            "calls": "2",
            "max_calls": "0",
            "max_cost": "0",
            "cost": "0.25",
            "last": "1234",
            "inc": "99",
        }
        assert client.zscore(keys[1], "m") == 1234
    finally:
        client.delete(*keys)
