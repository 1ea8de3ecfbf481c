"""Validation of the job fields a client puts on a request.

Pure functions, no LiteLLM types: :mod:`litellm_jobs_plugin.litellm_adapter` hands in the client's
metadata object and request headers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, cast

import orjson

from .errors import InvalidJobMetadata
from .models import JobTag

JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
JOB_TYPE_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
TEAM_ID_PATTERN = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
MAX_JOB_METADATA_BYTES = 8 * 1024
#: Stored JSON nested deeper than this would make reading the job back (json, PostgreSQL's jsonb,
#: LiteLLM's deep copies) hit recursion limits: 8 KiB could otherwise hold 1,000 levels.
MAX_JOB_METADATA_DEPTH = 32
MAX_PURPOSE_CHARS = 128

#: LiteLLM's copy, inside a request's metadata, of the metadata the client sent.
REQUESTER_METADATA = "requester_metadata"

JOB_ID_HEADER = "x-job-id"
JOB_TYPE_HEADER = "x-job-type"


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_job_id(value: object, *, param: str = "metadata.job_id") -> str:
    if not isinstance(value, str) or not JOB_ID_PATTERN.fullmatch(value):
        raise InvalidJobMetadata(
            f"{param} must be 1-128 characters of A-Z a-z 0-9 . _ : - (got {_show(value)}).", param=param
        )
    if not value.strip("."):
        # "." and ".." do not survive a URL path: clients resolve /api/jobs/../complete to
        # /api/complete, so such a job could never be completed by id (its hold would wait for expiry).
        raise InvalidJobMetadata(
            f"{param} must not be only dots: '.' and '..' do not survive a URL path (got {_show(value)}).",
            param=param,
        )
    return value


def check_job_type(value: object, *, param: str = "metadata.job_type") -> str:
    if not isinstance(value, str) or not JOB_TYPE_PATTERN.fullmatch(value):
        raise InvalidJobMetadata(
            f"{param} must be 1-64 characters of A-Z a-z 0-9 . _ - (got {_show(value)}).", param=param
        )
    return value


def check_team_id(value: object, *, param: str = "metadata.team_id") -> str:
    if not isinstance(value, str) or not TEAM_ID_PATTERN.fullmatch(value):
        raise InvalidJobMetadata(f"{param} must be a team id (got {_show(value)}).", param=param)
    return value


def check_purpose(value: object, *, param: str = "metadata.purpose") -> str:
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= MAX_PURPOSE_CHARS
        or any(not ch.isprintable() for ch in value)
    ):
        raise InvalidJobMetadata(
            f"{param} must be 1-{MAX_PURPOSE_CHARS} printable characters (got {_show(value)}).", param=param
        )
    return value


def json_depth(value: object, *, limit: int) -> int:
    """How deeply ``value``'s objects and arrays nest (a scalar is 0), counted without recursion;
    stops counting once past ``limit``."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > limit:
            break
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _holds_non_finite(value: object) -> bool:
    stack: list[Any] = [value]
    pop, extend = stack.pop, stack.extend
    while stack:
        item = pop()
        kind = type(item)
        if kind is str or kind is int or kind is bool or item is None:
            continue
        if kind is float or isinstance(item, float):
            if not math.isfinite(item):
                return True
        elif kind is dict or isinstance(item, Mapping):
            extend(item.values())
        elif kind is list or kind is tuple or isinstance(item, (list, tuple)):
            extend(item)
    return False


