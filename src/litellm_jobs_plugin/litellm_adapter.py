"""The only module that reads LiteLLM's untyped ``data`` and logging ``kwargs``.

Everything past this module works on :mod:`litellm_jobs_plugin.models` values. The facts relied on
are covered by ``tests/contract``, one test each.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import operator
import secrets
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from .models import CallContext, CallEvent, CallStatus

#: Where the pre-call hook leaves its decision in the request's LiteLLM metadata. The hook pops
#: any client-supplied value first, so a client cannot forge it.
STASH_KEY = "litellm_jobs"
#: LiteLLM keeps its own per-request fields under one of these keys of ``data``.
_METADATA_KEYS = ("litellm_metadata", "metadata")
#: A request is handled by one process from its pre-call hook to its last logging event, so a stash
#: is trusted only if it carries this process's secret. A stash in a body that never went through our
#: pre-call hook (LiteLLM passes the raw body to failure hooks when its auth rejects a request) is
#: ignored, whatever it says.
_STASH_SECRET = secrets.token_hex(16)
_SECRET_FIELD = "_secret"


def litellm_metadata(data: dict[str, Any]) -> dict[str, Any]:
    """The dict LiteLLM logs as the request's metadata (created if missing)."""
    for key in _METADATA_KEYS:
        value = data.get(key)
        if isinstance(value, dict) and (key == "metadata" or value):
            return value
    fresh: dict[str, Any] = {}
    data["metadata"] = fresh
    return fresh


def client_metadata(data: Mapping[str, Any]) -> object:
    """The request body's ``metadata`` as the client sent it (with LiteLLM's additions)."""
    return data.get("metadata")


#: The request headers a call may name its job with.
JOB_HEADERS = ("x-job-id", "x-job-type")


def job_headers(data: Mapping[str, Any]) -> dict[str, str]:
    """The job headers of the request (``x-job-id``, ``x-job-type``), from the first place that has each.

    Header names are lower-case in ASGI (Starlette), and LiteLLM copies them as they are: each place
    is looked up, never scanned (a request carries a dozen other headers).
    """
    found: dict[str, str] = {}
    psr = data.get("proxy_server_request")
    sources: list[object] = [psr.get("headers") if isinstance(psr, dict) else None]
    for key in _METADATA_KEYS:
        meta = data.get(key)
        if isinstance(meta, dict):
            sources.append(meta.get("headers"))
    for source in sources:
        if type(source) is dict or isinstance(source, Mapping):  # a dict, without the ABC check, as a rule
            for name in JOB_HEADERS:
                value = source.get(name)
                if isinstance(value, str) and name not in found:
                    found[name] = value
    return found


#: LiteLLM takes a call's id from this request header when the client sends one.
CALL_ID_HEADER = "x-litellm-call-id"
#: Our own routes name their in-process calls; this header proves the id is theirs, not a client's.
CALL_ID_PROOF_HEADER = "x-litellm-jobs-call-proof"


def call_id_proof(call_id: str) -> str:
    """What :data:`CALL_ID_PROOF_HEADER` carries for ``call_id`` (only this process can make it)."""
    return hmac.new(_STASH_SECRET.encode(), call_id.encode(), hashlib.sha256).hexdigest()


def record_call_id(data: Mapping[str, Any], call_id: str) -> str | None:
    """The id of this request's call record when the client chose LiteLLM's call id, else None.

    A client may send ``x-litellm-call-id``, and LiteLLM takes it as the call's id. Records are keyed
    by call id (a replayed logging event is the same record), so a client reusing an id would hide
    every answered call after the first. Such a request's record gets the client's id with a random
    suffix instead: one record per request, which every attempt of the request (fallbacks, retries
    inside LiteLLM) and every replay of its logging events share, because it travels in the stash.
    """
    psr = data.get("proxy_server_request")
    headers = psr.get("headers") if isinstance(psr, dict) else None
    if not (type(headers) is dict or isinstance(headers, Mapping)) or headers.get(CALL_ID_HEADER) is None:
        return None
    proof = headers.get(CALL_ID_PROOF_HEADER)
    if isinstance(proof, str) and hmac.compare_digest(proof, call_id_proof(call_id)):
        return None  # one of our routes named the call
    return f"{call_id}~{secrets.token_hex(8)}"


#: The call types of a chat completion as the pre-call hook is told them.
_CHAT_CALL_TYPES = frozenset({"acompletion", "completion"})


