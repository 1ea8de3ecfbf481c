"""One piece of an open job's call path in process, called N times, for callgrind to count alone.

    valgrind --tool=callgrind --toggle-collect=functools_reduce \\
        .venv/bin/python -m bench.pieces pre 600      # and 100: the difference / 500 is one call's instructions

Pieces: ``pre`` (the whole pre-call hook), ``tag`` (reading and checking the job fields), ``decide``
(``decide_call``), ``admit`` (``CreditService.admit_call``, joining the open job), ``headers`` (the
response-headers hook), ``addcost`` (a call's cost added to its job), ``answer`` (the success record
built from a non-streamed answer), ``post`` (the whole post-call success hook: that record handed to
the writer's buffer and its cost added to the job; the writer's batch is not in it). Each runs inside
``functools.reduce``, so callgrind collects only it; the awaitable pieces never suspend in process and
are driven to their end in place. The request is ``bench/inproc.py``'s.
"""

from __future__ import annotations

import argparse
import functools
import sys
import types
from collections.abc import Callable, Coroutine
from decimal import Decimal
from typing import Any

import uvloop

from .inproc import request
from .procs import create_database, drop_database


def drive(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never suspends to its end, without the event loop."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("the piece suspended: it cannot be counted alone")


async def main(piece: str, n: int) -> None:
    from litellm.proxy._types import UserAPIKeyAuth

    from litellm_jobs_plugin import litellm_adapter as adapter
    from litellm_jobs_plugin.hooks import JobsPlugin
    from litellm_jobs_plugin.jobs import Caller, decide_call
    from litellm_jobs_plugin.metadata import parse_job_tag
    from litellm_jobs_plugin.settings import Settings

    database = create_database()
    plugin = JobsPlugin(Settings(database_url=database, untagged="single_call_job", reconcile_interval_s=0))  # type: ignore[arg-type]
    key = UserAPIKeyAuth(api_key="hashed-key", team_id="team-a", user_id="u1")
    try:
        await plugin.start()
        credits = await plugin.credits()
        await credits.grant("team-a", Decimal(10**9), kind="grant", idempotency_key="bench")
        job = "bench-job"
        data = request(job)
        await plugin.async_pre_call_hook(key, None, data, "acompletion")  # the job is open from here
        caller = Caller(team_id="team-a", key_hash="hashed-key", user_id="u1", is_admin=False)
        tag = parse_job_tag(adapter.client_metadata(data), adapter.job_headers(data))
        context = decide_call(
            tag, caller, call_id="c", settings=plugin.settings, requested_model="ChatAgent", record_call_id=None
        )
        install_router()
        answer = model_response()
        stashed = []  # requests through the pre-call hook, for the post-call pieces (each is recorded once)
        if piece in ("post", "answer"):
            for _ in range(n):
                one = request(job)
                await plugin.async_pre_call_hook(key, None, one, "acompletion")
                stashed.append(one)
        posted = iter(stashed)
        fresh = iter([request(job) for _ in range(n)])  # built before counting starts
        cost = Decimal("0.000015")
        pieces: dict[str, Callable[[Any, int], Any]] = {
            "pre": lambda _, __: drive(plugin.async_pre_call_hook(key, None, next(fresh), "acompletion")),
            "tag": lambda _, __: parse_job_tag(adapter.client_metadata(d := next(fresh)), adapter.job_headers(d)),
            "decide": lambda _, __: decide_call(
                tag, caller, call_id="c", settings=plugin.settings, requested_model="ChatAgent", record_call_id=None
            ),
            "admit": lambda _, __: drive(credits.admit_call(context)),
            "headers": lambda _, __: drive(plugin.async_post_call_response_headers_hook(data, key, object())),
            "addcost": lambda _, __: drive(credits.add_cost("team-a", job, cost)),
            "answer": lambda _, __: adapter.answer_event(d := next(posted), answer, adapter.stash_of_request(d)),
            "post": lambda _, __: drive(plugin.async_post_call_success_hook(next(posted), key, answer)),
        }
        functools.reduce(pieces[piece], range(n), None)
    finally:
        await plugin.aclose()
        drop_database(database)


def install_router() -> None:
    """A stand-in for the running proxy's router (the deployment a record names is looked up in it)."""
    deployment = {
        "model_name": "ChatAgent",
        "litellm_params": {"model": "openai/gpt-4o-mini"},
        "model_info": {"id": "deployment-1"},
    }
    router = types.SimpleNamespace(model_list=[deployment], model_group_alias={})
    sys.modules.setdefault("litellm.proxy.proxy_server", types.ModuleType("litellm.proxy.proxy_server"))
    sys.modules["litellm.proxy.proxy_server"].llm_router = router  # type: ignore[attr-defined]


def model_response() -> Any:
    """A non-streamed chat completion as LiteLLM hands it to the post-call hooks."""
    import litellm

    response = litellm.ModelResponse(
        id="chatcmpl-bench",
        model="gpt-4o-mini",
        choices=[{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Hello."}}],
        usage={"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21},
    )
    response._hidden_params = {
        "model_id": "deployment-1",
        "response_cost": 1.5e-05,
        "custom_llm_provider": "openai",
        "_response_ms": 20.0,
    }
    return response


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("piece", choices=["pre", "tag", "decide", "admit", "headers", "addcost", "answer", "post"])
    ap.add_argument("n", type=int)
    args = ap.parse_args()
    uvloop.run(main(args.piece, args.n))
