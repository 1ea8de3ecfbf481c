"""What every operation of the clients sends and how its answer is read, written once.

:class:`~litellm_jobs_plugin.client.JobsClient` (async) and
:class:`~litellm_jobs_plugin.client.SyncJobsClient` share this module and differ only in doing the I/O:
an operation here takes the client and the caller's arguments and returns a description of the request
(:class:`RouteCall` for a route, :class:`EventStream` for a streamed route); :func:`operation` turns it
into a method of either client, with the operation's signature and docstring.
"""

from __future__ import annotations

import enum
import functools
import inspect
import json
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Concatenate, Generic, Literal, ParamSpec, TypeVar

import httpx
import openai
import pydantic

from ..errors import InvalidStructuredOutput
from ._errors import error_from
from ._models import (
    Call,
    CompletedJob,
    CreatedJob,
    Job,
    JobCostBreakdown,
    JobPage,
    LLMCallResponse,
    StreamEvent,
    TeamBalance,
)

P = ParamSpec("P")
T = TypeVar("T")
R = TypeVar("R")
S = TypeVar("S")
B = TypeVar("B")
H = TypeVar("H", httpx.AsyncClient, httpx.Client)
SDK = TypeVar("SDK", openai.AsyncOpenAI, openai.OpenAI)
M = TypeVar("M", bound=pydantic.BaseModel)

DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
DEFAULT_MAX_RETRIES = 2


class State(enum.Enum):
    UNOPENED = 1
    OPENED = 2
    CLOSED = 3


class ClientBase(Generic[H, SDK]):
    """The settings and state of a client; ``H`` is its httpx client class and ``SDK`` the OpenAI SDK's,
    async or sync. See :class:`JobsClient` for the parameters."""

    _http_class: type[H]
    _sdk_class: type[SDK]

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        team_id: str | None = None,
        default_model: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        http_client: H | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.team_id = team_id
        self.default_model = default_model
        self.max_retries = max_retries
        self._timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._state = State.UNOPENED
        self._owns_http = http_client is None
        self._http: H = http_client or self._http_class(timeout=self._timeout)
        # max_retries=0: the SDK would retry timeouts and 5xx answers, each retry a second upstream
        # call; ours (_errors.sdk_retries) resend only what never reached an upstream.
        self._openai: SDK = self._sdk_class(
            base_url=f"{self.base_url}/v1",
            api_key=api_key,
            timeout=self._timeout,
            max_retries=0,
            http_client=self._http,  # type: ignore[arg-type]  # H and SDK come in pairs: async or sync
        )

    @property
    def openai(self) -> SDK:
        """The OpenAI SDK client pointed at the proxy (same key, same connection pool)."""
        return self._openai

    def _open(self) -> None:
        if self._state is State.CLOSED:
            raise RuntimeError(f"A {type(self).__name__} cannot be reopened once closed.")
        self._state = State.OPENED

    def _check_open(self) -> None:
        if self._state is State.CLOSED:
            raise RuntimeError(f"This {type(self).__name__} is closed.")

    def _body(self, values: Mapping[str, Any]) -> dict[str, Any]:
        body = {k: v for k, v in values.items() if v is not None}
        if self.team_id is not None:
            body.setdefault("team_id", self.team_id)
        return json.loads(json.dumps(body, default=str))  # type: ignore[no-any-return]  # Decimals as strings

    def _query(self, values: Mapping[str, Any]) -> dict[str, Any]:
        query = {k: v for k, v in values.items() if v is not None}
        if self.team_id is not None:
            query.setdefault("team_id", self.team_id)
        return query

    def _http_args(self, call: RouteCall[Any] | EventStream) -> dict[str, Any]:
        """The arguments of ``httpx.(Async)Client.request`` (and of httpx-sse's connect) for a call."""
        self._check_open()
        args: dict[str, Any] = {
            "method": call.method,
            "url": f"{self.base_url}{call.path}",
            "json": call.json_body,
            "headers": dict(self._headers),
            "timeout": self._timeout,
        }
        if isinstance(call, RouteCall) and call.params is not None:
            args["params"] = call.params
        return args