def defer_success_logging(data: Mapping[str, Any], call_type: object) -> bool:
    """Ask LiteLLM to start a non-streamed chat call's success logging only after the post-call hooks.

    LiteLLM schedules that logging (building its logging payload, running every logger) as soon as
    the call returns, before the post-call hooks; a hook that waits for I/O (the plugin's record in
    Redis) lets it run first, on the answer's path. LiteLLM has a switch for exactly this order (the
    one its post-call guardrails use): ``defer_async_logging`` on the call's logging object, which the
    proxy fires once the post-call hooks are done. Only set where the proxy fires it (a chat
    completion, not streamed, on a release that has it). True when set.
    Covered by ``tests/contract/test_answer_record.py`` (every call still logged, after the answer).
    """
    if data.get("stream") is True or str(getattr(call_type, "value", call_type)) not in _CHAT_CALL_TYPES:
        return False
    logging_obj = data.get("litellm_logging_obj")
    if logging_obj is None or not hasattr(logging_obj, "enqueue_deferred_logging"):
        return False
    logging_obj.defer_async_logging = True
    return True


def success_logging_deferred(data: Mapping[str, Any]) -> bool:
    """LiteLLM will log this non-streamed call's success only after the post-call hooks have run.

    LiteLLM 1.109 and later store the success logging of a non-streamed call on its logging object
    (``enqueue_deferred_logging``) and fire it once the post-call success hooks are done; earlier
    releases log it as soon as the call returns, before those hooks.
    """
    logging_obj = data.get("litellm_logging_obj")
    return callable(getattr(logging_obj, "enqueue_deferred_logging", None))


def pop_stash(data: dict[str, Any]) -> None:
    for key in _METADATA_KEYS:
        meta = data.get(key)
        if isinstance(meta, dict):
            meta.pop(STASH_KEY, None)


#: A stash holds the context's field values in declaration order: rebuilt without decoding each
#: field (the secret proves this process wrote them), and still readable if LiteLLM ever copies
#: or serialises the metadata (a tuple then comes back as a list).
_CONTEXT_FIELDS = tuple(f.name for f in dataclasses.fields(CallContext))
_context_values = operator.attrgetter(*_CONTEXT_FIELDS)
_CREDITS_REMAINING = _CONTEXT_FIELDS.index("credits_remaining")
_VALUES_FIELD = "context"


def put_stash(data: dict[str, Any], context: CallContext, *, credits_remaining: str | None = None) -> None:
    """Leave ``context`` (with the balance after admission, for the response header) in ``data``'s metadata."""
    values: tuple[Any, ...] = _context_values(context)
    if credits_remaining is not None:
        values = (*values[:_CREDITS_REMAINING], credits_remaining, *values[_CREDITS_REMAINING + 1 :])
    litellm_metadata(data)[STASH_KEY] = {_SECRET_FIELD: _STASH_SECRET, _VALUES_FIELD: values}


#: CallContexts rebuilt from stashes, by the identity of the stash's values (the hooks after the
#: pre-call hook read one stash three times). Each entry keeps its tuple, so no other object can
#: take its id while it is here; a full cache starts again empty.
_rebuilt: dict[int, tuple[tuple[Any, ...], CallContext]] = {}
_REBUILT_MAX = 512


def read_stash(meta: object) -> CallContext | None:
    """The CallContext this process's pre-call hook left in ``meta``, or None (absent or forged)."""
    if not isinstance(meta, dict):
        return None
    stash = meta.get(STASH_KEY)
    if not isinstance(stash, dict):
        return None
    secret = stash.get(_SECRET_FIELD)
    if not isinstance(secret, str) or not hmac.compare_digest(secret, _STASH_SECRET):
        return None
    values = stash.get(_VALUES_FIELD)
    if type(values) is tuple:
        seen = _rebuilt.get(id(values))
        if seen is not None and seen[0] is values:
            return seen[1]
    if not isinstance(values, (tuple, list)) or len(values) != len(_CONTEXT_FIELDS):
        return None
    context = CallContext(*values)
    if type(values) is tuple:
        if len(_rebuilt) >= _REBUILT_MAX:
            _rebuilt.clear()  # one step, whatever else reads it meanwhile
        _rebuilt[id(values)] = (values, context)
    return context


def stash_of_request(data: dict[str, Any]) -> CallContext | None:
    for key in _METADATA_KEYS:
        context = read_stash(data.get(key))
        if context is not None:
            return context
    return None


