"""The writer's connection tells a database that is away from a batch that is wrong.

A batch that is wrong is isolated by the writer (and a record that stays wrong is dropped), so any
other failure must come out as StoreUnavailable, which keeps the batch: CI once saw asyncpg's
InternalClientError ("another operation is in progress") on a connection PostgreSQL had just
terminated for its shutdown, and the writer dropped a record of an answered call.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from litellm_jobs_plugin.errors import StoreUnavailable
from litellm_jobs_plugin.store import postgres
from litellm_jobs_plugin.store.postgres import BatchConnection


class FakeConnection:
    def __init__(self, exc: BaseException | None) -> None:
        self.exc = exc
        self.terminated = False

    def is_closed(self) -> bool:
        return self.terminated

    async def fetchval(self, *args: Any) -> int:
        if self.exc is not None:
            raise self.exc
        return 3

    def terminate(self) -> None:
        self.terminated = True


def connection(
    monkeypatch: pytest.MonkeyPatch, exc: BaseException | None
) -> tuple[BatchConnection, list[FakeConnection]]:
    made: list[FakeConnection] = []

    async def connect(**kwargs: Any) -> FakeConnection:
        made.append(FakeConnection(exc if not made else None))  # the next connection works
        return made[-1]

    monkeypatch.setattr(postgres.asyncpg, "connect", connect)
    return BatchConnection("postgresql://postgres@127.0.0.1:1/x", "litellm_jobs"), made


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.exceptions.InternalClientError("cannot switch to state 12; another operation (2) is in progress"),
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.exceptions.DeadlockDetectedError("deadlock detected"),
        ConnectionResetError("reset by peer"),
        TimeoutError(),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_a_database_that_is_away_keeps_the_batch_and_a_new_connection_is_made(
    monkeypatch: pytest.MonkeyPatch, exc: BaseException
) -> None:
    batches, made = connection(monkeypatch, exc)
    with pytest.raises(StoreUnavailable):
        await batches.record("{}")
    assert made[0].terminated  # never used again
    assert await batches.record("{}") == 3
    assert len(made) == 2


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.exceptions.InvalidTextRepresentationError("invalid input syntax for type numeric"),
        asyncpg.exceptions.CheckViolationError("new row violates check constraint"),
        asyncpg.exceptions.UndefinedFunctionError("function record_batch(jsonb) does not exist"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_a_batch_the_database_refuses_is_the_batchs_fault(
    monkeypatch: pytest.MonkeyPatch, exc: BaseException
) -> None:
    batches, made = connection(monkeypatch, exc)
    with pytest.raises(type(exc)):
        await batches.record("{}")
    assert not made[0].terminated  # the connection itself is fine


async def test_a_cancelled_batch_leaves_no_half_used_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    batches, made = connection(monkeypatch, asyncio.CancelledError())
    with pytest.raises(asyncio.CancelledError):
        await batches.record("{}")
    assert made[0].terminated
