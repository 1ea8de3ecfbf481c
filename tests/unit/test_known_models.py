"""Only model names the proxy's router knows reach a call record (litellm_adapter.known_model)."""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Any

import pytest

from litellm_jobs_plugin import litellm_adapter
from litellm_jobs_plugin.litellm_adapter import MAX_MODEL_NAME, known_model


def deployment(name: str, model: str) -> dict[str, Any]:
    return {"model_name": name, "litellm_params": {"model": model}}


@pytest.fixture
def router(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    fake = SimpleNamespace(
        model_list=[deployment("ChatAgent", "openai/gpt-4o-mini")], model_group_alias={"gpt-4": "ChatAgent"}
    )
    monkeypatch.setitem(sys.modules, "litellm.proxy.proxy_server", SimpleNamespace(llm_router=fake))
    monkeypatch.setattr(litellm_adapter, "_known", ((0, 0, -1), frozenset(), 0.0))
    return fake


def test_the_routers_names_are_kept_and_others_dropped(router: SimpleNamespace) -> None:
    assert known_model("ChatAgent") == "ChatAgent"
    assert known_model("openai/gpt-4o-mini") == "openai/gpt-4o-mini"
    assert known_model("gpt-4") == "gpt-4"  # a model_group_alias
    assert known_model("no-such-model-" + "x" * 20_000) is None
    assert known_model(None) is None


def test_a_deployment_added_at_run_time_is_known_at_once(router: SimpleNamespace) -> None:
    assert known_model("Summarizer") is None
    router.model_list.append(deployment("Summarizer", "openai/gpt-4o"))  # LiteLLM's add_deployment appends
    assert known_model("Summarizer") == "Summarizer"
    router.model_list = [deployment("Extractor", "openai/gpt-4o")]  # set_model_list replaces the list
    assert known_model("Extractor") == "Extractor"
    assert known_model("ChatAgent") is None


def test_known_names_are_cut_to_length(router: SimpleNamespace) -> None:
    long_name = "g" * (MAX_MODEL_NAME + 10)
    router.model_list.append(deployment(long_name, "openai/gpt-4o"))
    assert known_model(long_name) == long_name[:MAX_MODEL_NAME]


def test_outside_a_proxy_a_name_is_only_cut_to_length(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "litellm.proxy.proxy_server", raising=False)
    assert known_model("anything") == "anything"
    assert known_model("x" * 20_000) == "x" * MAX_MODEL_NAME