def add_request_tag(data: dict[str, Any], tag: str) -> None:
    """Mirror a tag into LiteLLM's request tags (shown by the proxy's /ui and spend logs)."""
    meta = litellm_metadata(data)
    tags = meta.get("tags")
    if not isinstance(tags, list):
        tags = []
    if tag not in tags:
        tags.append(tag)
    meta["tags"] = tags


def is_proxy_admin(user_api_key_dict: Any) -> bool:
    role = getattr(user_api_key_dict, "user_role", None)
    value = getattr(role, "value", role)
    return value == "proxy_admin"


def key_identity(user_api_key_dict: Any) -> tuple[str | None, str | None, str | None]:
    """(team_id, hashed key, user_id) of the caller's key."""
    return (
        _text(getattr(user_api_key_dict, "team_id", None)),
        _text(getattr(user_api_key_dict, "api_key", None)) or _text(getattr(user_api_key_dict, "token", None)),
        _text(getattr(user_api_key_dict, "user_id", None)),
    )


def _stash_of(kwargs: Mapping[str, Any]) -> CallContext | None:
    params = kwargs.get("litellm_params")
    if not isinstance(params, dict):
        return None
    for key in _METADATA_KEYS:
        context = read_stash(params.get(key))
        if context is not None:
            return context
    return None


def logged_record_id(kwargs: Mapping[str, Any]) -> str | None:
    """The record id of a logging event's call (ours when the client chose LiteLLM's), reading nothing else."""
    context = _stash_of(kwargs)
    call_id = context.call_id if context is not None and context.call_id else kwargs.get("litellm_call_id")
    return call_id if isinstance(call_id, str) else None


def event_id_of(team_id: str | None, call_id: str, status: CallStatus, attempt: str = "") -> str:
    """The idempotency key of one logging event, scoped to the team (clients may choose call ids).

    One success per call: a replayed success is the same event. Each failed attempt (primary,
    retries, fallbacks) is its own event, named by a digest of the attempt, the same on a replay.
    """
    team = team_id or ""
    scope = f"{len(team)}:{team}:{call_id}"
    if status is CallStatus.SUCCESS:
        return f"{scope}:success"
    return f"{scope}:failure:{hashlib.sha256(attempt.encode()).hexdigest()[:24]}"


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _cost(value: object) -> Decimal:
    # isinstance with a tuple, not ``int | float``: on the call path a union would be built on every call
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        return Decimal(0)
    try:
        cost = Decimal(str(value))
    except InvalidOperation:
        return Decimal(0)
    return cost if cost.is_finite() and cost >= 0 else Decimal(0)


def _when(value: object, fallback: object) -> datetime:
    for candidate in (value, fallback):
        if isinstance(candidate, (int, float)) and not isinstance(candidate, bool):
            return datetime.fromtimestamp(float(candidate), UTC)
        if isinstance(candidate, datetime):
            return candidate if candidate.tzinfo else candidate.astimezone(UTC)
    return datetime.now(UTC)


def call_event(kwargs: Mapping[str, Any], start_time: object, end_time: object, status: CallStatus) -> CallEvent | None:
    """The :class:`CallEvent` of one LiteLLM logging event, or None for calls we do not track.

    Calls without our stash never passed our pre-call hook as tracked calls (our own rejections,
    LiteLLM's internal health checks): they are not ours to record.
    """
    context = _stash_of(kwargs)
    if context is None:
        return None
    call_id = context.call_id or _text(kwargs.get("litellm_call_id"))
    if call_id is None:
        return None
    slo = kwargs.get("standard_logging_object")
    slo = slo if isinstance(slo, dict) else {}
    started = _when(slo.get("startTime"), start_time)
    ended = _when(slo.get("endTime"), end_time)
    model_id = _text(slo.get("model_id"))
    error_info = slo.get("error_information") if status is CallStatus.FAILURE else None
    error_info = error_info if isinstance(error_info, dict) else {}
    exception = kwargs.get("exception")
    error_type = _text(error_info.get("error_class")) or (
        type(exception).__name__ if exception is not None and status is CallStatus.FAILURE else None
    )
    event_id = event_id_of(context.team_id, call_id, status, f"{model_id}|{slo.get('model')}|{started.timestamp()!r}")
    response_cost = kwargs.get("response_cost")
    return CallEvent(
        event_id=event_id,
        call_id=call_id,
        context=_known_request(context),
        status=status,
        call_type=_text(slo.get("call_type")) or _text(kwargs.get("call_type")),
        model_group=known_model(_text(slo.get("model_group"))),
        model=known_model(_text(slo.get("model")) or _text(kwargs.get("model"))),
        model_id=model_id,
        provider=_text(slo.get("custom_llm_provider")),
        prompt_tokens=_int(slo.get("prompt_tokens")),
        completion_tokens=_int(slo.get("completion_tokens")),
        cost_usd=_cost(response_cost if response_cost is not None else slo.get("response_cost")),
        cache_hit=slo.get("cache_hit") is True,
        stream=slo.get("stream") is True or kwargs.get("stream") is True,
        started_at=started,
        ended_at=ended,
        latency_ms=max(0, round((ended - started).total_seconds() * 1000)),
        error_type=error_type,
        error_code=_text(str(error_info.get("error_code"))) if error_info.get("error_code") else None,
    )


