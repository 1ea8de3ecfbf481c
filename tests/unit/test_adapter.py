from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from litellm_jobs_plugin import litellm_adapter as adapter
from litellm_jobs_plugin.models import CallStatus
from tests.support.events import context


def kwargs(call_id: str = "call-1", *, stash: bool = True, **slo: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"job_id": "j1"}
    if stash:
        adapter.put_stash({"metadata": meta}, context())
    return {
        "litellm_call_id": call_id,
        "response_cost": 3.6000000000000003e-06,
        "litellm_params": {"metadata": meta},
        "standard_logging_object": {
            "model_group": "ChatAgent",
            "model": "openai/gpt-4o-mini",
            "model_id": "dep-1",
            "custom_llm_provider": "openai",
            "prompt_tokens": 7,
            "completion_tokens": 3,
            "cache_hit": None,
            "stream": True,
            "startTime": 1000.0,
            "endTime": 1000.25,
            "call_type": "acompletion",
            **slo,
        },
    }


def test_success_event_carries_litellms_cost_digit_for_digit() -> None:
    e = adapter.call_event(kwargs(), None, None, CallStatus.SUCCESS)
    assert e is not None
    assert e.cost_usd == Decimal("3.6000000000000003E-6")
    assert (e.event_id, e.model_group, e.model, e.provider) == (
        "6:team-a:call-1:success",
        "ChatAgent",
        "openai/gpt-4o-mini",
        "openai",
    )
    assert (e.prompt_tokens, e.completion_tokens, e.latency_ms, e.stream) == (7, 3, 250, True)
    assert e.started_at == datetime.fromtimestamp(1000.0, tz=UTC)
    assert e.context == context()


def test_calls_without_our_stash_are_not_ours() -> None:
    assert adapter.call_event(kwargs(stash=False), None, None, CallStatus.FAILURE) is None


def test_failed_attempts_have_distinct_stable_ids() -> None:
    primary = kwargs(model_id="dep-1", error_information={"error_class": "InternalServerError", "error_code": 500})
    retry = kwargs(model_id="dep-1", startTime=1001.0)
    a = adapter.call_event(primary, None, None, CallStatus.FAILURE)
    b = adapter.call_event(retry, None, None, CallStatus.FAILURE)
    again = adapter.call_event(primary, None, None, CallStatus.FAILURE)
    assert a is not None
    assert b is not None
    assert again is not None
    assert a.event_id != b.event_id
    assert a.event_id == again.event_id
    assert (a.error_type, a.error_code) == ("InternalServerError", "500")


def test_a_client_cannot_forge_the_stash() -> None:
    data: dict[str, Any] = {"metadata": {"job_id": "x", adapter.STASH_KEY: {"team_id": "victim"}}}
    adapter.pop_stash(data)
    assert adapter.STASH_KEY not in data["metadata"]


def test_job_type_is_mirrored_into_litellm_tags_once() -> None:
    data: dict[str, Any] = {"metadata": {"tags": ["mine"]}}
    adapter.add_request_tag(data, "job_type:doc")
    adapter.add_request_tag(data, "job_type:doc")
    assert data["metadata"]["tags"] == ["mine", "job_type:doc"]


def test_bad_values_from_litellm_do_not_break_the_event() -> None:
    e = adapter.call_event(
        kwargs(prompt_tokens=-1, completion_tokens="3", response_cost=None) | {"response_cost": float("nan")},
        None,
        None,
        CallStatus.SUCCESS,
    )
    assert e is not None
    assert (e.prompt_tokens, e.completion_tokens, e.cost_usd) == (0, 0, Decimal(0))


def test_a_stash_this_process_did_not_write_is_ignored() -> None:
    forged = kwargs(stash=False)
    forged["litellm_params"]["metadata"][adapter.STASH_KEY] = {**context().to_stash(), "_secret": "guess"}
    assert adapter.call_event(forged, None, None, CallStatus.FAILURE) is None
    body: dict[str, Any] = {"metadata": {adapter.STASH_KEY: context(single_call=True).to_stash()}}
    assert adapter.stash_of_request(body) is None
    adapter.put_stash(body, context(single_call=True))
    assert adapter.stash_of_request(body) == context(single_call=True)


def test_a_client_chosen_call_id_gets_a_fresh_record_id_per_request() -> None:
    chosen = {"proxy_server_request": {"headers": {adapter.CALL_ID_HEADER: "same-1"}}}
    first, second = adapter.record_call_id(chosen, "same-1"), adapter.record_call_id(chosen, "same-1")
    assert first is not None
    assert second is not None
    assert first != second
    assert first.startswith("same-1~")
    # LiteLLM chose the id (no header): the record keeps it.
    assert adapter.record_call_id({"proxy_server_request": {"headers": {}}}, "uuid-1") is None
    assert adapter.record_call_id({}, "uuid-1") is None
    # Our own routes prove their ids; a client's guess at the proof does not pass.
    proof = adapter.call_id_proof("r-1")
    ours = {"proxy_server_request": {"headers": {adapter.CALL_ID_HEADER: "r-1", adapter.CALL_ID_PROOF_HEADER: proof}}}
    assert adapter.record_call_id(ours, "r-1") is None
    forged = {"proxy_server_request": {"headers": {adapter.CALL_ID_HEADER: "r-1", adapter.CALL_ID_PROOF_HEADER: "0"}}}
    assert adapter.record_call_id(forged, "r-1") is not None


def test_the_record_id_in_the_stash_names_every_event_of_the_request() -> None:
    data: dict[str, Any] = {"metadata": {}}
    adapter.put_stash(data, dataclasses.replace(context(), call_id="same-1~00ff"))
    event = adapter.call_event(
        {"litellm_call_id": "same-1", "litellm_params": {"metadata": data["metadata"]}}, 0.0, 1.0, CallStatus.SUCCESS
    )
    assert event is not None
    assert event.call_id == "same-1~00ff"


def test_a_stash_read_again_gives_its_context_and_a_copied_stash_still_reads() -> None:
    import copy

    body: dict[str, Any] = {"metadata": {}}
    adapter.put_stash(body, context(single_call=True), credits_remaining="12.5")
    first = adapter.stash_of_request(body)
    assert first is not None
    assert first == dataclasses.replace(context(single_call=True), credits_remaining="12.5")
    assert adapter.stash_of_request(body) is first  # rebuilt once, then read back
    copied = copy.deepcopy(body)  # another tuple: rebuilt, equal
    assert adapter.stash_of_request(copied) == first
    serialised = {"metadata": {adapter.STASH_KEY: {**body["metadata"][adapter.STASH_KEY]}}}
    serialised["metadata"][adapter.STASH_KEY]["context"] = list(body["metadata"][adapter.STASH_KEY]["context"])
    assert adapter.stash_of_request(serialised) == first  # a list (JSON and back) reads too
    # another stash never gets this one's context, however many came between
    for i in range(adapter._REBUILT_MAX + 5):
        other: dict[str, Any] = {"metadata": {}}
        adapter.put_stash(other, context(), credits_remaining=str(i))
        got = adapter.stash_of_request(other)
        assert got is not None
        assert got.credits_remaining == str(i)
    assert len(adapter._rebuilt) <= adapter._REBUILT_MAX
    assert adapter.stash_of_request(body) == first