@dataclass(frozen=True)
class RouteCall(Generic[T]):
    """One request to a route of the plugin, and how its JSON answer becomes ``T``."""

    method: str
    path: str
    parse: Callable[[Any], T]
    #: Whether sending it twice cannot charge or cost twice (then it is retried, see _errors.py).
    idempotent: bool
    json_body: Mapping[str, Any] | None = None
    params: Mapping[str, Any] | None = None

    def answer(self, response: httpx.Response) -> T:
        body = json_or_none(response)
        if response.status_code >= 400:
            raise error_from(response.status_code, body)
        return self.parse(body)


@dataclass(frozen=True)
class EventStream:
    """A streamed route: ``POST`` and read server-sent events (never retried once sent)."""

    path: str
    json_body: Mapping[str, Any]
    method: str = "POST"


def stream_event(data: str) -> StreamEvent | None:
    """One ``data:`` line of a streamed route: the event, or None at ``[DONE]``; an error event raises."""
    if data.strip() == "[DONE]":
        return None
    event = json.loads(data)
    if isinstance(event, dict) and "error" in event and "choices" not in event:
        raise error_from(502, event)
    return StreamEvent.model_validate(event)


def stream_refused(response: httpx.Response) -> Exception:
    """The error of a stream the proxy refused (its body already read)."""
    return error_from(response.status_code, json_or_none(response))