def answer_event(data: dict[str, Any], response: object, context: CallContext) -> CallEvent | None:
    """The success record of a non-streamed answer, built from the answer itself (post-call hook).

    LiteLLM fills a response's ``_hidden_params`` before any post-call hook runs: the deployment that
    answered (``model_id``), the provider and the cost; the cost LiteLLM later logs is that one, or 0
    for a cache hit (``Logging._process_hidden_params_and_response_cost``). So the record a success
    event would carry can be made here, before the answer leaves, without waiting for LiteLLM's
    logging. ``context`` is the request's stash. None when the answer is not such a response (then
    the success event records it).
    Covered by ``tests/contract/test_answer_record.py``, which compares both records field by field.
    """
    hidden = _hidden_params_of(response)
    usage = _usage_of(response)
    if not isinstance(hidden, dict) or usage is None or getattr(response, "object", None) != "chat.completion":
        return None
    call_id = context.call_id or _text(data.get("litellm_call_id"))
    model_id = _text(hidden.get("model_id"))
    cost = hidden.get("response_cost")
    if call_id is None or model_id is None or cost is None:
        return None
    deployment = deployment_of(model_id)
    if deployment is None:
        return None
    cache_hit = hidden.get("cache_hit") is True
    ended = datetime.now(UTC)  # positional: a C function's keywords cost a dict
    elapsed = hidden.get("_response_ms")
    latency_ms = round(elapsed) if isinstance(elapsed, (int, float)) and elapsed >= 0 else 0
    return CallEvent(
        event_id=event_id_of(context.team_id, call_id, CallStatus.SUCCESS),
        call_id=call_id,
        context=_known_request(context),
        status=CallStatus.SUCCESS,
        call_type=_call_type_of(data),
        model_group=deployment[0],
        model=deployment[1],
        model_id=model_id,
        provider=_text(hidden.get("custom_llm_provider")) or _provider_of(data),
        prompt_tokens=_int(getattr(usage, "prompt_tokens", 0)),
        completion_tokens=_int(getattr(usage, "completion_tokens", 0)),
        cost_usd=Decimal(0) if cache_hit else _cost(cost),
        cache_hit=cache_hit,
        stream=False,
        started_at=ended - timedelta(0, 0, 0, latency_ms),  # positional: milliseconds (kwargs cost more)
        ended_at=ended,
        latency_ms=latency_ms,
        error_type=None,
        error_code=None,
    )


def _hidden_params_of(response: object) -> object:
    """The response's ``_hidden_params``: read from pydantic's private attributes directly (reading it as an
    attribute goes through pydantic's ``__getattr__``, several times slower), else as an attribute."""
    private = getattr(response, "__pydantic_private__", None)
    if isinstance(private, dict):
        hidden = private.get("_hidden_params")
        if hidden is not None:
            return hidden
    return getattr(response, "_hidden_params", None)


def _usage_of(response: object) -> object:
    """The response's ``usage``: LiteLLM keeps it among pydantic's extra fields, where reading it as an
    attribute fails once inside pydantic before its ``__getattr__`` finds it (16 times slower)."""
    extra = getattr(response, "__pydantic_extra__", None)
    usage = extra.get("usage") if isinstance(extra, dict) else None
    return usage if usage is not None else getattr(response, "usage", None)


def _provider_of(data: Mapping[str, Any]) -> str | None:
    """The provider LiteLLM's logging object names (a cache hit's answer does not carry it)."""
    details = getattr(data.get("litellm_logging_obj"), "model_call_details", None)
    return _text(details.get("custom_llm_provider")) if isinstance(details, dict) else None


def _call_type_of(data: Mapping[str, Any]) -> str | None:
    logging_obj = data.get("litellm_logging_obj")
    call_type = getattr(logging_obj, "call_type", None)
    return _text(getattr(call_type, "value", call_type))


