"""Typed clients for a LiteLLM proxy running the jobs plugin: :class:`JobsClient` (async) and
:class:`SyncJobsClient`, its synchronous twin, as httpx's ``AsyncClient`` and ``Client``.

Example::

    from litellm_jobs_plugin.client import JobsClient, SyncJobsClient

    async with JobsClient("http://127.0.0.1:4000", "sk-my-team-key") as client:
        async with client.job("document_analysis") as job:
            r = await job.chat(model="ChatAgent", messages=[{"role": "user", "content": "Hi"}])
        print(job.costs.credits_remaining)

    with SyncJobsClient("http://127.0.0.1:4000", "sk-my-team-key") as client:
        with client.job("document_analysis") as job:
            r = job.chat(model="ChatAgent", messages=[{"role": "user", "content": "Hi"}])
        print(job.costs.credits_remaining)

Both share the models, the errors and the retry policy: the same call through either sends the
same requests.

Errors are the plugin's own classes (:mod:`litellm_jobs_plugin.errors`), one per error type,
with ``status_code`` and ``body`` set; errors that are not the plugin's are :class:`APIError`.
"""

from __future__ import annotations

from ..errors import (
    Forbidden,
    InsufficientCredits,
    InvalidJobMetadata,
    InvalidStructuredOutput,
    JobBudgetExceeded,
    JobClosed,
    JobIdRequired,
    JobNotFound,
    JobsError,
    JobTypeMismatch,
    StoreUnavailable,
    TeamRequired,
)
from ._client import JobsClient, SaasLiteLLMClient, SyncJobsClient
from ._errors import APIError, error_from
from ._job import ChatStream, JobRun, SyncChatStream, SyncJobRun
from ._models import (
    Call,
    CallCost,
    CallMetadata,
    CompletedJob,
    CreatedJob,
    Job,
    JobCostBreakdown,
    JobCosts,
    JobPage,
    JobStatus,
    LLMCallResponse,
    SeedResponse,
    StreamEvent,
    TeamBalance,
)

__all__ = [
    "APIError",
    "Call",
    "CallCost",
    "CallMetadata",
    "ChatStream",
    "CompletedJob",
    "CreatedJob",
    "Forbidden",
    "InsufficientCredits",
    "InvalidJobMetadata",
    "InvalidStructuredOutput",
    "Job",
    "JobBudgetExceeded",
    "JobClosed",
    "JobCostBreakdown",
    "JobCosts",
    "JobIdRequired",
    "JobNotFound",
    "JobPage",
    "JobRun",
    "JobStatus",
    "JobTypeMismatch",
    "JobsClient",
    "JobsError",
    "LLMCallResponse",
    "SaasLiteLLMClient",
    "SeedResponse",
    "StoreUnavailable",
    "StreamEvent",
    "SyncChatStream",
    "SyncJobRun",
    "SyncJobsClient",
    "TeamBalance",
    "TeamRequired",
    "error_from",
]
