from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from litellm_jobs_plugin.errors import InvalidJobMetadata
from litellm_jobs_plugin.metadata import MAX_JOB_METADATA_BYTES, parse_job_tag

ID_CHARS = string.ascii_letters + string.digits + "._:-"
TYPE_CHARS = string.ascii_letters + string.digits + "._-"


@given(
    job_id=st.text(ID_CHARS, min_size=1, max_size=128).filter(lambda s: s.strip(".") != ""),  # only dots: refused
    job_type=st.text(TYPE_CHARS, min_size=1, max_size=64),
)
def test_valid_ids_are_accepted(job_id: str, job_type: str) -> None:
    tag = parse_job_tag({"job_id": job_id, "job_type": job_type}, {})
    assert (tag.job_id, tag.job_type) == (job_id, job_type)


@given(
    st.one_of(
        st.text(min_size=1, max_size=200).filter(lambda s: any(c not in ID_CHARS for c in s)),
        st.text(ID_CHARS, min_size=129, max_size=300),
        st.just(""),
        st.integers(),
        st.floats(),
        st.booleans(),
        st.lists(st.text(max_size=3), max_size=3),
        st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
    )
)
def test_invalid_job_ids_are_rejected(job_id: object) -> None:
    with pytest.raises(InvalidJobMetadata) as info:
        parse_job_tag({"job_id": job_id, "job_type": "doc"}, {})
    assert info.value.param == "metadata.job_id"
    assert info.value.status == 400


@given(
    st.one_of(
        st.text(min_size=1, max_size=100).filter(lambda s: any(c not in TYPE_CHARS for c in s)),
        st.text(TYPE_CHARS, min_size=65, max_size=100),
        st.integers(),
    )
)
def test_invalid_job_types_are_rejected(job_type: object) -> None:
    with pytest.raises(InvalidJobMetadata, match="job_type"):
        parse_job_tag({"job_id": "j", "job_type": job_type}, {})


def test_job_metadata_limit_is_8_kib_of_json() -> None:
    fits = {"k": "x" * (MAX_JOB_METADATA_BYTES - len('{"k":""}'))}
    assert parse_job_tag({"job_id": "j", "job_metadata": fits}, {}).job_metadata == fits
    with pytest.raises(InvalidJobMetadata, match="8192"):
        parse_job_tag({"job_id": "j", "job_metadata": {"k": fits["k"] + "x"}}, {})
    with pytest.raises(InvalidJobMetadata, match="JSON object"):
        parse_job_tag({"job_id": "j", "job_metadata": "text"}, {})


def test_headers_are_an_alternative_and_must_agree() -> None:
    tag = parse_job_tag(None, {"x-job-id": "h-1", "x-job-type": "triage"})
    assert (tag.job_id, tag.job_type) == ("h-1", "triage")
    assert parse_job_tag({"job_id": "h-1"}, {"x-job-id": "h-1"}).job_id == "h-1"
    with pytest.raises(InvalidJobMetadata, match="disagree"):
        parse_job_tag({"job_id": "a"}, {"x-job-id": "b"})
    with pytest.raises(InvalidJobMetadata):
        parse_job_tag(None, {"x-job-id": "bad id"})


def test_metadata_must_be_an_object_and_is_optional() -> None:
    assert parse_job_tag(None, {}).job_id is None
    assert parse_job_tag({"other": 1}, {}).job_id is None
    with pytest.raises(InvalidJobMetadata, match="metadata must be a JSON object"):
        parse_job_tag(["job_id"], {})


def test_nul_characters_are_refused_before_they_reach_postgresql() -> None:
    with pytest.raises(InvalidJobMetadata, match="NUL"):
        parse_job_tag({"job_id": "j", "job_metadata": {"note": "a\x00b"}}, {})


def test_integers_beyond_64_bits_are_refused_before_they_reach_the_writer() -> None:
    # The writer encodes records with orjson (64-bit integers): such a call's record would be
    # refused at write time and dropped. Refused up front instead, with the request's 400.
    assert parse_job_tag({"job_id": "j", "job_metadata": {"n": 2**63 - 1}}, {}).job_metadata == {"n": 2**63 - 1}
    with pytest.raises(InvalidJobMetadata, match="64-bit"):
        parse_job_tag({"job_id": "j", "job_metadata": {"n": 2**64}}, {})
