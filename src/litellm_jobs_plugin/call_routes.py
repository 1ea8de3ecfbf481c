"""The seed system's call routes, served by the proxy: ``llm-call``,
``llm-call-stream`` and ``create-and-call``.

Each runs the proxy's own ``/v1/chat/completions`` in process (:class:`~.proxy_call.ProxyCall`)
with the job named in the request's metadata, so LiteLLM's auth, our hooks, routing, fallbacks,
cache and budgets apply exactly as for a client's own call. Answers are supersets: the OpenAI body
plus the seed's fields (``call_id``, ``response``, ``metadata``, ``job_id``, ``cost_usd``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import jsonschema
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import ConfigDict, Field

from . import litellm_adapter
from . import money as money_
from .errors import InvalidJobMetadata, InvalidStructuredOutput, to_proxy_exception
from .jobs import new_job_id
from .metadata import check_job_id, check_job_metadata, check_job_type, check_purpose
from .models import CallEvent, JobStatus
from .proxy_call import SSE_DONE, ProxyCall, Relay, sse_data, sse_event
from .route_kit import (
    MAX_CALL_BODY_BYTES,
    Body,
    CreateJobBody,
    JSONResponse,
    answer,
    caller_of,
    closed_job_answer,
    documented_body,
    json_object_body,
    money,
    open_job,
    parse,
    team_for,
    user_api_key_auth,
)

if TYPE_CHECKING:
    from .runtime import JobsRuntime

T = TypeVar("T")
_log = logging.getLogger("litellm_jobs_plugin")

#: Response headers of the in-process call that our answer carries on (LiteLLM's and ours).
_PASSED_HEADER_PREFIXES = (
    "x-litellm-",
    "x-job-",
    "x-credits-",
    "x-ratelimit-",
    "x-should-retry",
    "retry-after",
    "llm_provider-",
)


class LLMCallBody(Body):
    """OpenAI chat parameters plus the seed's fields; unknown keys are OpenAI's and pass through."""

    model_config = ConfigDict(extra="allow")

    messages: list[dict[str, Any]] = Field(min_length=1)
    model: str | None = Field(default=None, min_length=1, max_length=256)
    model_group: str | None = Field(default=None, min_length=1, max_length=256)  # the seed's name for it
    purpose: str | None = None
    team_id: str | None = None
    job_type: str | None = None
    #: LiteLLM request metadata (tags, ...); the job fields are ours and win.
    metadata: dict[str, Any] | None = None
    stream: bool | None = None


class CreateAndCallBody(LLMCallBody):
    job_type: str
    job_id: str | None = None
    #: In create-and-call, as in /create, ``metadata`` is the job's metadata.
    max_calls: int | None = Field(default=None, ge=1, le=1_000_000)
    max_cost_usd: Decimal | None = Field(default=None, gt=0, max_digits=30)
    user_id: str | None = Field(default=None, min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")


@dataclass(frozen=True, slots=True)
class CallPlan:
    """One in-process call of a seed route: which job, model and body, under which call id."""

    job_id: str
    team_id: str
    call_id: str
    model: str
    purpose: str | None
    body: dict[str, Any]
    started: float


@dataclass(frozen=True, slots=True)
class StreamOutcome:
    final: dict[str, Any]  # the last event: usage, cost and the seed's fields
    error: dict[str, Any] | None  # the error event, if the stream failed


def _model_of(runtime: JobsRuntime, req: LLMCallBody) -> str:
    model = req.model or req.model_group or runtime.settings.default_model
    if model is None:
        groups = litellm_adapter.proxy_model_groups()
        model = groups[0] if groups else None
    if model is None:
        raise InvalidJobMetadata(
            "model is required: name a model group (or set JOBS_DEFAULT_MODEL on the proxy).", param="model"
        )
    return model


def plan_call(
    runtime: JobsRuntime,
    key: Any,
    req: LLMCallBody,
    job_id: str,
    *,
    job_type: str | None,
    stream: bool,
    request_metadata: Mapping[str, Any] | None,
) -> CallPlan:
    named = (request_metadata or {}).get("team_id")
    if req.team_id is not None and named is not None and named != req.team_id:
        raise InvalidJobMetadata("team_id and metadata.team_id disagree; send one of them.", param="team_id")
    team = team_for(key, req.team_id if req.team_id is not None else named)  # not the key's: 403 (unless admin)
    purpose = check_purpose(req.purpose, param="purpose") if req.purpose is not None else None
    meta: dict[str, Any] = dict(request_metadata or {})
    meta["job_id"] = job_id
    if job_type is not None:
        meta["job_type"] = check_job_type(job_type, param="job_type")
    if purpose is not None:
        meta["purpose"] = purpose
    if caller_of(key).is_admin:
        meta["team_id"] = team
    params = dict(req.model_extra or {})
    params.pop("litellm_call_id", None)  # the route names the call
    body: dict[str, Any] = {**params, "model": _model_of(runtime, req), "messages": req.messages, "metadata": meta}
    if stream:
        options = params.get("stream_options")
        body["stream"] = True
        body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    else:
        body.pop("stream", None)
        body.pop("stream_options", None)
    return CallPlan(
        job_id=job_id,
        team_id=team,
        call_id=str(uuid.uuid4()),
        model=body["model"],
        purpose=purpose,
        body=body,
        started=time.monotonic(),
    )


def start_call(runtime: JobsRuntime, request: Request, plan: CallPlan) -> ProxyCall:
    return ProxyCall(
        request.app,
        request.scope,
        plan.body,
        headers=request.headers.raw,
        extra_headers=[
            (litellm_adapter.CALL_ID_HEADER.encode(), plan.call_id.encode()),
            (litellm_adapter.CALL_ID_PROOF_HEADER.encode(), litellm_adapter.call_id_proof(plan.call_id).encode()),
        ],
        tasks=runtime.background,
    )


def passed_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.startswith(_PASSED_HEADER_PREFIXES)}


def _error_body(raw: Any, status: int) -> dict[str, Any]:
    if isinstance(raw, dict) and isinstance(raw.get("error"), dict):
        return raw
    return {"error": {"message": f"The call failed with HTTP {status}.", "type": "api_error", "code": str(status)}}


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _header_cost(headers: Mapping[str, str]) -> money_.Number | None:
    """LiteLLM's cost of the call, as the text it sent (a JSON number in plain notation)."""
    try:
        return money_.number(headers["x-litellm-response-cost"].strip())
    except (KeyError, ArithmeticError, ValueError):
        return None


