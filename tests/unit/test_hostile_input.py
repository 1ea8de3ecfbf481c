"""What a client trying not to pay (or to break the books) may send, refused before anything happens:
NaN and infinities in JSON, bodies past their limit, job ids of only dots, and a model answer that
an error message would otherwise echo and store. End to end: tests/acceptance/test_hostile_bodies.py."""

from __future__ import annotations

import math
from typing import Any

import pytest
from litellm.proxy._types import ProxyException
from starlette.requests import Request

from litellm_jobs_plugin.call_routes import EXCERPT_CHARS, AnswerRefused, check_structured
from litellm_jobs_plugin.errors import InvalidJobMetadata
from litellm_jobs_plugin.metadata import check_job_id, check_job_metadata, non_finite_at, parse_job_tag
from litellm_jobs_plugin.route_kit import _json_object, read_body

NAN, INF = float("nan"), float("inf")


# -- NaN, Infinity, -Infinity ------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b'{"job_type": "t", "metadata": {"n": NaN}}',
        b'{"status": "completed", "result": {"x": Infinity}}',
        b'{"status": "completed", "result": [1, -Infinity]}',
        b'{"amount": NaN, "idempotency_key": "k"}',
        b'{"status": "completed", "result": {"x": 1e400}}',  # valid JSON, read as an infinity
    ],
)
def test_non_standard_json_constants_in_a_body_are_a_400(raw: bytes) -> None:
    with pytest.raises(ProxyException) as info:
        _json_object(raw, 1 << 20, True)
    assert (info.value.code, info.value.type, info.value.param) == ("400", "invalid_job_metadata", "body")
    assert "not valid JSON" in info.value.message


def test_finite_numbers_and_strings_naming_the_constants_still_parse() -> None:
    raw = b'{"a": 1.5, "b": -2e300, "c": "NaN", "d": "Infinity", "e": 0}'
    assert _json_object(raw, 1 << 20, True) == {"a": 1.5, "b": -2e300, "c": "NaN", "d": "Infinity", "e": 0}


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_non_finite_floats_anywhere_in_tracked_call_metadata_are_refused(bad: float) -> None:
    """LiteLLM reads /v1/chat/completions bodies with Python's json when orjson refuses them: NaN
    arrives in the hook as a float, anywhere in the client's metadata."""
    for metadata in (
        {"job_id": "x", "job_type": "t", "anything": bad},
        {"job_id": "x", "job_type": "t", "deep": {"list": [1, {"v": bad}]}},
        {"job_id": "x", "job_metadata": {"n": bad}},
    ):
        with pytest.raises(InvalidJobMetadata) as info:
            parse_job_tag(metadata, {})
        assert info.value.status == 400
        assert info.value.type == "invalid_job_metadata"
        assert "NaN or an infinity" in info.value.message


def test_litellm_copy_of_the_client_metadata_is_what_is_checked() -> None:
    # LiteLLM adds its own fields beside the client's and keeps a copy of what the client sent.
    sent = {"job_id": "x", "job_type": "t", "anything": NAN}
    with pytest.raises(InvalidJobMetadata, match=r"metadata\.anything"):
        parse_job_tag({**sent, "requester_metadata": dict(sent), "user_api_key_spend": 0.0}, {})
    clean = {"job_id": "x", "job_type": "t"}
    tag = parse_job_tag({**clean, "requester_metadata": dict(clean), "queue_time_seconds": INF}, {})
    assert tag.job_id == "x"


def test_untagged_metadata_is_not_the_plugins_to_judge() -> None:
    assert parse_job_tag({"anything": NAN}, {}).job_id is None


def test_check_job_metadata_refuses_what_orjson_would_store_as_null() -> None:
    with pytest.raises(InvalidJobMetadata, match=r"metadata\.a\.0\.b"):
        check_job_metadata({"a": [{"b": NAN}]}, param="metadata")
    assert check_job_metadata({"a": [{"b": 1e308}]}, param="metadata") == {"a": [{"b": 1e308}]}


def test_non_finite_at_names_the_path_without_recursing() -> None:
    deep: Any = NAN
    for _ in range(50_000):
        deep = [deep]
    assert non_finite_at(deep) == ".".join(["0"] * 50_000)
    assert non_finite_at({"a": 1, "b": [True, None, "x", 2.5]}) is None
    assert math.isnan(NAN)  # the constants above are what they say


# -- job ids that do not survive a URL path ----------------------------------------------------


