"""Who a call is for and which job it belongs to: pure decisions, no I/O."""

from __future__ import annotations

import hashlib
import uuid

from .errors import Forbidden, JobIdRequired, TeamRequired
from .metadata import JOB_ID_PATTERN
from .models import CallContext, JobTag, value_class
from .settings import Settings, UntaggedPolicy


@value_class
class Caller:
    """The caller's key as LiteLLM's auth resolved it."""

    team_id: str | None
    key_hash: str | None
    user_id: str | None
    is_admin: bool


def paying_team(tag: JobTag, caller: Caller) -> str | None:
    """The team a request acts for: the key's team, or the one the proxy admin names."""
    if tag.team_id is None or tag.team_id == caller.team_id:
        return caller.team_id
    if caller.is_admin:
        return tag.team_id
    raise Forbidden(
        f"This key belongs to team {caller.team_id!r} and may not act for team {tag.team_id!r}; "
        "only the proxy admin may pass metadata.team_id for another team.",
        param="metadata.team_id",
    )


def new_job_id() -> str:
    """A job id for a job created without one (``POST /api/jobs/create``, create-and-call)."""
    return f"job-{uuid.uuid4().hex}"


def single_call_job_id(call_id: str) -> str:
    """The job id of an untagged call; LiteLLM's call ids are UUIDs, but a client may choose its own."""
    job_id = f"call-{call_id}"
    if JOB_ID_PATTERN.fullmatch(job_id):
        return job_id
    return f"call-h{hashlib.sha256(call_id.encode()).hexdigest()[:40]}"


def decide_call(
    tag: JobTag,
    caller: Caller,
    *,
    call_id: str,
    requested_model: str | None,
    settings: Settings,
    record_call_id: str | None = None,
) -> CallContext:
    """The :class:`CallContext` of a call, or a :class:`~litellm_jobs_plugin.errors.JobsError`.

    ``record_call_id``: the id the call's record gets instead of LiteLLM's ``call_id`` (which the
    client chose); an untagged call's single-call job is named after it too.
    """
    team_id = paying_team(tag, caller)
    job_id, job_type, single_call = tag.job_id, tag.job_type, False
    if job_id is None:
        if settings.untagged is UntaggedPolicy.REJECT:
            raise JobIdRequired(
                "This proxy only accepts calls that name a job: pass metadata.job_id "
                "(and metadata.job_type) or the x-job-id header.",
                param="metadata.job_id",
            )
        if settings.untagged is UntaggedPolicy.ALLOW:
            # Passed through and recorded against no job, never charged.
            return CallContext(
                team_id=team_id,
                job_id=None,
                job_type=job_type,
                single_call=False,
                requested_model=requested_model,
                key_hash=caller.key_hash,
                user_id=caller.user_id,
                purpose=tag.purpose,
                call_id=record_call_id,
            )
        job_id, single_call = single_call_job_id(record_call_id or call_id), True
        job_type = job_type or settings.default_job_type
    if team_id is None:
        raise TeamRequired(
            "Tracked calls are billed to a LiteLLM team, and this key has none: use a key of a team "
            "(or, as the proxy admin, pass metadata.team_id).",
        )
    return CallContext(
        team_id=team_id,
        job_id=job_id,
        job_type=job_type or settings.default_job_type,
        single_call=single_call,
        requested_model=requested_model,
        key_hash=caller.key_hash,
        user_id=caller.user_id,
        job_metadata=tag.job_metadata,
        job_type_given=tag.job_type is not None,
        purpose=tag.purpose,
        call_id=record_call_id,
    )
