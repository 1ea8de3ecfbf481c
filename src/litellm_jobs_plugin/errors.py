"""The error tree: every error the plugin answers with, its status and its type.

::

    JobsError
    ├── InvalidJobMetadata      400 invalid_job_metadata
    ├── JobIdRequired           400 job_id_required
    ├── TeamRequired            401 team_required
    ├── Forbidden               403 forbidden
    ├── InsufficientCredits     402 insufficient_credits
    ├── JobBudgetExceeded       402 job_budget_exceeded
    ├── JobNotFound             404 job_not_found
    ├── JobClosed               409 job_closed
    ├── JobTypeMismatch         409 job_type_mismatch
    ├── StoreUnavailable        503 jobs_store_unavailable
    └── InvalidStructuredOutput 502 invalid_structured_output   (the model's answer, not the client)

Each class's docstring is its default message. :func:`to_proxy_exception` is the one place that
turns them into LiteLLM's ``ProxyException`` (OpenAI's error JSON).
"""

from __future__ import annotations

from typing import Any, ClassVar


class JobsError(Exception):
    """The jobs plugin rejected the request."""

    type: ClassVar[str] = "jobs_error"
    status: ClassVar[int] = 400
    #: Set by the client on the errors it raises: the HTTP status and error body it received.
    status_code: int | None = None
    body: Any = None

    def __init__(self, message: str | None = None, *, param: str | None = None) -> None:
        self.message = message or (self.__doc__ or self.type).strip()
        self.param = param
        super().__init__(self.message)

    def to_json(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": str(self.status)}}


class InvalidJobMetadata(JobsError):
    """The job fields of the request are malformed; fix them as the message says."""

    type = "invalid_job_metadata"
    status = 400


class JobIdRequired(JobsError):
    """This proxy only accepts calls that name a job: pass metadata.job_id (or an x-job-id header)."""

    type = "job_id_required"
    status = 400


class TeamRequired(JobsError):
    """Tracked calls need a key that belongs to a LiteLLM team; use a team key."""

    type = "team_required"
    status = 401


class Forbidden(JobsError):
    """This key may not act for that team."""

    type = "forbidden"
    status = 403


class InsufficientCredits(JobsError):
    """The team has not enough credits left to open this job; ask the proxy admin for a grant."""

    type = "insufficient_credits"
    status = 402


class JobBudgetExceeded(JobsError):
    """This call would pass the job's max_calls or max_cost_usd; start a new job."""

    type = "job_budget_exceeded"
    status = 402


class JobNotFound(JobsError):
    """No such job for this team; check the job_id, or create the job first."""

    type = "job_not_found"
    status = 404


class JobClosed(JobsError):
    """The job is closed and takes no more calls; start a new job."""

    type = "job_closed"
    status = 409


class JobTypeMismatch(JobsError):
    """The job was opened with another job_type; use the job's own type or a new job_id."""

    type = "job_type_mismatch"
    status = 409


class StoreUnavailable(JobsError):
    """The jobs store is unavailable; retry shortly."""

    type = "jobs_store_unavailable"
    status = 503


class InvalidStructuredOutput(JobsError):
    """The model's answer does not match the requested response_format; retry, or relax the schema."""

    type = "invalid_structured_output"
    status = 502


class UnknownJobType(JobsError):
    """The proxy's operator has not priced this job_type; use one of the priced types."""

    type = "unknown_job_type"
    status = 400


class JobTypeNotAllowed(JobsError):
    """This team may not open jobs of this job_type."""

    type = "job_type_not_allowed"
    status = 403


class FailureAllowanceExhausted(JobsError):
    """The team's allowance for the provider cost of failed and expired jobs is used up for now."""

    type = "failure_allowance_exhausted"
    status = 402


class InvalidWebhookSignature(JobsError):
    """The webhook's signature does not verify (wrong secret, altered body, or signed too long ago)."""

    type = "invalid_webhook_signature"
    status = 400


class BillingNotFound(JobsError):
    """No such usage sink or Stripe event; check the name."""

    type = "billing_not_found"
    status = 404


class BillingNotConfigured(JobsError):
    """This billing integration is not configured on this proxy; see its settings.

    A 404, not a 5xx: the route is off, as if it did not exist, whatever a caller sends (the sender, Stripe,
    retries it and is served once the integration is configured)."""

    type = "billing_not_configured"
    status = 404


#: Every error type by its ``type`` name (the client maps error JSON back to these classes).
ERRORS_BY_TYPE: dict[str, type[JobsError]] = {
    cls.type: cls
    for cls in (
        InvalidJobMetadata,
        JobIdRequired,
        TeamRequired,
        Forbidden,
        InsufficientCredits,
        JobBudgetExceeded,
        JobNotFound,
        JobClosed,
        JobTypeMismatch,
        StoreUnavailable,
        InvalidStructuredOutput,
        UnknownJobType,
        JobTypeNotAllowed,
        FailureAllowanceExhausted,
        InvalidWebhookSignature,
        BillingNotFound,
        BillingNotConfigured,
    )
}


def to_proxy_exception(error: JobsError, headers: dict[str, str] | None = None) -> Exception:
    """LiteLLM's ``ProxyException`` for ``error``: the client sees OpenAI's error JSON with our type."""
    from litellm.proxy._types import ProxyException

    headers = dict(headers or {})
    if error.status < 500:
        # The OpenAI SDK retries 409s (and honours this header): our 4xx answers will not change.
        headers.setdefault("x-should-retry", "false")
    exc: Exception = ProxyException(
        message=error.message, type=error.type, param=error.param, code=error.status, headers=headers
    )
    return exc