def _latency_ms(plan: CallPlan) -> int:
    return max(0, round((time.monotonic() - plan.started) * 1000))


def _delta_text(chunk: Mapping[str, Any] | None) -> str:
    if not chunk:
        return ""
    parts: list[str] = []
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") if isinstance(choice, dict) else None
        content = delta.get("content") if isinstance(delta, dict) else None
        if isinstance(content, str):
            parts.append(content)
    return "".join(parts)


#: How much of the model's answer an error message may quote.
EXCERPT_CHARS = 200


def excerpt(text: str) -> str:
    """``text``, or its first :data:`EXCERPT_CHARS` characters marked as truncated."""
    if len(text) <= EXCERPT_CHARS:
        return text
    return f"{text[:EXCERPT_CHARS]}... (truncated: {len(text)} characters in all)"


class AnswerRefused(InvalidStructuredOutput):
    """An :class:`InvalidStructuredOutput` that also says what may be stored of it: ``record``
    names the kind of failure and where, never any part of the model's answer (completions are
    not stored; the client's message may quote an excerpt of the answer it is owed anyway)."""

    def __init__(self, message: str, *, record: str) -> None:
        super().__init__(message, param="response_format")
        self.record = record


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("a number too large for a float")
    return value


def check_structured(response_format: object, content: object) -> Any:
    """The parsed answer of a structured call (``response_format`` json_schema or json_object),
    or None when the call asked for text; raises :class:`AnswerRefused`."""
    if not isinstance(response_format, dict) or response_format.get("type") not in ("json_schema", "json_object"):
        return None
    if not isinstance(content, str):
        message = "The model returned no text for a structured response."
        raise AnswerRefused(message, record=message)
    try:
        # NaN and infinities are not JSON (and the answer carrying them could not be sent back).
        value = json.loads(content, parse_constant=_no_constant, parse_float=_finite_float)
    except ValueError as exc:
        reason = str(exc)[:100]  # the parser's reason and position, or the non-JSON constant's name
        raise AnswerRefused(
            f"The model's answer is not JSON ({reason}): {excerpt(content)!r}. Retry, or relax the schema.",
            record=f"The model's answer is not JSON ({reason}).",
        ) from None
    except RecursionError:
        raise AnswerRefused(
            "The model's answer nests too deeply to be read as JSON.",
            record="The model's answer nests too deeply to be read as JSON.",
        ) from None
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if isinstance(schema, dict):
        validator_cls = jsonschema.validators.validator_for(schema)
        try:
            validator_cls.check_schema(schema)
        except jsonschema.SchemaError:
            return value  # the provider took the schema; there is nothing sound to check against
        try:
            error = jsonschema.exceptions.best_match(validator_cls(schema).iter_errors(value))
        except Exception:  # e.g. a $ref that does not resolve: the schema cannot be checked against
            return value
        if error is not None:
            # The instance path and jsonschema's message quote the answer: both are cut short. The
            # record names the rule broken and where in the schema (the request's, not the answer).
            where = excerpt("/".join(str(p) for p in error.absolute_path) or "(root)")
            rule = "/".join(str(p) for p in error.absolute_schema_path) or "(root)"
            raise AnswerRefused(
                f"The model's answer does not match the schema at {where}: {excerpt(error.message)}. "
                "Retry, or relax the schema.",
                record=f"The model's answer does not match the schema: {error.validator!s:.40} rule at {rule:.200}.",
            )
    return value


