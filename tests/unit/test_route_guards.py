"""The guards that keep hostile input a 400 (found by tests/acceptance/test_fuzz.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI, Query
from fastapi.testclient import TestClient
from litellm.proxy._types import ProxyException

from litellm_jobs_plugin.errors import InvalidJobMetadata
from litellm_jobs_plugin.metadata import MAX_JOB_METADATA_DEPTH, check_job_metadata, json_depth, parse_job_tag
from litellm_jobs_plugin.route_kit import MAX_BODY_DEPTH, JobsRoute, _json_object


def nested(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = {"a": value} if i % 2 else [value]
    return value


@pytest.mark.parametrize("depth", [0, 1, 2, 31, 64, 5000])
def test_json_depth_counts_objects_and_arrays_without_recursion(depth: int) -> None:
    assert json_depth(nested(depth), limit=10_000) == depth


def test_json_depth_stops_counting_past_its_limit() -> None:
    assert json_depth(nested(5000), limit=10) == 11


def test_job_metadata_nested_too_deeply_is_refused() -> None:
    ok = {"k": nested(MAX_JOB_METADATA_DEPTH - 1)}
    assert check_job_metadata(ok) == ok
    with pytest.raises(InvalidJobMetadata) as info:
        parse_job_tag({"job_id": "j", "job_metadata": {"k": nested(MAX_JOB_METADATA_DEPTH)}}, {})
    assert info.value.param == "metadata.job_metadata"


@pytest.mark.parametrize("raw", [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000])
def test_bodies_deeper_than_the_json_parser_are_a_400(raw: bytes) -> None:
    with pytest.raises(ProxyException) as info:
        _json_object(raw, len(raw), True)
    assert (info.value.code, info.value.type, info.value.param) == ("400", "invalid_job_metadata", "body")


def test_bodies_deeper_than_the_limit_are_a_400() -> None:
    fine = {"x": nested(MAX_BODY_DEPTH - 1)}
    assert _json_object(json.dumps(fine).encode(), 1 << 20, True) == fine
    with pytest.raises(ProxyException) as info:
        _json_object(json.dumps({"x": nested(MAX_BODY_DEPTH)}).encode(), 1 << 20, True)
    assert "deeper" in info.value.message


def test_query_parameter_errors_are_openai_error_json() -> None:
    """FastAPI's own parameter errors on our routes: OpenAI's error JSON, not {"detail": [...]}."""
    app = FastAPI()

    @app.exception_handler(ProxyException)
    async def proxy_exception(_request: Any, exc: ProxyException) -> Any:  # as LiteLLM's app does
        from fastapi.responses import JSONResponse

        return JSONResponse({"error": exc.to_dict()}, status_code=int(exc.code or 500))

    router = APIRouter(route_class=JobsRoute)

    @router.get("/items")
    async def items(period: str = Query(), limit: int = Query(default=5, ge=1)) -> dict[str, Any]:
        return {"period": period, "limit": limit}

    app.include_router(router)
    client = TestClient(app)
    assert client.get("/items", params={"period": "2026-12"}).json() == {"period": "2026-12", "limit": 5}
    for params, param in (
        ({}, "period"),
        ({"period": "x", "limit": "abc"}, "limit"),
        ({"period": "x", "limit": "0"}, "limit"),
    ):
        r = client.get("/items", params=params)
        assert r.status_code == 400
        error = r.json()["error"]
        assert (error["type"], error["param"], error["code"]) == ("invalid_job_metadata", param, "400")
        assert error["message"].startswith(f"{param}: ")