@pytest.mark.parametrize("job_id", [".", "..", "...", "." * 128])
def test_job_ids_of_only_dots_are_refused(job_id: str) -> None:
    with pytest.raises(InvalidJobMetadata, match="only dots") as info:
        check_job_id(job_id, param="job_id")
    assert info.value.param == "job_id"
    assert info.value.status == 400
    with pytest.raises(InvalidJobMetadata, match="only dots"):
        parse_job_tag({"job_id": job_id, "job_type": "t"}, {})
    with pytest.raises(InvalidJobMetadata, match="only dots"):
        parse_job_tag(None, {"x-job-id": job_id})


@pytest.mark.parametrize("job_id", [".a", "a.", "a..b", "..x..", "v1.2"])
def test_job_ids_with_dots_and_more_are_accepted(job_id: str) -> None:
    assert check_job_id(job_id) == job_id


# -- body limits bound memory ------------------------------------------------------------------


class Sender:
    """An ASGI receive that sends ``chunk`` ``times`` times, counting what was taken."""

    def __init__(self, chunk: bytes, times: int) -> None:
        self.chunk, self.left, self.taken = chunk, times, 0

    async def __call__(self) -> dict[str, Any]:
        self.left -= 1
        self.taken += 1
        return {"type": "http.request", "body": self.chunk, "more_body": self.left > 0}


def request_of(receive: Sender, headers: dict[str, str]) -> Request:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/jobs/create",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
    }
    return Request(scope, receive)


async def test_a_chunked_body_is_read_only_until_it_passes_the_limit() -> None:
    sender = Sender(b"x" * 1024, 300 * 1024)  # 300 MiB offered
    with pytest.raises(ProxyException) as info:
        await read_body(request_of(sender, {}), 64 * 1024)
    assert (info.value.code, info.value.param) == ("400", "body")
    assert sender.taken == 65  # 64 chunks fit; the 65th passes the limit and nothing more is read


async def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    sender = Sender(b"x" * 1024, 10)
    with pytest.raises(ProxyException) as info:
        await read_body(request_of(sender, {"content-length": str(300 << 20)}), 64 * 1024)
    assert "over 65536 bytes" in info.value.message
    assert sender.taken == 0


async def test_a_body_within_the_limit_is_read_once_and_left_for_litellms_auth() -> None:
    sender = Sender(b'{"job_type": "t"}', 1)
    request = request_of(sender, {"content-length": "17"})
    assert await read_body(request, 64 * 1024) == b'{"job_type": "t"}'
    # LiteLLM's auth dependency, next on the same request, reads the body again.
    assert await request.body() == b'{"job_type": "t"}'
    assert await request.json() == {"job_type": "t"}
    assert sender.taken == 1


# -- a refused structured answer is neither echoed whole nor stored ----------------------------

SCHEMA = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "A", "schema": SCHEMA}}
SECRET = "MODEL-ANSWER-" * 800  # 10,400 characters


@pytest.mark.parametrize(
    ("fmt", "content"),
    [
        (JSON_SCHEMA, f'{{"answer": "{SECRET}"}}'),  # valid JSON, not the schema's
        (JSON_SCHEMA, f'{{"{SECRET}": {{"answer": "x"}}, "answer": [{{"{SECRET}": 1}}]}}'),
        ({"type": "json_object"}, f"Sure! {SECRET}"),  # not JSON at all
        ({"type": "json_object"}, f'{{"a": NaN, "b": "{SECRET}"}}'),  # NaN is not JSON
    ],
)
def test_a_refused_answer_is_quoted_short_and_recorded_without_it(fmt: Any, content: str) -> None:
    with pytest.raises(AnswerRefused) as info:
        check_structured(fmt, content)
    message, record = info.value.message, info.value.record
    assert info.value.status == 502
    assert info.value.type == "invalid_structured_output"
    assert len(message) <= 2 * EXCERPT_CHARS + 300, len(message)
    assert "MODEL-ANSWER-" * 20 not in message  # at most an excerpt of the answer is quoted
    assert "MODEL-ANSWER" not in record  # what is stored holds no part of the answer
    assert len(record) <= 400


def test_a_short_refused_answer_is_quoted_whole_and_recorded_by_its_rule() -> None:
    with pytest.raises(AnswerRefused) as info:
        check_structured(JSON_SCHEMA, '{"answer": "three"}')
    assert "'three' is not of type 'integer'" in info.value.message
    assert "truncated" not in info.value.message
    assert info.value.record == ("The model's answer does not match the schema: type rule at properties/answer/type.")