def proxy_model_groups() -> list[str]:
    """The model groups of the running proxy, in config order ([] outside a proxy)."""
    proxy_server = sys.modules.get("litellm.proxy.proxy_server")
    router = getattr(proxy_server, "llm_router", None)
    if router is None:
        return []
    names = router.get_model_names()
    return [n for n in names if isinstance(n, str)]


#: The longest model name a call record keeps (the router's names are the operator's, and short).
MAX_MODEL_NAME = 256
#: A name the router does not know makes the known names be rebuilt at most this often (a deployment
#: added or replaced at run time is then known within a second; a flood of bogus names costs nothing).
_KNOWN_REBUILD_S = 1.0
#: (the router and its model list the names were built from, the names, when they were built)
_known: tuple[tuple[int, int, int], frozenset[str], float] = ((0, 0, -1), frozenset(), 0.0)
#: (the router and its model list the map was built from, deployment id → (model group, model))
_deployments: tuple[tuple[int, int, int], dict[str, tuple[str | None, str | None]]] = ((0, 0, -1), {})


def _router_shape(router: Any) -> tuple[tuple[int, int, int], Any]:
    model_list = getattr(router, "model_list", None) or ()
    return (id(router), id(model_list), len(model_list)), model_list


def deployment_of(model_id: str) -> tuple[str | None, str | None] | None:
    """(model group, model) of the router's deployment ``model_id``, as a success event logs them; None if unknown.

    A dict lookup; the map is rebuilt when the router's model list changes (as :func:`known_model`'s names are).
    """
    global _deployments
    proxy_server = sys.modules.get("litellm.proxy.proxy_server")
    router = getattr(proxy_server, "llm_router", None)
    if router is None:
        return None
    shape, model_list = _router_shape(router)
    built_shape, found = _deployments
    if shape != built_shape:
        found = {}
        for deployment in model_list:
            if not isinstance(deployment, Mapping):
                continue
            info, params = deployment.get("model_info"), deployment.get("litellm_params")
            key = info.get("id") if isinstance(info, Mapping) else None
            if isinstance(key, str):
                model = params.get("model") if isinstance(params, Mapping) else None
                group = deployment.get("model_name")
                found[key] = (
                    group[:MAX_MODEL_NAME] if isinstance(group, str) else None,
                    model[:MAX_MODEL_NAME] if isinstance(model, str) else None,
                )
        _deployments = (shape, found)
    return found.get(model_id)


def _router_names(router: Any) -> frozenset[str]:
    """The router's model groups, model group aliases and its deployments' models."""
    names: set[str] = set()
    for deployment in getattr(router, "model_list", None) or ():
        if not isinstance(deployment, Mapping):
            continue
        params = deployment.get("litellm_params")
        model = params.get("model") if isinstance(params, Mapping) else None
        names.update(n for n in (deployment.get("model_name"), model) if isinstance(n, str))
    aliases = getattr(router, "model_group_alias", None)
    if isinstance(aliases, Mapping):
        names.update(n for n in aliases if isinstance(n, str))
    return frozenset(names)


def known_model(name: str | None) -> str | None:
    """``name`` if the proxy's router knows it (a model group, an alias, a deployment's model), else None.

    A call naming a model the router does not know fails before any upstream call, yet LiteLLM logs
    it with the client's string as its model: kept, every such call would add that string (of any
    length) to its job's ``models_used``. Only the router's own names reach a record, at most
    :data:`MAX_MODEL_NAME` characters. The check is a set lookup; the set is rebuilt when the
    router's model list changes (or, on a miss, at most once a second). Outside a proxy (no router)
    there is nothing to check against: the name is only cut to length.
    """
    global _known
    if name is None:
        return None
    proxy_server = sys.modules.get("litellm.proxy.proxy_server")
    router = getattr(proxy_server, "llm_router", None)
    if router is None:
        return name[:MAX_MODEL_NAME]
    model_list = getattr(router, "model_list", None) or ()
    shape = (id(router), id(model_list), len(model_list))
    built_shape, names, built_at = _known
    if shape != built_shape or (name not in names and time.monotonic() - built_at >= _KNOWN_REBUILD_S):
        names = _router_names(router)
        _known = (shape, names, time.monotonic())
    return name[:MAX_MODEL_NAME] if name in names else None


def _known_request(context: CallContext) -> CallContext:
    """``context`` without its requested model when the router does not know it (see :func:`known_model`)."""
    requested = context.requested_model
    if requested is None or known_model(requested) == requested:
        return context
    return dataclasses.replace(context, requested_model=known_model(requested))