def _seed_metadata(plan: CallPlan, usage: Mapping[str, Any], model_used: str | None) -> dict[str, Any]:
    """The seed's ``metadata`` of a call's answer."""
    return {
        "tokens_used": usage.get("total_tokens", 0),
        "prompt_tokens": usage.get("prompt_tokens", 0),
        "completion_tokens": usage.get("completion_tokens", 0),
        "latency_ms": _latency_ms(plan),
        "model_group": plan.model,
        "model_used": model_used or plan.model,
        "purpose": plan.purpose,
    }


def seed_answer(plan: CallPlan, completion: dict[str, Any], headers: Mapping[str, str]) -> dict[str, Any]:
    """The OpenAI chat.completion plus the seed's fields."""
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = _dict(choice.get("message"))
    usage = _dict(completion.get("usage"))
    parsed = check_structured(plan.body.get("response_format"), message.get("content"))
    response: dict[str, Any] = {"content": message.get("content"), "finish_reason": choice.get("finish_reason")}
    if message.get("tool_calls"):
        response["tool_calls"] = message["tool_calls"]
    if parsed is not None:
        response["parsed"] = parsed
    return {
        **completion,
        "call_id": plan.call_id,
        "job_id": plan.job_id,
        "response": response,
        "cost_usd": _header_cost(headers),
        "metadata": _seed_metadata(plan, usage, headers.get("x-litellm-model-group")),
    }


async def relay_stream(
    runtime: JobsRuntime,
    plan: CallPlan,
    call: ProxyCall,
    awaited: asyncio.Future[CallEvent],
    emit: Callable[[bytes], None],
) -> StreamOutcome:
    """Forward a streamed call's chunks as they come, each with a top-level ``content``; return
    the last event (usage, LiteLLM's cost) without sending it. ``awaited`` is the call's success
    event, expected (:meth:`JobsRuntime.expect_call`) before the call was started."""
    try:
        held: dict[str, Any] | None = None
        last: dict[str, Any] = {}
        error: dict[str, Any] | None = None
        async for data in sse_data(call.body()):
            if data.strip() == "[DONE]":
                continue
            try:
                chunk = json.loads(data)
            except ValueError:
                continue
            if not isinstance(chunk, dict):
                continue
            if "error" in chunk and "choices" not in chunk:
                error = chunk
                emit(sse_event(chunk))
                continue
            last = chunk
            if chunk.get("usage"):
                held = chunk  # the usage chunk is sent last, with the cost
                continue
            emit(sse_event({**chunk, "content": _delta_text(chunk)}))
        final: dict[str, Any] = dict(
            held
            or {
                "id": last.get("id"),
                "object": "chat.completion.chunk",
                "created": last.get("created"),
                "model": last.get("model"),
                "choices": [],
            }
        )
        event: CallEvent | None = None
        if error is None:
            # A stream's cost is only in its success event, logged in this process right after it.
            try:
                event = await asyncio.wait_for(asyncio.shield(awaited), timeout=runtime.settings.complete_wait_s)
            except TimeoutError:
                event = None
        usage = _dict(final.get("usage"))
        final.update(
            content=_delta_text(held),
            call_id=plan.call_id,
            job_id=plan.job_id,
            cost_usd=money(event.cost_usd) if event is not None else None,
            metadata=_seed_metadata(plan, usage, event.model_group if event is not None else None),
        )
        return StreamOutcome(final=final, error=error)
    finally:
        runtime.forget_call(plan.call_id)


