"""One test per LiteLLM behaviour the plugin relies on.

When the pinned LiteLLM range moves, these say which assumption broke. Behaviour that only a
running proxy shows (events, headers, shutdown order) is covered in tests/acceptance.
"""

from __future__ import annotations

import inspect

from litellm.integrations.custom_logger import CustomLogger
from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER
from litellm.proxy._types import ProxyException
from litellm.proxy.types_utils.utils import get_instance_fn

import litellm_jobs_plugin
from litellm_jobs_plugin.errors import InsufficientCredits, to_proxy_exception


def test_tested_litellm_version_is_in_the_pinned_range() -> None:
    # The range users get is pyproject's; these tests run on its floor and on its newest release.
    import tomllib
    from importlib.metadata import version
    from pathlib import Path

    from packaging.requirements import Requirement

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    litellm = next(Requirement(d) for d in pyproject["project"]["dependencies"] if Requirement(d).name == "litellm")
    assert litellm.extras == {"proxy"}
    assert str(litellm.specifier) == "<1.111,>=1.106.2"
    assert litellm.specifier.contains(version("litellm"))


def test_callbacks_resolve_a_package_attribute() -> None:
    assert get_instance_fn("litellm_jobs_plugin.plugin") is litellm_jobs_plugin.plugin


def test_shutdown_event_is_looked_up_by_name_at_shutdown() -> None:
    # We wrap proxy_server.proxy_shutdown_event to flush our buffer; that only works while the
    # lifespan calls it through the module global.
    import litellm.proxy.proxy_server as proxy_server

    assert inspect.iscoroutinefunction(proxy_server.proxy_shutdown_event)
    assert "await proxy_shutdown_event(" in inspect.getsource(proxy_server)


def test_logging_worker_can_be_flushed() -> None:
    assert inspect.iscoroutinefunction(GLOBAL_LOGGING_WORKER.flush)


def test_hook_signatures_match_what_the_plugin_defines() -> None:
    plugin_cls = type(litellm_jobs_plugin.plugin)
    for name in (
        "async_pre_call_hook",
        "async_log_success_event",
        "async_log_failure_event",
        "async_post_call_response_headers_hook",
    ):
        base = list(inspect.signature(getattr(CustomLogger, name)).parameters)
        ours = list(inspect.signature(getattr(plugin_cls, name)).parameters)
        assert ours == base, name


def test_proxy_exception_carries_our_type_and_status() -> None:
    exc = to_proxy_exception(InsufficientCredits("need 1 credit, 0 left"))
    assert isinstance(exc, ProxyException)
    assert (exc.type, exc.code, exc.message) == ("insufficient_credits", "402", "need 1 credit, 0 left")
    assert exc.to_dict()["type"] == "insufficient_credits"


def test_the_proxy_takes_a_calls_id_from_the_x_litellm_call_id_header() -> None:
    # The seed routes name each in-process call this way, to find its logging event (a stream's cost).
    from litellm.proxy import common_request_processing

    assert common_request_processing.resolve_litellm_call_id("our-call-id") == "our-call-id"
    source = inspect.getsource(common_request_processing)
    assert 'resolve_litellm_call_id(request.headers.get("x-litellm-call-id"))' in source


def test_the_proxy_model_groups_come_from_its_router() -> None:
    from litellm import Router

    router = Router(model_list=[{"model_name": "A", "litellm_params": {"model": "openai/x", "api_key": "k"}}])
    assert router.get_model_names() == ["A"]
