from __future__ import annotations

import pytest

from litellm_jobs_plugin.errors import Forbidden, JobIdRequired, TeamRequired
from litellm_jobs_plugin.jobs import Caller, decide_call
from litellm_jobs_plugin.models import JobTag
from litellm_jobs_plugin.settings import Settings, UntaggedPolicy

TEAM = Caller(team_id="team-a", key_hash="h", user_id="u", is_admin=False)
ADMIN = Caller(team_id=None, key_hash="m", user_id="admin", is_admin=True)
LONER = Caller(team_id=None, key_hash="n", user_id="x", is_admin=False)


def tag(job_id: str | None = "j1", job_type: str | None = "doc", team_id: str | None = None) -> JobTag:
    return JobTag(job_id=job_id, job_type=job_type, job_metadata=None, team_id=team_id)


def decide(t: JobTag, caller: Caller, **settings: object) -> object:
    return decide_call(t, caller, call_id="c1", requested_model="ChatAgent", settings=Settings(**settings))


def test_a_tagged_call_belongs_to_the_keys_team() -> None:
    ctx = decide(tag(), TEAM)
    assert (ctx.team_id, ctx.job_id, ctx.job_type, ctx.single_call) == ("team-a", "j1", "doc", False)  # type: ignore[attr-defined]


def test_team_rules() -> None:
    with pytest.raises(TeamRequired):
        decide(tag(), LONER)
    with pytest.raises(Forbidden):
        decide(tag(team_id="team-b"), TEAM)
    assert decide(tag(team_id="team-a"), TEAM).team_id == "team-a"  # type: ignore[attr-defined]
    assert decide(tag(team_id="team-b"), ADMIN).team_id == "team-b"  # type: ignore[attr-defined]
    with pytest.raises(TeamRequired):
        decide(tag(), ADMIN)


def test_untagged_policies() -> None:
    single = decide(tag(job_id=None, job_type=None), TEAM)
    assert (single.job_id, single.job_type, single.single_call) == ("call-c1", "default", True)  # type: ignore[attr-defined]
    allowed = decide(tag(job_id=None), LONER, untagged=UntaggedPolicy.ALLOW)
    assert (allowed.job_id, allowed.team_id) == (None, None)  # type: ignore[attr-defined]
    with pytest.raises(JobIdRequired):
        decide(tag(job_id=None), TEAM, untagged=UntaggedPolicy.REJECT)


def test_a_client_chosen_call_id_still_gives_a_valid_job_id() -> None:
    from litellm_jobs_plugin.jobs import single_call_job_id
    from litellm_jobs_plugin.metadata import JOB_ID_PATTERN

    assert single_call_job_id("0b7e-uuid") == "call-0b7e-uuid"
    weird = single_call_job_id("has spaces/and 300 chars" + "x" * 300)
    assert JOB_ID_PATTERN.fullmatch(weird)
    assert weird == single_call_job_id("has spaces/and 300 chars" + "x" * 300)