def json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def operation(build: Callable[Concatenate[B, P], R], perform: Callable[[S, R], T]) -> Callable[Concatenate[S, P], T]:
    """A method of a client (or job) ``S``, a subclass of ``B``: ``build`` says what to send, ``perform``
    (the client's own I/O, async or not) sends it."""

    @functools.wraps(build)
    def method(self: S, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return perform(self, build(self, *args, **kwargs))  # type: ignore[arg-type]  # S is a B

    # help() and IDEs show the operation's parameters, not what it builds.
    method.__signature__ = inspect.signature(build).replace(return_annotation=inspect.Signature.empty)  # type: ignore[attr-defined]
    return method


def streamed(
    build: Callable[P, RouteCall[Any]], doc: str, *, path_suffix: str = "", **body: Any
) -> Callable[P, EventStream]:
    """The streamed twin of a call's route: the same parameters and body (plus ``body``), read as events."""

    @functools.wraps(build)
    def stream(*args: P.args, **kwargs: P.kwargs) -> EventStream:
        call = build(*args, **kwargs)
        return EventStream(f"{call.path}{path_suffix}", {**(call.json_body or {}), **body})

    stream.__doc__ = doc
    stream.__signature__ = inspect.signature(build).replace(return_annotation=inspect.Signature.empty)  # type: ignore[attr-defined]
    return stream


def new_job_id() -> str:
    return f"job-{uuid.uuid4().hex}"


# -- the operations ------------------------------------------------------------------------------------


def create_job(
    client: ClientBase[Any, Any],
    /,
    job_type: str,
    *,
    job_id: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    max_calls: int | None = None,
    max_cost_usd: Decimal | float | None = None,
    user_id: str | None = None,
) -> RouteCall[CreatedJob]:
    """Create a job (its price is held now, charged only if it completes).

    The job id is chosen here when not given, so a retried creation is the same job.
    """
    values = {"job_type": job_type, "job_id": job_id or new_job_id(), "metadata": metadata, "max_calls": max_calls}
    body = client._body({**values, "max_cost_usd": max_cost_usd, "user_id": user_id})
    return RouteCall("POST", "/api/jobs/create", CreatedJob.model_validate, idempotent=True, json_body=body)


def _call_body(
    client: ClientBase[Any, Any],
    messages: Iterable[Mapping[str, Any]],
    model: str | None,
    purpose: str | None,
    **values: Any,
) -> dict[str, Any]:
    return client._body(
        {**values, "messages": list(messages), "model": model or client.default_model, "purpose": purpose}
    )


def llm_call(
    client: ClientBase[Any, Any],
    /,
    job_id: str,
    messages: Iterable[Mapping[str, Any]],
    *,
    model: str | None = None,
    purpose: str | None = None,
    **params: Any,
) -> RouteCall[LLMCallResponse]:
    """One call in the job, through ``POST /api/jobs/{job_id}/llm-call`` (not retried once sent)."""
    body = _call_body(client, messages, model, purpose, **params)
    path = f"/api/jobs/{job_id}/llm-call"
    return RouteCall("POST", path, LLMCallResponse.model_validate, idempotent=False, json_body=body)


def _create_and_call_body(
    client: ClientBase[Any, Any],
    /,
    job_type: str,
    messages: Iterable[Mapping[str, Any]],
    *,
    model: str | None,
    job_id: str | None,
    metadata: Mapping[str, Any] | None,
    purpose: str | None,
    params: Mapping[str, Any],
) -> dict[str, Any]:
    if "stream" in params:
        raise ValueError("Use create_and_call_stream() for a streamed create-and-call.")
    job: dict[str, Any] = {"job_type": job_type, "job_id": job_id, "metadata": metadata}
    return _call_body(client, messages, model, purpose, **params, **job)


def create_and_call(
    client: ClientBase[Any, Any],
    /,
    job_type: str,
    messages: Iterable[Mapping[str, Any]],
    *,
    model: str | None = None,
    job_id: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    purpose: str | None = None,
    **params: Any,
) -> RouteCall[LLMCallResponse]:
    """Create a job, make its one call and close it, in one request (``status`` and ``costs`` set)."""
    body = _create_and_call_body(
        client, job_type, messages, model=model, job_id=job_id, metadata=metadata, purpose=purpose, params=params
    )
    path = "/api/jobs/create-and-call"
    return RouteCall("POST", path, LLMCallResponse.model_validate, idempotent=False, json_body=body)


llm_call_stream = streamed(
    llm_call,
    """The events of ``POST /api/jobs/{job_id}/llm-call-stream``; the last has usage and cost.""",
    path_suffix="-stream",
)


create_and_call_stream = streamed(
    create_and_call,
    """create-and-call as a stream; the last event also has the closed job's ``status`` and ``costs``.""",
    stream=True,
)


def structured_call(
    client: ClientBase[Any, Any],
    /,
    job_id: str,
    messages: Iterable[Mapping[str, Any]],
    response_model: type[M],
    *,
    model: str | None = None,
    purpose: str | None = None,
    **params: Any,
) -> RouteCall[M]:
    """A call whose answer is an instance of ``response_model`` (JSON-schema response_format)."""
    call = llm_call(
        client,
        job_id,
        messages,
        model=model,
        purpose=purpose,
        response_format=response_format_of(response_model),
        **params,
    )

    def parse(raw: Any) -> M:
        return validated(response_model, call.parse(raw).response.content)

    return RouteCall(call.method, call.path, parse, idempotent=False, json_body=call.json_body)


def complete_job(
    client: ClientBase[Any, Any],
    /,
    job_id: str,
    status: Literal["completed", "failed"] = "completed",
    *,
    result: Any = None,
    metadata: Mapping[str, Any] | None = None,
    error_message: str | None = None,
) -> RouteCall[CompletedJob]:
    """Close a job: ``completed`` charges its price, ``failed`` releases it. Idempotent."""
    body = client._body({"status": status, "result": result, "metadata": metadata, "error_message": error_message})
    path = f"/api/jobs/{job_id}/complete"
    return RouteCall("POST", path, CompletedJob.model_validate, idempotent=True, json_body=body)


def get_job(client: ClientBase[Any, Any], /, job_id: str) -> RouteCall[Job]:
    """The job as stored: status, totals, result or error."""
    return RouteCall("GET", f"/api/jobs/{job_id}", Job.model_validate, idempotent=True, params=client._query({}))


def list_jobs(
    client: ClientBase[Any, Any],
    /,
    *,
    status: str | None = None,
    job_type: str | None = None,
    since: str | None = None,
    until: str | None = None,
    cursor: str | None = None,
    limit: int | None = None,
) -> RouteCall[JobPage]:
    """A page of the team's jobs, newest first; pass ``next_cursor`` back as ``cursor`` for the next."""
    filters = {"status": status, "job_type": job_type, "since": since, "until": until}
    query = client._query({**filters, "cursor": cursor, "limit": limit})
    return RouteCall("GET", "/api/jobs", JobPage.model_validate, idempotent=True, params=query)


def get_calls(client: ClientBase[Any, Any], /, job_id: str) -> RouteCall[list[Call]]:
    """The job's recorded calls."""

    def parse(raw: Any) -> list[Call]:
        return [Call.model_validate(c) for c in raw["calls"]]

    return RouteCall("GET", f"/api/jobs/{job_id}/calls", parse, idempotent=True, params=client._query({}))


def get_costs(client: ClientBase[Any, Any], /, job_id: str) -> RouteCall[JobCostBreakdown]:
    """The job's cost, call by call."""
    path = f"/api/jobs/{job_id}/costs"
    return RouteCall("GET", path, JobCostBreakdown.model_validate, idempotent=True, params=client._query({}))


def get_team(client: ClientBase[Any, Any], /, team_id: str | None = None) -> RouteCall[TeamBalance]:
    """A team's credits: allocated, remaining, held by open jobs, charged."""
    team = team_id or client.team_id
    if team is None:
        raise ValueError("get_team needs a team_id (or a client created with team_id=...).")
    return RouteCall("GET", f"/api/teams/{team}", TeamBalance.model_validate, idempotent=True)


def grant_credits(
    client: ClientBase[Any, Any],
    /,
    team_id: str,
    amount: Decimal | int | str,
    *,
    idempotency_key: str,
    kind: Literal["grant", "adjust"] = "grant",
    note: str | None = None,
) -> RouteCall[TeamBalance]:
    """Proxy admin only: grant (or, with ``kind="adjust"``, take back) credits, once per key."""
    body = {"amount": str(amount), "idempotency_key": idempotency_key, "kind": kind, "note": note}
    body = {k: v for k, v in body.items() if v is not None}
    path = f"/api/teams/{team_id}/credits"
    return RouteCall("POST", path, TeamBalance.model_validate, idempotent=True, json_body=body)


def response_format_of(response_model: type[pydantic.BaseModel]) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": response_model.__name__, "schema": response_model.model_json_schema()},
    }


def validated(response_model: type[M], content: str | None) -> M:
    if content is None:
        raise InvalidStructuredOutput("The model returned no text for a structured response.")
    try:
        return response_model.model_validate_json(content)
    except pydantic.ValidationError as exc:
        raise InvalidStructuredOutput(
            f"The model's answer is not a valid {response_model.__name__}: {exc.errors()[0].get('msg')}"
        ) from exc


# -- a job as a block, and its calls through the OpenAI SDK ------------------------------------------------


@dataclass(frozen=True)
class JobSpec:
    """The job a ``with`` block creates."""

    job_type: str
    job_id: str
    metadata: Mapping[str, Any] | None = None
    max_calls: int | None = None
    max_cost_usd: Decimal | float | None = None


def job(
    client: ClientBase[Any, Any],
    /,
    job_type: str,
    *,
    job_id: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    max_calls: int | None = None,
    max_cost_usd: Decimal | float | None = None,
) -> JobSpec:
    """A job for a ``with`` (``async with``) block: created on entry (402 early if the team has no
    credits), completed on normal exit, failed (and not charged) if the block raises."""
    return JobSpec(job_type, job_id or new_job_id(), metadata, max_calls, max_cost_usd)
