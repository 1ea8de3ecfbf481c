from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from litellm_jobs_plugin.store.postgres import PostgresStore


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(database_url)
    await s.open()
    yield s
    await s.close()