async def _detached(runtime: JobsRuntime, work: Awaitable[T]) -> T:
    """Run ``work`` as a task that a client hanging up cannot cancel (a job must still close)."""
    task = asyncio.ensure_future(work)
    runtime.background.add(task)
    task.add_done_callback(runtime.background.discard)
    return await asyncio.shield(task)


def _job_headers(headers: Mapping[str, str], summary: Mapping[str, Any]) -> dict[str, str]:
    """The in-process call's headers, with the job's status and credits as they are after its close."""
    passed = passed_headers(headers)
    passed["x-job-status"] = str(summary["status"])
    passed["x-credits-remaining"] = money_.exact(summary["costs"]["credits_remaining"])
    return passed


def _error_message(body: Mapping[str, Any]) -> str:
    error = _dict(body.get("error"))
    return str(error.get("message") or error.get("type") or "the call failed").replace("\x00", "")[:4096]


def add_call_routes(router: APIRouter, runtime: JobsRuntime) -> None:
    body_dep = Depends(json_object_body(MAX_CALL_BODY_BYTES, refuse_nul=False))  # before auth
    auth = Depends(user_api_key_auth())

    async def error_answer(call: ProxyCall, status: int, headers: Mapping[str, str], **extra: Any) -> JSONResponse:
        body = _error_body(await call.read_json(), status)
        return JSONResponse({**body, **extra}, status_code=status, headers=passed_headers(headers))

    def sse_response(relay: Relay, headers: Mapping[str, str]) -> StreamingResponse:
        return StreamingResponse(
            relay.events(),
            media_type="text/event-stream",
            headers={**passed_headers(headers), "cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    @router.post("/api/jobs/create-and-call", openapi_extra=documented_body(CreateAndCallBody))
    @answer
    async def create_and_call(request: Request, body: dict[str, Any] = body_dep, key: Any = auth) -> Response:
        req = parse(CreateAndCallBody, body)
        # Everything is checked before the job is opened: a rejected request holds nothing.
        job_id = check_job_id(req.job_id, param="job_id") if req.job_id is not None else new_job_id()
        plan = plan_call(
            runtime, key, req, job_id, job_type=req.job_type, stream=bool(req.stream), request_metadata=None
        )
        job_req = CreateJobBody(
            job_type=req.job_type,
            job_id=job_id,
            metadata=req.metadata,
            max_calls=req.max_calls,
            max_cost_usd=req.max_cost_usd,
            team_id=plan.team_id,
            user_id=req.user_id,
        )
        if req.metadata is not None:
            check_job_metadata(req.metadata, param="metadata")

        async def close(status: JobStatus, error_message: str | None = None) -> dict[str, Any]:
            closure = await (await runtime.credits()).close_job(
                plan.team_id, plan.job_id, status, error_message=error_message
            )
            assert closure is not None  # the job was opened above
            return await closed_job_answer(runtime, plan.team_id, plan.job_id, closure)

        def job_fields(summary: dict[str, Any]) -> dict[str, Any]:
            return {
                "status": summary["status"],
                "job_status": summary["status"],
                "completed_at": summary["completed_at"],
                "costs": summary["costs"],
            }

        async def call_and_close() -> Response:
            # One task from the hold to the close: a client hanging up cannot leave the job open.
            await open_job(runtime, key, job_req)
            awaited = runtime.expect_call(plan.call_id) if plan.body.get("stream") else None
            try:
                call = start_call(runtime, request, plan)
                status, headers = await call.head()
                if status != 200:
                    raw = _error_body(await call.read_json(), status)
                    summary = await close(JobStatus.FAILED, _error_message(raw))
                    return JSONResponse(
                        {**raw, "job_id": plan.job_id, **job_fields(summary)},
                        status_code=status,
                        headers=_job_headers(headers, summary),
                    )
                if awaited is None:
                    completion = await call.read_json()
                    try:
                        seed = seed_answer(plan, completion if isinstance(completion, dict) else {}, headers)
                    except AnswerRefused as exc:
                        summary = await close(JobStatus.FAILED, exc.record)
                        return JSONResponse(
                            {**exc.to_json(), "job_id": plan.job_id, **job_fields(summary)},
                            status_code=exc.status,
                            headers=_job_headers(headers, summary),
                        )
                    summary = await close(JobStatus.COMPLETED)
                    return JSONResponse({**seed, **job_fields(summary)}, headers=_job_headers(headers, summary))
            except BaseException:
                await _fail_quietly(close)
                if awaited is not None:
                    runtime.forget_call(plan.call_id)
                raise
            stream_awaited = awaited

            async def produce(emit: Callable[[bytes], None]) -> None:
                try:
                    outcome = await relay_stream(runtime, plan, call, stream_awaited, emit)
                except BaseException:
                    await _fail_quietly(close)
                    raise
                if outcome.error is not None:
                    await close(JobStatus.FAILED, _error_message(outcome.error))
                else:
                    summary = await close(JobStatus.COMPLETED)
                    emit(sse_event({**outcome.final, **job_fields(summary)}))
                emit(SSE_DONE)

            return sse_response(Relay(produce, tasks=runtime.background), headers)

        return await _detached(runtime, call_and_close())

    async def one_call(job_id: str, request: Request, body: dict[str, Any], key: Any, *, stream: bool) -> Response:
        req = parse(LLMCallBody, body)
        plan = plan_call(
            runtime,
            key,
            req,
            check_job_id(job_id, param="job_id"),
            job_type=req.job_type,
            stream=stream,
            request_metadata=req.metadata,
        )
        # Expected before the call starts: a short stream may be logged before its head is read.
        awaited = runtime.expect_call(plan.call_id) if stream else None
        try:
            call = start_call(runtime, request, plan)
            status, headers = await call.head()
            if status != 200:
                return await error_answer(call, status, headers, job_id=plan.job_id)
        except BaseException:
            runtime.forget_call(plan.call_id)
            raise
        if awaited is None:
            completion = await call.read_json()
            try:
                seed = seed_answer(plan, completion if isinstance(completion, dict) else {}, headers)
            except InvalidStructuredOutput as exc:
                raise to_proxy_exception(exc, headers=passed_headers(headers)) from exc
            return JSONResponse(seed, headers=passed_headers(headers))
        stream_awaited = awaited

        async def produce(emit: Callable[[bytes], None]) -> None:
            outcome = await relay_stream(runtime, plan, call, stream_awaited, emit)
            if outcome.error is None:
                emit(sse_event(outcome.final))
            emit(SSE_DONE)

        return sse_response(Relay(produce, tasks=runtime.background), headers)

    @router.post("/api/jobs/{job_id}/llm-call", openapi_extra=documented_body(LLMCallBody))
    @answer
    async def llm_call(job_id: str, request: Request, body: dict[str, Any] = body_dep, key: Any = auth) -> Response:
        return await one_call(job_id, request, body, key, stream=False)

    @router.post("/api/jobs/{job_id}/llm-call-stream", openapi_extra=documented_body(LLMCallBody))
    @answer
    async def llm_call_stream(
        job_id: str, request: Request, body: dict[str, Any] = body_dep, key: Any = auth
    ) -> Response:
        return await one_call(job_id, request, body, key, stream=True)


async def _fail_quietly(close: Callable[[JobStatus, str | None], Awaitable[dict[str, Any]]]) -> None:
    """Close a job as failed after an unexpected error, keeping the original error."""
    try:
        await close(JobStatus.FAILED, "The call failed inside the proxy.")
    except Exception:
        _log.exception("litellm-jobs: could not fail a create-and-call job after an error")
