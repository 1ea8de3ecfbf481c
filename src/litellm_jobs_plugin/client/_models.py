"""What the routes answer, as Pydantic models (unknown fields are kept: the server may add some)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..models import Call, Job, JobStatus

__all__ = [
    "Call",
    "CallCost",
    "CallMetadata",
    "CompletedJob",
    "CreatedJob",
    "Job",
    "JobCostBreakdown",
    "JobCosts",
    "JobPage",
    "JobStatus",
    "LLMCallResponse",
    "SeedResponse",
    "StreamEvent",
    "TeamBalance",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class _DictAccess(_Model):
    """Also readable like the dict the seed system's client returned (``costs.get("total_cost_usd")``)."""

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None


class CreatedJob(_Model):
    job_id: str
    team_id: str
    job_type: str
    status: JobStatus
    created_at: datetime
    max_calls: int | None = None
    max_cost_usd: Decimal | None = None
    credits_held: Decimal = Decimal(0)


class JobCosts(_DictAccess):
    total_calls: int
    successful_calls: int
    failed_calls: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    total_cost_usd: Decimal
    avg_latency_ms: float
    credits_charged: Decimal
    credit_applied: bool
    credits_remaining: Decimal


class CompletedJob(_Model):
    """The answer to completing (or failing) a job."""

    job_id: str
    team_id: str | None = None
    job_type: str | None = None
    status: JobStatus
    completed_at: datetime | None
    costs: JobCosts
    calls: list[Call] = Field(default_factory=list)

    @property
    def credits_remaining(self) -> Decimal:
        return self.costs.credits_remaining

    @property
    def total_cost_usd(self) -> Decimal:
        return self.costs.total_cost_usd


class SeedResponse(_DictAccess):
    content: str | None = None
    finish_reason: str | None = None
    parsed: Any = None
    tool_calls: list[dict[str, Any]] | None = None


class CallMetadata(_DictAccess):
    tokens_used: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: int = 0
    model_group: str | None = None
    model_used: str | None = None
    purpose: str | None = None


class LLMCallResponse(_DictAccess):
    """``llm-call`` (and ``create-and-call``): an OpenAI chat.completion plus the seed's fields."""

    id: str | None = None
    model: str | None = None
    choices: list[dict[str, Any]] = Field(default_factory=list)
    usage: dict[str, Any] | None = None
    call_id: str
    job_id: str
    response: SeedResponse
    metadata: CallMetadata
    cost_usd: Decimal | None = None
    # create-and-call only:
    status: JobStatus | None = None
    costs: JobCosts | None = None

    @property
    def content(self) -> str | None:
        return self.response.content


class StreamEvent(_DictAccess):
    """One ``data:`` event of ``llm-call-stream``: an OpenAI chunk plus ``content`` (the delta)."""

    id: str | None = None
    model: str | None = None
    choices: list[dict[str, Any]] = Field(default_factory=list)
    content: str = ""
    usage: dict[str, Any] | None = None
    cost_usd: Decimal | None = None
    call_id: str | None = None
    job_id: str | None = None
    metadata: CallMetadata | None = None
    # create-and-call's last event only:
    status: JobStatus | None = None
    costs: JobCosts | None = None

    @property
    def is_final(self) -> bool:
        """The last event, carrying usage and LiteLLM's cost of the call."""
        return self.call_id is not None


class TeamBalance(_Model):
    team_id: str
    credits_allocated: Decimal
    credits_remaining: Decimal
    credits_held: Decimal
    credits_charged: Decimal = Decimal(0)


class CallCost(_Model):
    call_id: str
    purpose: str | None = None
    model_group: str | None = None
    model: str | None = None
    status: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: Decimal
    cache_hit: bool = False
    latency_ms: int = 0


class JobCostBreakdown(_Model):
    job_id: str
    team_id: str
    job_type: str
    status: JobStatus
    calls: list[CallCost]
    total_calls: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    total_cost_usd: Decimal
    credits_charged: Decimal


class JobPage(_Model):
    jobs: list[Job]
    next_cursor: str | None = None