def non_finite_at(value: object) -> str | None:
    """Where ``value`` holds a NaN or an infinity (``"a.b.0"``; ``""`` for ``value`` itself), or None.

    Python's json (which LiteLLM falls back to for a body orjson refuses) reads the non-standard
    ``NaN``, ``Infinity`` and ``-Infinity``; no JSON encoder downstream writes them back faithfully
    (orjson writes ``null``, Starlette's responses refuse them). Walked without recursion.
    """
    if not _holds_non_finite(value):
        return None  # the usual answer, found without building a path for every value
    stack: list[tuple[object, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return path
        elif isinstance(item, Mapping):
            stack.extend((child, f"{path}.{key}" if path else str(key)) for key, child in item.items())
        elif isinstance(item, (list, tuple)):
            stack.extend((child, f"{path}.{i}" if path else str(i)) for i, child in enumerate(item))
    return None


def check_finite(value: object, *, param: str) -> None:
    """Refuse NaN and infinities anywhere in ``value`` (:func:`non_finite_at`)."""
    where = non_finite_at(value)
    if where is not None:
        at = f"{param}.{where}" if where else param
        at = at if len(at) <= 100 else at[:97] + "..."
        raise InvalidJobMetadata(
            f"{at} is NaN or an infinity, which is not JSON; send a finite number, a string or null.", param=at
        )


def check_job_metadata(value: object, *, param: str = "metadata.job_metadata") -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidJobMetadata(f"{param} must be a JSON object (got {_show(value)}).", param=param)
    if json_depth(value, limit=MAX_JOB_METADATA_DEPTH) > MAX_JOB_METADATA_DEPTH:
        raise InvalidJobMetadata(f"{param} nests deeper than {MAX_JOB_METADATA_DEPTH} levels.", param=param)
    check_finite(value, param=param)
    try:
        # orjson, as the writer encodes it: integers beyond 64 bits are refused here, not at write time
        raw = orjson.dumps(value)
    except TypeError as exc:
        raise InvalidJobMetadata(f"{param} must be plain JSON ({exc}).", param=param) from exc
    size = len(raw)
    if b"\\u0000" in raw:
        raise InvalidJobMetadata(f"{param} must not contain NUL characters (\\u0000).", param=param)
    if size > MAX_JOB_METADATA_BYTES:
        raise InvalidJobMetadata(
            f"{param} is {size} bytes of JSON; at most {MAX_JOB_METADATA_BYTES} are kept.", param=param
        )
    return value


def _one_source(meta_value: object, header_value: str | None, name: str) -> object:
    if header_value is None:
        return meta_value
    if meta_value is not None and meta_value != header_value:
        raise InvalidJobMetadata(
            f"metadata.{name} and the x-{name.replace('_', '-')} header disagree; send one of them.",
            param=f"metadata.{name}",
        )
    return header_value


_NO_TAG = JobTag(job_id=None, job_type=None, job_metadata=None, team_id=None, purpose=None)


def parse_job_tag(client_metadata: object, headers: Mapping[str, str]) -> JobTag:
    """The validated job fields of one request; raises :class:`InvalidJobMetadata`.

    ``client_metadata`` is the request body's ``metadata`` (any JSON value); ``headers`` are the
    request headers with lower-case names.
    """
    # ``type(x) is dict`` first: the usual case, without the ABC machinery of isinstance(x, Mapping)
    is_object = type(client_metadata) is dict or isinstance(client_metadata, Mapping)
    if client_metadata is not None and not is_object:
        raise InvalidJobMetadata("metadata must be a JSON object.", param="metadata")
    meta: Mapping[str, Any] = cast("Mapping[str, Any]", client_metadata) if is_object else {}

    raw_id = _one_source(meta.get("job_id"), headers.get(JOB_ID_HEADER), "job_id")
    raw_type = _one_source(meta.get("job_type"), headers.get(JOB_TYPE_HEADER), "job_type")
    raw_meta = meta.get("job_metadata")
    raw_team = meta.get("team_id")
    raw_purpose = meta.get("purpose")
    if raw_id is None and raw_type is None and raw_meta is None and raw_team is None and raw_purpose is None:
        return _NO_TAG  # an untagged call (frozen: shared)
    # A tracked call's metadata is the client's all through, not only its job fields. LiteLLM
    # keeps a copy of what the client sent (``requester_metadata``) beside its own additions.
    sent = meta.get(REQUESTER_METADATA)
    check_finite(sent if type(sent) is dict or isinstance(sent, Mapping) else meta, param="metadata")
    return JobTag(
        job_id=None if raw_id is None else check_job_id(raw_id),
        job_type=None if raw_type is None else check_job_type(raw_type),
        job_metadata=None if raw_meta is None else check_job_metadata(raw_meta),
        team_id=None if raw_team is None else check_team_id(raw_team),
        purpose=None if raw_purpose is None else check_purpose(raw_purpose),
    )
