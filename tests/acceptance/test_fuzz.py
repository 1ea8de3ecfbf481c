"""Hostile-input fuzzing of every route and of the metadata path, against one real proxy.

Every request this module generates must be refused: an unknown or missing key, a body that is not
a JSON object (or is too big, too deep, of the wrong type), an id outside its documented alphabet,
another team's job, a closed job, a team without credits. Each answer is checked (status < 500; a
4xx is OpenAI's error JSON with one of our error types, or LiteLLM's own ``auth_error`` /
``invalid_request_error`` for its key auth and body parsing), and after each test the plugin's
tables (every row of ``jobs``, ``calls``, ``call_events``, ``credit_ledger``, ``credit_accounts``),
the teams' balances, the writer's counters and the fake upstream's request count are exactly
what they were before the first fuzzed request. The only answers allowed to be 2xx are those of
read-only routes (GETs), counted per route. The last test checks that at least 2,000 requests were
sent.

Part of it is schemathesis, fed the proxy's own ``/openapi.json`` filtered to our routes (tag
``litellm-jobs``), positive and negative cases, with a key whose team has no credits (so a valid
write can only be a 402) and, for the read-only routes, a funded team's key.
"""

from __future__ import annotations

import json
import re
import string
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from tests.support.services import FakeUpstream, Proxy, proxy_config, wait_for

pytestmark = pytest.mark.timeout(900)

MASTER, TEAM_A, TEAM_B, BROKE, NO_TEAM = "sk-master", "sk-team-a", "sk-team-b", "sk-broke", "sk-noteam"
KNOWN_KEYS = {MASTER, TEAM_A, TEAM_B, "sk-team-c", "sk-team-d", "sk-team-e", "sk-acme", BROKE, NO_TEAM}
TEAMS = ("team-a", "team-b", "team-broke")
#: The jobs that exist before the fuzzing starts (created by the fixture).
OPEN_A, CLOSED_A, OPEN_B, CLOSED_B = "fz-open-a", "fz-closed-a", "fz-open-b", "fz-closed-b"
JOB_TYPE = "doc"
MESSAGES = [{"role": "user", "content": "hello"}]

#: The documented alphabets of ids and types: a value outside them must be refused.
JOB_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
JOB_TYPE_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
TEAM_ID_RE = re.compile(r"[A-Za-z0-9._:@-]{1,128}")

#: Our error types, and LiteLLM's own answers for a bad key and for a body its parser refuses.
OUR_TYPES = {
    "invalid_job_metadata",
    "job_id_required",
    "team_required",
    "forbidden",
    "insufficient_credits",
    "job_budget_exceeded",
    "job_not_found",
    "job_closed",
    "job_type_mismatch",
    "billing_not_configured",  # the Stripe webhook of a proxy without its secret: a 404
}
LITELLM_TYPES = {"auth_error", "invalid_request_error"}
MAX_BODY = 64 * 1024
MAX_CALL_BODY = 16 * 1024 * 1024
STATE_TABLES = ("jobs", "calls", "call_events", "credit_ledger", "credit_accounts")


def fuzz(examples: int) -> settings:
    """Hypothesis settings of one fuzz test: ``examples`` requests against the live proxy."""
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )


# -- the record of every request --------------------------------------------------------------


@dataclass
class Tally:
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    accepted: Counter[str] = field(default_factory=Counter)  # 2xx answers, by route
    per_test: Counter[str] = field(default_factory=Counter)
    per_test_status: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)


TALLY = Tally()


def check_answer(r: httpx.Response, route: str, *, test: str, may_accept: bool = False) -> None:
    """The fuzz contract for one answer (``route`` is the route's template, for the tally)."""
    TALLY.requests += 1
    TALLY.statuses[r.status_code] += 1
    TALLY.per_test[test] += 1
    TALLY.per_test_status[f"{test} {r.status_code}"] += 1
    where = (
        f"{r.request.method} {str(r.request.url)[:300]} {dict(r.request.headers)!r:.600} {r.request.content[:600]!r}"
        f" -> {r.status_code} {r.text[:500]!r}"
    )
    assert r.status_code < 500, where
    if r.status_code < 300:
        assert may_accept, f"a request that must be refused was accepted: {where}"
        TALLY.accepted[route] += 1
        return
    assert 400 <= r.status_code < 500, where
    check_error_body(r.status_code, r.headers.get("content-type", ""), r.content, where)


def check_error_body(status: int, content_type: str, content: bytes, where: str) -> None:
    assert content_type.startswith("application/json"), where
    body = json.loads(content)
    assert isinstance(body, dict), where
    error = body.get("error")
    assert isinstance(error, dict), where
    assert {"message", "type", "code", "param"} <= error.keys(), where
    assert isinstance(error["message"], str), where
    assert error["message"], where
    assert error["type"] in OUR_TYPES | LITELLM_TYPES, where
    assert str(error["code"]) == str(status), where


# -- the proxy and the state that must not change ----------------------------------------------


@dataclass
class Fuzz:
    proxy: Proxy
    database_url: str
    upstream: FakeUpstream
    http: httpx.Client
    baseline: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.proxy.url

    def state(self) -> dict[str, Any]:
        """Everything a request could change: every row of the plugin's tables (count and digest),
        the teams' balances as the proxy decides them, the writer's counters, upstream requests."""
        wait_for(
            lambda: all(p.health().json()["writer"]["buffer_depth"] == 0 for p in self.proxy.replicas),
            timeout=60,
            what="the writer's buffer to drain",
        )
        state: dict[str, Any] = {}
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            for table in STATE_TABLES:
                state[table] = conn.execute(
                    f"SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), ''))"  # type: ignore[arg-type]
                    f" FROM litellm_jobs.{table} t"
                ).fetchone()
        for team in TEAMS:
            r = self.http.get(f"{self.url}/api/teams/{team}", headers=auth(MASTER))
            r.raise_for_status()
            state[f"balance:{team}"] = r.json()
        writers = [p.health().json()["writer"] for p in self.proxy.replicas]  # each replica's own
        state["writer"] = [{k: w[k] for k in ("written", "dropped", "store_errors")} for w in writers]
        state["upstream"] = self.upstream.stats().get("_total", 0)
        return state

    def assert_unchanged(self) -> None:
        now = self.state()
        changed = {k: (self.baseline[k], now[k]) for k in now if now[k] != self.baseline[k]}
        assert not changed, f"refused requests changed state: {changed}"

    def send(
        self,
        method: str,
        path: str,
        *,
        route: str,
        test: str,
        headers: dict[str, Any] | None = None,
        content: bytes | None = None,
        params: dict[str, str] | None = None,
        may_accept: bool = False,
    ) -> httpx.Response:
        r = self.http.request(method, f"{self.url}{path}", headers=headers, content=content, params=params)
        check_answer(r, route, test=test, may_accept=may_accept)
        return r


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def json_headers(key: str | None) -> dict[str, str]:
    return {"Content-Type": "application/json", **(auth(key) if key else {})}


def dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


@pytest.fixture(scope="module")
def fz(
    tmp_path_factory: pytest.TempPathFactory,
    upstream: FakeUpstream,
    module_database_url: str,
    start_in_mode: Callable[..., Proxy],
) -> Iterator[Fuzz]:
    proxy = start_in_mode(
        tmp_path_factory.mktemp("fuzz"), proxy_config(upstream), env={"JOBS_DATABASE_URL": module_database_url}
    )
    http = httpx.Client(timeout=120)
    try:
        fuzz = Fuzz(proxy, module_database_url, upstream, http)
        proxy.grant("team-a", 1000)
        proxy.grant("team-b", 1000)
        for key, open_id, closed_id in ((TEAM_A, OPEN_A, CLOSED_A), (TEAM_B, OPEN_B, CLOSED_B)):
            for job_id in (open_id, closed_id):
                r = http.post(
                    f"{proxy.url}/api/jobs/create",
                    headers=json_headers(key),
                    json={"job_type": JOB_TYPE, "job_id": job_id, "metadata": {"note": "fuzz"}},
                )
                assert r.status_code == 201, r.text
            r = http.post(
                f"{proxy.url}/api/jobs/{closed_id}/complete", headers=json_headers(key), json={"status": "completed"}
            )
            assert r.status_code == 200, r.text
        # The open jobs have a call each (one row in calls and call_events), so "nothing changes" covers them.
        for key, job_id in ((TEAM_A, OPEN_A), (TEAM_B, OPEN_B)):
            r = http.post(
                f"{proxy.url}/v1/chat/completions",
                headers=json_headers(key),
                json={"model": "ChatAgent", "messages": MESSAGES, "metadata": {"job_id": job_id}},
            )
            assert r.status_code == 200, r.text
        wait_for(
            lambda: all(
                http.get(f"{proxy.url}/api/jobs/{j}", headers=auth(k)).json()["total_calls"] == 1
                for k, j in ((TEAM_A, OPEN_A), (TEAM_B, OPEN_B))
            ),
            timeout=60,
            what="the seed calls to be recorded",
        )
        fuzz.baseline = fuzz.state()
        assert fuzz.baseline["jobs"][0] == 4
        assert fuzz.baseline["calls"][0] == 2
        yield fuzz
    finally:
        http.close()
        proxy.stop(timeout=30)


# -- hostile values --------------------------------------------------------------------------

SQL = [
    "' OR '1'='1",
    "'; DROP TABLE litellm_jobs.jobs; --",
    "x'); DELETE FROM litellm_jobs.credit_ledger; --",
    "1; SELECT pg_sleep(10)",
    '" OR ""="',
    "%' OR 1=1 --",
    "$$; UPDATE litellm_jobs.credit_accounts SET credits_allocated = 1e9; $$",
    "admin'--",
    "1 UNION SELECT * FROM litellm_jobs.credit_accounts",
    "\\'; TRUNCATE jobs; --",
]
ODD = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\u202eevil",
    "🚀" * 40,
    "ｊｏｂ",
    "job id",
    "job\tid",
    "job\nid",
    "job\r\nX-Injected: 1",
    "a" * 129,
    "a" * 5000,
    "../../etc/passwd",
    "${jndi:ldap://x}",
    "{{7*7}}",
    "<script>alert(1)</script>",
    "\ufeffjob",
    "null",
    "job/../../x",
    "é",
    "\x7f",
    "\x1b[31m",
]

hostile_text = st.one_of(
    st.sampled_from(SQL + ODD),
    st.text(max_size=200),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x1F), min_size=1, max_size=20),
    st.text(min_size=129, max_size=600),
    st.builds(lambda a, b: a + b, st.sampled_from(SQL + ODD), st.text(max_size=40)),
)
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20)
)
any_json = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=12,
)
non_strings = st.one_of(
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(any_json, max_size=3),
    st.dictionaries(st.text(max_size=8), any_json, max_size=3),
)
non_objects = st.one_of(json_scalars.filter(lambda v: v is not None), st.lists(any_json, max_size=4))


def invalid(pattern: re.Pattern[str]) -> st.SearchStrategy[Any]:
    """Values a field with ``pattern`` must refuse (never None: None means absent)."""
    return st.one_of(hostile_text.filter(lambda s: not pattern.fullmatch(s)), non_strings)


bad_job_id = invalid(JOB_ID_RE)
bad_job_type = invalid(JOB_TYPE_RE)
bad_team_id = invalid(TEAM_ID_RE)
valid_job_type = st.from_regex(r"\A[A-Za-z0-9._-]{1,20}\Z")
fresh_job_id = st.builds(lambda: f"fz-new-{uuid.uuid4().hex[:12]}")
bad_purpose = st.one_of(
    st.just(""),
    st.text(min_size=129, max_size=300),
    st.builds(lambda a, c: a + c, st.text(max_size=20), st.sampled_from(["\x00", "\n", "\x1b", "\u200b", "\x7f"])),
    non_strings,
)
big_object = st.builds(lambda n: {"blob": "x" * n}, st.integers(min_value=8 * 1024, max_value=20_000))
bad_job_metadata = st.one_of(non_objects, big_object, st.just({"a": "\x00"}), st.just({"k": ["a\x00"]}))


def path_segment(value: str) -> str:
    """``value`` as one path segment (dots encoded: clients would not send them literally)."""
    return urllib.parse.quote(value, safe="").replace(".", "%2E")


# Path ids: everything but "/" (a %2F is decoded by the server and routes elsewhere: LiteLLM's 404).
path_text = st.one_of(
    st.sampled_from([s for s in SQL + ODD if s and "/" not in s]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/"), min_size=1, max_size=300),
    st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=0x1F), min_size=1, max_size=10),
)
raw_path_ids = st.sampled_from(["%ff%fe", "%c0%af", "%", "%zz", "%00", "a%00b", "%E2%80%AE", "%ed%a0%80"])


# -- 1. keys: missing, malformed, unknown, and other teams' ------------------------------------

#: (method, route template, a body that a right key could send)
ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/api/jobs/create", {"job_type": JOB_TYPE}),
    ("GET", "/api/jobs", None),
    ("GET", "/api/jobs/{job_id}", None),
    ("GET", "/api/jobs/{job_id}/calls", None),
    ("GET", "/api/jobs/{job_id}/costs", None),
    ("POST", "/api/jobs/{job_id}/llm-call", {"messages": MESSAGES}),
    ("POST", "/api/jobs/{job_id}/llm-call-stream", {"messages": MESSAGES}),
    ("POST", "/api/jobs/{job_id}/complete", {"status": "completed"}),
    ("POST", "/api/jobs/create-and-call", {"job_type": JOB_TYPE, "messages": MESSAGES}),
    ("GET", "/api/teams/{team_id}", None),
    ("GET", "/api/teams/{team_id}/usage?period=2026-12", None),
    ("POST", "/api/teams/{team_id}/credits", {"amount": 5, "idempotency_key": "fuzz-grant"}),
    ("GET", "/api/analytics/job-types", None),
    ("GET", "/api/whoami", None),
    ("POST", "/v1/chat/completions", {"model": "ChatAgent", "messages": MESSAGES, "metadata": {"job_id": OPEN_A}}),
    ("POST", "/chat/completions", {"model": "ChatAgent", "messages": MESSAGES}),
]


def unknown_key(key: str) -> bool:
    stripped = key.strip()
    for prefix in ("Bearer ", "bearer ", "BEARER "):
        stripped = stripped.removeprefix(prefix).strip()
    return stripped not in KNOWN_KEYS and not any(k in key for k in KNOWN_KEYS)


header_bytes = st.binary(min_size=0, max_size=300).map(
    # What HTTP allows in a header value: visible ASCII, obs-text (0x80-0xFF), inner spaces and tabs.
    lambda b: bytes(c for c in b if c in (0x09, 0x20) or 0x21 <= c <= 0x7E or c >= 0x80).strip(b" \t")
)
bad_key_headers = st.one_of(
    st.just({}),
    st.just({"Authorization": ""}),
    st.just({"Authorization": "Bearer"}),
    st.just({"Authorization": "Bearer\tx"}),
    st.just({"Authorization": "Basic c2stdGVhbS1hOg=="}),
    st.just({"Authorization": "Bearer sk-team-a sk-team-b"}),
    st.just({"Authorization": "Bearer " + "k" * 6000}),
    hostile_text.filter(unknown_key).map(
        lambda k: {"Authorization": ("Bearer " + k.encode("utf-8").hex()[:4000]).strip()}
    ),
    header_bytes.filter(lambda b: unknown_key(b.decode("latin-1"))).map(
        lambda b: {"Authorization": (b"Bearer " + b).strip()}
    ),
    header_bytes.filter(lambda b: unknown_key(b.decode("latin-1"))).map(lambda b: {"x-litellm-api-key": b}),
    st.sampled_from([{"api-key": "sk-nope"}, {"x-api-key": "sk-nope"}, {"Cookie": "token=sk-team-a"}]),
)


@given(route=st.sampled_from(ROUTES), headers=bad_key_headers, extra=any_json)
@fuzz(300)
def test_fuzz_missing_and_invalid_keys(
    fz: Fuzz, route: tuple[str, str, Any], headers: dict[str, Any], extra: Any
) -> None:
    """A missing, malformed or unknown key is a 401 on every route, whatever the body."""
    method, template, body = route
    path = template.format(job_id=OPEN_A, team_id="team-a")
    content = None
    if body is not None:
        content = dumps({**body, "fuzz": extra})
    r = fz.send(
        method,
        path,
        route=template,
        test="keys",
        headers={"Content-Type": "application/json", **headers},
        content=content,
    )
    assert r.status_code in (400, 401), r.text


OTHER_TEAM_ROUTES = [
    # (method, template, body, key, path values) that a key of another team must be refused
    ("GET", "/api/jobs/{job_id}", None),
    ("GET", "/api/jobs/{job_id}/calls", None),
    ("GET", "/api/jobs/{job_id}/costs", None),
    ("POST", "/api/jobs/{job_id}/complete", {"status": "completed"}),
    ("POST", "/api/jobs/{job_id}/complete", {"status": "failed", "error_message": "fuzz"}),
    ("GET", "/api/teams/{team_id}", None),
    ("GET", "/api/teams/{team_id}/usage?period=2026-12", None),
    ("POST", "/api/teams/{team_id}/credits", {"amount": 5, "idempotency_key": "fuzz-other"}),
]


@given(
    route=st.sampled_from(OTHER_TEAM_ROUTES),
    who=st.sampled_from([(TEAM_A, OPEN_B, "team-b"), (TEAM_B, OPEN_A, "team-a"), (TEAM_A, CLOSED_B, "team-b")]),
    team_id=st.one_of(st.none(), st.sampled_from(["team-b", "team-a", "team-broke", "acme-corp"])),
)
@fuzz(120)
def test_fuzz_other_teams(
    fz: Fuzz, route: tuple[str, str, Any], who: tuple[str, str, str], team_id: str | None
) -> None:
    """Another team's jobs and team routes: 404 / 403, and their jobs stay as they are."""
    method, template, body = route
    key, job_id, other_team = who
    path = template.format(job_id=job_id, team_id=other_team)
    own = "team-a" if key == TEAM_A else "team-b"
    if body is not None and team_id is not None and "credits" not in template:
        body = {**body, "team_id": team_id}
    elif body is None and team_id is not None and template.startswith("/api/jobs/"):
        path += f"?team_id={team_id}"
    r = fz.send(
        method, path, route=template, test="other-teams", headers=json_headers(key), content=body and dumps(body)
    )
    expected = {403, 404}
    if team_id == own:
        expected = {404} if template.startswith("/api/jobs/") else {403}
    assert r.status_code in expected, r.text


# -- 2. bodies ---------------------------------------------------------------------------------

POST_ROUTES = [
    ("/api/jobs/create", MAX_BODY),
    ("/api/jobs/{job_id}/complete", MAX_BODY),
    ("/api/teams/{team_id}/credits", MAX_BODY),
    ("/api/jobs/{job_id}/llm-call", MAX_CALL_BODY),
    ("/api/jobs/{job_id}/llm-call-stream", MAX_CALL_BODY),
    ("/api/jobs/create-and-call", MAX_CALL_BODY),
]


def nested(depth: int, kind: str) -> bytes:
    return (b"[" * depth + b"]" * depth) if kind == "list" else (b'{"a":' * depth + b"1" + b"}" * depth)


raw_bodies = st.one_of(
    st.binary(min_size=1, max_size=300).filter(lambda b: b.strip() != b""),
    st.text(min_size=1, max_size=200).map(str.encode).filter(lambda b: b.strip() != b""),
    st.sampled_from(
        [
            b"{",
            b'{"job_type": "doc"',
            b"{'job_type': 'doc'}",
            b'{"job_type": "doc",}',
            b"\xff\xfe{\x00}",
            b'{"job_type": "doc"}garbage',
            b"job_type=doc&status=completed",
            b"--boundary\r\nContent-Disposition: form-data; name=job_type\r\n\r\ndoc\r\n--boundary--",
            b'{"a": "\\ud800"}',
            b'{"job_type": "\\u0000"}',
            b'{"job_type": "doc\x00"}',
            b'{"messages": [{"role": "user", "content": "\\u0000"}], "job_type": 5}',
            b"NaN",
            b"[]",
            b'"just a string"',
            b"12345678901234567890123456789",
            b"null",
            b"true",
            b'{"__proto__": {"admin": true}}',
            b'{"job_type": "' + b"9" * 5000 + b'"',
        ]
    ),
    non_objects.map(dumps),
    st.builds(nested, st.sampled_from([100, 1000, 20_000, 30_000]), st.sampled_from(["list", "dict"])),
)
content_types = st.sampled_from(
    [
        "application/json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=boundary",
        "application/octet-stream",
        "application/json; charset=latin-1",
        "",
    ]
)


@given(
    route=st.sampled_from(POST_ROUTES),
    key=st.sampled_from([TEAM_A, MASTER, BROKE]),
    raw=raw_bodies,
    ctype=content_types,
)
@fuzz(300)
def test_fuzz_raw_bodies(fz: Fuzz, route: tuple[str, int], key: str, raw: bytes, ctype: str) -> None:
    """Bodies that are not a JSON object (bytes, broken or nested JSON, arrays, scalars, NULs): 400."""
    template, _ = route
    path = template.format(job_id=OPEN_A, team_id="team-a")
    headers = {**auth(key), **({"Content-Type": ctype} if ctype else {})}
    try:
        value = json.loads(raw)
        is_object = isinstance(value, dict)
    except (ValueError, RecursionError):
        is_object = False
    r = fz.send("POST", path, route=template, test="raw-bodies", headers=headers, content=raw)
    if not is_object:
        assert r.status_code == 400, r.text
    else:
        assert 400 <= r.status_code < 500, r.text


def with_field(base: dict[str, Any], name: str, value: Any) -> dict[str, Any]:
    return {**base, name: value}


@st.composite
def bad_create(draw: st.DrawFn, key: str) -> dict[str, Any]:
    base: dict[str, Any] = {"job_type": draw(valid_job_type), "job_id": draw(fresh_job_id)}
    field_name, values = draw(
        st.sampled_from(
            [
                ("job_type", bad_job_type),
                ("job_id", bad_job_id),
                ("metadata", bad_job_metadata),
                (
                    "max_calls",
                    st.one_of(
                        st.integers(max_value=0),
                        st.integers(min_value=1_000_001),
                        st.text(max_size=20).filter(lambda s: not any(c.isdigit() for c in s)),
                        st.floats().filter(lambda f: not (f == f and abs(f) != float("inf") and f == int(f))),
                        st.lists(st.integers(), max_size=2),
                    ),
                ),
                (
                    "max_cost_usd",
                    st.one_of(
                        st.integers(max_value=0),
                        st.sampled_from(["NaN", "Infinity", "-1", "0", "1e99999", "abc", "", "1" * 40]),
                        st.lists(st.integers(), max_size=2),
                        st.just({}),
                    ),
                ),
                # The admin may name any valid team: only a malformed one is refused.
                (
                    "team_id",
                    bad_team_id if key == MASTER else st.one_of(bad_team_id, st.sampled_from(["team-b", "acme-corp"])),
                ),
                (
                    "user_id",
                    st.one_of(
                        st.just(""),
                        st.text(min_size=129, max_size=300),
                        st.sampled_from(["a\x00", "a\nb", "\x1f", "u\x7f"]),
                        non_strings,
                    ),
                ),
            ]
        )
    )
    if draw(st.booleans()):
        del base["job_id"]
    return with_field(base, field_name, draw(values))


@st.composite
def bad_complete(draw: st.DrawFn) -> dict[str, Any]:
    base: dict[str, Any] = {"status": draw(st.sampled_from(["completed", "failed"]))}
    field_name, values = draw(
        st.sampled_from(
            [
                (
                    "status",
                    st.one_of(
                        hostile_text.filter(lambda s: s not in ("completed", "failed")),
                        non_strings,
                        st.sampled_from(["COMPLETED", "expired", "pending", "in_progress", "completed "]),
                    ),
                ),
                ("metadata", bad_job_metadata),
                ("error_message", st.one_of(st.text(min_size=4097, max_size=5000), non_strings)),
                ("team_id", st.one_of(bad_team_id, st.sampled_from(["team-b", "team-broke"]))),
            ]
        )
    )
    if draw(st.booleans()):
        base["result"] = draw(any_json)
    return with_field(base, field_name, draw(values))


@st.composite
def bad_grant(draw: st.DrawFn) -> dict[str, Any]:
    base: dict[str, Any] = {
        "amount": draw(st.integers(min_value=1, max_value=100)),
        "idempotency_key": f"fz-{uuid.uuid4().hex}",
    }
    field_name, values = draw(
        st.sampled_from(
            [
                (
                    "amount",
                    st.one_of(
                        st.sampled_from(
                            ["NaN", "Infinity", "-Infinity", "abc", "", "1e400", "1" * 30, "0.0000001", "sNaN"]
                        ),
                        st.integers(max_value=0),
                        st.floats(max_value=0),
                        st.lists(st.integers(), max_size=2),
                        st.just(None),
                        st.booleans().map(lambda b: [b]),
                    ),
                ),
                ("idempotency_key", st.one_of(st.just(""), st.text(min_size=129, max_size=300), non_strings)),
                ("kind", st.one_of(hostile_text.filter(lambda s: s not in ("grant", "adjust")), non_strings)),
                ("note", st.one_of(st.text(min_size=1025, max_size=2000), non_strings)),
            ]
        )
    )
    return with_field(base, field_name, draw(values))


bad_messages = st.one_of(
    st.just([]),
    non_strings.filter(lambda v: not isinstance(v, list) or not v),
    st.lists(json_scalars, min_size=1, max_size=3),
    st.text(max_size=30),
)


@st.composite
def bad_call(draw: st.DrawFn, create: bool, fresh: bool = False) -> dict[str, Any]:
    base: dict[str, Any] = {"messages": MESSAGES}
    if create:
        base.update(job_type=draw(valid_job_type), job_id=draw(fresh_job_id))
    choices: list[tuple[str, st.SearchStrategy[Any]]] = [
        ("messages", bad_messages),
        (
            "model",
            st.one_of(st.just(""), st.text(min_size=257, max_size=400), non_strings.filter(lambda v: v is not None)),
        ),
        ("model_group", st.one_of(st.just(""), st.text(min_size=257, max_size=400), non_strings)),
        ("purpose", bad_purpose),
        ("team_id", st.one_of(bad_team_id, st.sampled_from(["team-b", "team-broke"]))),
        # Another valid type is a 409 on an existing job; on a new one it would open the job.
        (
            "job_type",
            bad_job_type
            if create or fresh
            else st.one_of(bad_job_type, valid_job_type.filter(lambda t: t != JOB_TYPE)),
        ),
        (
            "stream",
            st.one_of(
                st.text(min_size=1, max_size=5).filter(
                    lambda s: s.lower() not in {"true", "false", "1", "0", "yes", "no", "on", "off", "t", "f", "y", "n"}
                ),
                st.lists(st.integers(), max_size=2),
                st.just({}),
            ),
        ),
    ]
    if create:
        choices += [
            ("job_id", bad_job_id),
            ("metadata", bad_job_metadata),
            ("max_calls", st.one_of(st.integers(max_value=0), st.integers(min_value=1_000_001))),
            ("max_cost_usd", st.sampled_from(["NaN", "0", "-5", "abc"])),
            ("user_id", st.sampled_from(["", "a\x00", "a\nb", "x" * 129])),
        ]
    else:
        choices += [("metadata", st.one_of(non_objects, st.just({"team_id": "team-b"}), st.just({"team_id": 5})))]
    field_name, values = draw(st.sampled_from(choices))
    return with_field(base, field_name, draw(values))


@st.composite
def bad_body_requests(draw: st.DrawFn) -> tuple[str, str, str, dict[str, Any]]:
    """(route template, path, key, body) with at least one field DESIGN refuses."""
    kind = draw(st.sampled_from(["create", "complete", "grant", "llm-call", "llm-call-stream", "create-and-call"]))
    if kind == "create":
        return (
            "/api/jobs/create",
            "/api/jobs/create",
            *(lambda key: (key, draw(bad_create(key))))(draw(st.sampled_from([TEAM_A, MASTER]))),
        )
    if kind == "complete":
        job = draw(st.sampled_from([OPEN_A, CLOSED_A]))
        return "/api/jobs/{job_id}/complete", f"/api/jobs/{job}/complete", TEAM_A, draw(bad_complete())
    if kind == "grant":
        return "/api/teams/{team_id}/credits", "/api/teams/team-a/credits", MASTER, draw(bad_grant())
    if kind == "create-and-call":
        return "/api/jobs/create-and-call", "/api/jobs/create-and-call", TEAM_A, draw(bad_call(True))
    job = draw(st.sampled_from([OPEN_A, CLOSED_A, draw(fresh_job_id)]))
    body = draw(bad_call(False, fresh=job not in (OPEN_A, CLOSED_A)))
    return f"/api/jobs/{{job_id}}/{kind}", f"/api/jobs/{job}/{kind}", TEAM_A, body


@given(req=bad_body_requests())
@fuzz(400)
def test_fuzz_body_fields(fz: Fuzz, req: tuple[str, str, str, dict[str, Any]]) -> None:
    """JSON objects with one field of the wrong type, size or alphabet (the rest valid): a 4xx."""
    template, path, key, body = req
    r = fz.send("POST", path, route=template, test="body-fields", headers=json_headers(key), content=dumps(body))
    assert r.status_code in (400, 401, 403, 404, 409), r.text


# -- 3. ids in paths and queries ---------------------------------------------------------------

JOB_PATH_ROUTES = [
    ("GET", "/api/jobs/{job_id}", None),
    ("GET", "/api/jobs/{job_id}/calls", None),
    ("GET", "/api/jobs/{job_id}/costs", None),
    ("POST", "/api/jobs/{job_id}/complete", {"status": "completed"}),
    ("POST", "/api/jobs/{job_id}/llm-call", {"messages": MESSAGES}),
    ("POST", "/api/jobs/{job_id}/llm-call-stream", {"messages": MESSAGES}),
]
TEAM_PATH_ROUTES = [
    ("GET", "/api/teams/{team_id}", None),
    ("GET", "/api/teams/{team_id}/usage?period=2026-12", None),
    ("POST", "/api/teams/{team_id}/credits", {"amount": 5, "idempotency_key": "fuzz-path"}),
]


@st.composite
def hostile_path_requests(draw: st.DrawFn) -> tuple[str, str, str, str, dict[str, Any] | None, bool]:
    """(method, template, path, key, body, may_accept) with a hostile id in the path."""
    if draw(st.booleans()):
        method, template, body = draw(st.sampled_from(JOB_PATH_ROUTES))
        raw = draw(st.one_of(path_text.map(path_segment), raw_path_ids))
        decoded = urllib.parse.unquote(raw, errors="replace")
        key = draw(st.sampled_from([TEAM_A, MASTER]))
        if method == "POST" and JOB_ID_RE.fullmatch(decoded) and "/complete" not in template:
            raw = path_segment(CLOSED_A)  # a valid new id would open a job: a closed one is refused
        return method, template, template.replace("{job_id}", raw), key, body, method == "GET"
    method, template, body = draw(st.sampled_from(TEAM_PATH_ROUTES))
    raw = draw(st.one_of(path_text.filter(lambda s: not TEAM_ID_RE.fullmatch(s)).map(path_segment), raw_path_ids))
    key = draw(st.sampled_from([TEAM_A, MASTER]))
    return method, template, template.replace("{team_id}", raw), key, body, False


@given(req=hostile_path_requests())
@fuzz(300)
def test_fuzz_path_ids(fz: Fuzz, req: tuple[str, str, str, str, dict[str, Any] | None, bool]) -> None:
    """Unicode, control characters, SQL, 5,000-character and undecodable ids in paths: a 4xx."""
    method, template, path, key, body, may_accept = req
    r = fz.send(
        method,
        path,
        route=template,
        test="path-ids",
        headers=json_headers(key),
        content=body and dumps(body),
        may_accept=may_accept,
    )
    assert r.status_code in (400, 401, 403, 404, 409) or may_accept, r.text


query_values = st.one_of(
    hostile_text,
    st.sampled_from(
        [
            "0001-01-01T00:00:00+23:59",
            "9999-12-31T23:59:59-23:59",
            "9999-12-31T23:59:59.999999",
            "0001-01-01",
            "2026-02-30",
            "2026-13",
            "9999-12",
            "0000-01",
            "+10000-01-01",
            "2026-12-01T25:00:00",
            "2026-12-01T00:00:00Z",
            "1e400",
            "-1",
            "0",
            "501",
            "99999999999999999999999",
            "eyJhIjogMX0=",
            "WyIyMDI2LTEyLTAxIiwgIiciXQ==",
            "WyJ4IiwgIngiXQ==",
            "W10=",
            "bnVsbA==",
            "WzEsIDIsIDNd",
            "WyIwMDAxLTAxLTAxVDAwOjAwOjAwKzIzOjU5IiwgImEiXQ==",
            "hour",
            "HOUR",
            "completed",
            "expired ",
        ]
    ),
)
GET_QUERY_ROUTES = [
    ("/api/jobs", ("status", "job_type", "since", "until", "cursor", "limit", "team_id")),
    ("/api/analytics/job-types", ("since", "until", "team_id", "bucket")),
    ("/api/teams/team-a/usage", ("period",)),
    ("/api/jobs/fz-open-a", ("team_id",)),
    ("/api/jobs/fz-open-a/calls", ("team_id",)),
    ("/api/jobs/fz-open-a/costs", ("team_id",)),
    ("/api/whoami", ("team_id",)),
    ("/api/jobs/health", ("x",)),
]


@st.composite
def hostile_queries(draw: st.DrawFn) -> tuple[str, dict[str, str]]:
    path, names = draw(st.sampled_from(GET_QUERY_ROUTES))
    chosen = draw(st.lists(st.sampled_from(names), min_size=1, max_size=len(names), unique=True))
    return path, {n: str(draw(query_values)) for n in chosen}


@given(req=hostile_queries(), key=st.sampled_from([TEAM_A, MASTER, BROKE]))
@fuzz(300)
def test_fuzz_query_parameters(fz: Fuzz, req: tuple[str, dict[str, str]], key: str) -> None:
    """Hostile filters, times, periods, cursors and limits on the read-only routes: never a 5xx,
    and every 4xx OpenAI's error JSON (a valid filter may answer 200)."""
    path, params = req
    fz.send("GET", path, route=path, test="queries", headers=auth(key), params=params, may_accept=True)


# -- 4. the metadata path: /v1/chat/completions ------------------------------------------------


@st.composite
def hostile_chat(draw: st.DrawFn) -> tuple[str, dict[str, Any], dict[str, str], int | None]:
    """(key, request body, extra headers, the status DESIGN gives it if known)."""
    key = draw(st.sampled_from([TEAM_A, TEAM_B, MASTER]))
    own = {TEAM_A: "team-a", TEAM_B: "team-b", MASTER: None}[key]
    meta: dict[str, Any] = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "job_id": fresh_job_id,
                "job_type": valid_job_type,
                "job_metadata": st.dictionaries(st.text(string.ascii_letters, max_size=8), st.integers(), max_size=3),
                "purpose": st.text(
                    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=20
                ),
            },
        )
    )
    headers: dict[str, str] = {}
    body: dict[str, Any] = {"model": "ChatAgent", "messages": MESSAGES}
    expected: int | None = 400
    case = draw(
        st.sampled_from(
            [
                "job_id",
                "job_type",
                "job_metadata",
                "purpose",
                "team_id",
                "not-object",
                "json-string",
                "header",
                "closed",
                "mismatch",
                "broke",
                "no-team",
            ]
        )
    )
    if case == "job_id":
        meta["job_id"] = draw(bad_job_id)
    elif case == "job_type":
        meta["job_type"] = draw(bad_job_type)
    elif case == "job_metadata":
        meta["job_metadata"] = draw(bad_job_metadata)
    elif case == "purpose":
        meta["purpose"] = draw(bad_purpose)
    elif case == "team_id":
        if own is None:
            meta["team_id"] = draw(bad_team_id)
        else:
            meta["team_id"] = draw(
                st.one_of(bad_team_id, st.sampled_from([t for t in ("team-a", "team-b", "team-zz") if t != own]))
            )
            expected = None  # 400 or 403
    elif case == "not-object":
        # LiteLLM turns a metadata that is not an object into {} before any hook (a JSON string is
        # parsed): the call is untagged, and untagged calls of these keys are refused (402, 401).
        key = draw(st.sampled_from([BROKE, NO_TEAM]))
        meta = draw(non_objects.filter(lambda v: not (isinstance(v, str) and v.strip().startswith("{"))))
        expected = 402 if key == BROKE else 401
    elif case == "json-string":
        # LiteLLM 1.106 drops a JSON-string metadata on this path too (its fields never reach a hook):
        # untagged, so refused only for keys whose untagged calls are refused.
        key = draw(st.sampled_from([BROKE, NO_TEAM]))
        meta = json.dumps({**meta, "job_id": draw(bad_job_id)})
        expected = 402 if key == BROKE else 401
    elif case == "header":
        if draw(st.booleans()):
            headers["x-job-id"] = draw(
                hostile_text.filter(lambda s: not JOB_ID_RE.fullmatch(s.strip())).map(
                    lambda s: s.encode("utf-8").hex()[:300] + "!"
                )
            )
        else:
            headers["x-job-id"] = draw(fresh_job_id)
            meta["job_id"] = draw(fresh_job_id)
    elif case == "closed":
        meta = {**meta, "job_id": CLOSED_A if key != TEAM_B else CLOSED_B, "job_type": JOB_TYPE}
        if key == MASTER:
            meta["team_id"] = "team-a"
        expected = 409
    elif case == "mismatch":
        meta = {**meta, "job_id": OPEN_A if key != TEAM_B else OPEN_B}
        meta["job_type"] = draw(valid_job_type.filter(lambda t: t != JOB_TYPE))
        if key == MASTER:
            meta["team_id"] = "team-a"
        expected = 409
    elif case == "broke":
        key = BROKE
        meta.pop("team_id", None)
        expected = 402
    else:
        key = NO_TEAM
        meta.pop("team_id", None)
        expected = 401
    body["metadata"] = meta
    if draw(st.booleans()):
        body["stream"] = True
    return key, body, headers, expected


@given(req=hostile_chat())
@fuzz(350)
def test_fuzz_chat_completions_metadata(fz: Fuzz, req: tuple[str, dict[str, Any], dict[str, str], int | None]) -> None:
    """OpenAI calls whose job fields are wrong (types, sizes, alphabets, NULs, SQL, other teams,
    closed jobs, another type, no credits, no team): refused before routing, nothing recorded."""
    key, body, headers, expected = req
    r = fz.send(
        "POST",
        "/v1/chat/completions",
        route="/v1/chat/completions",
        test="chat-metadata",
        headers={**json_headers(key), **headers},
        content=dumps(body),
    )
    if expected is not None:
        assert r.status_code == expected, r.text


def sdk_can_encode(body: dict[str, Any]) -> bool:
    try:
        json.dumps(body, allow_nan=False)
    except ValueError:
        return False
    return True


def sdk_call(oai: openai.OpenAI, body: dict[str, Any]) -> None:
    extra = {"metadata": body["metadata"]}
    if body.get("stream"):
        for _ in oai.chat.completions.create(
            model=body["model"], messages=body["messages"], stream=True, extra_body=extra
        ):
            pass
    else:
        oai.chat.completions.create(model=body["model"], messages=body["messages"], extra_body=extra)


@given(req=hostile_chat())
@fuzz(100)
def test_fuzz_chat_metadata_with_the_openai_sdk(
    fz: Fuzz, req: tuple[str, dict[str, Any], dict[str, str], int | None]
) -> None:
    """The same through the official SDK (``extra_body``): an ``APIStatusError`` with our error."""
    key, body, headers, expected = req
    # NaN and infinities are not JSON: the SDK refuses to encode them, so they never reach the proxy
    # (the raw-HTTP test above sends them as NaN/Infinity literals).
    assume(sdk_can_encode(body))
    oai = openai.OpenAI(base_url=fz.url, api_key=key, max_retries=0, timeout=60, default_headers=headers or None)
    try:
        with pytest.raises(openai.APIStatusError) as caught:
            sdk_call(oai, body)
    finally:
        oai.close()
    response = caught.value.response
    check_answer(response, "/v1/chat/completions (openai sdk)", test="chat-sdk")
    if expected is not None:
        assert response.status_code == expected, response.text


# -- 5. explicit edge cases: oversized and deep bodies ----------------------------------------


def test_fuzz_oversized_and_deep_bodies(fz: Fuzz) -> None:
    """Bodies just over each route's limit, JSON nested deeper than any parser's recursion, NULs."""
    padding = "x"
    for template, limit in POST_ROUTES:
        path = template.format(job_id=OPEN_A, team_id="team-a")
        valid = {
            "/api/jobs/create": {"job_type": JOB_TYPE},
            "/api/jobs/{job_id}/complete": {"status": "completed"},
            "/api/teams/{team_id}/credits": {"amount": 1, "idempotency_key": "fz-big"},
        }.get(template, {"job_type": JOB_TYPE, "messages": MESSAGES})
        overhead = len(dumps({**valid, "pad": ""}))
        big = dumps({**valid, "pad": padding * (limit - overhead + 1)})
        assert len(big) == limit + 1
        for key in (TEAM_A, MASTER):
            r = fz.send("POST", path, route=template, test="edge", headers=json_headers(key), content=big)
            assert r.status_code == 400, r.text
            assert r.json()["error"]["param"] == "body"
        for depth in (1_000, 100_000):
            for kind in ("list", "dict"):
                r = fz.send(
                    "POST", path, route=template, test="edge", headers=json_headers(TEAM_A), content=nested(depth, kind)
                )
                assert r.status_code == 400, r.text
    # On LiteLLM's own route a JSON array body is LiteLLM's 500 (its auth reads the body as an object),
    # and a body without messages is refused by LiteLLM after the hooks admitted it (a failed call):
    # the keys here are refused by the plugin first.
    for depth in (1_000, 100_000):
        for key, status in ((BROKE, 402), (NO_TEAM, 401)):
            r = fz.send(
                "POST",
                "/v1/chat/completions",
                route="/v1/chat/completions",
                test="edge",
                headers=json_headers(key),
                content=nested(depth, "dict"),
            )
            assert r.status_code in (400, status), r.text
    # Deep but small job metadata: refused on our routes (it would be stored, and reading it back fail).
    deep: Any = 1
    for _ in range(40):
        deep = {"a": deep}
    for template, body in (
        ("/api/jobs/create", {"job_type": JOB_TYPE, "metadata": deep}),
        ("/api/jobs/create-and-call", {"job_type": JOB_TYPE, "messages": MESSAGES, "metadata": deep}),
        ("/api/jobs/create", {"job_type": JOB_TYPE, "metadata": json.loads(nested(900, "dict"))}),
        ("/api/jobs/{job_id}/complete", {"status": "failed", "result": json.loads(nested(900, "dict"))}),
        ("/api/jobs/{job_id}/llm-call", {"messages": MESSAGES, "metadata": json.loads(nested(900, "dict"))}),
    ):
        path = template.format(job_id=OPEN_A)
        r = fz.send("POST", path, route=template, test="edge", headers=json_headers(TEAM_A), content=dumps(body))
        assert r.status_code == 400, r.text
    # metadata.job_metadata of 8 KiB + 1, a NUL deep inside, 40 levels deep: refused on the OpenAI path.
    for job_metadata in ({"blob": "x" * (8 * 1024)}, {"a": [{"b": "\x00"}]}, deep):
        body = {
            "model": "ChatAgent",
            "messages": MESSAGES,
            "metadata": {"job_id": OPEN_A, "job_metadata": job_metadata},
        }
        r = fz.send(
            "POST",
            "/v1/chat/completions",
            route="/v1/chat/completions",
            test="edge",
            headers=json_headers(TEAM_A),
            content=dumps(body),
        )
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "metadata.job_metadata"
    fz.assert_unchanged()


# -- 6. schemathesis over our OpenAPI schema ----------------------------------------------------


def our_schema(fz: Fuzz) -> Any:
    spec = fz.http.get(f"{fz.url}/openapi.json").json()
    paths: dict[str, Any] = {}
    for path, ops in spec["paths"].items():
        mine = {m: op for m, op in ops.items() if isinstance(op, dict) and "litellm-jobs" in (op.get("tags") or [])}
        if mine:
            paths[path] = mine
    spec["paths"] = paths
    return schemathesis.openapi.from_dict(spec)


def run_schemathesis(fz: Fuzz, schema: Any, key: str, *, examples: int, test: str, writes_refused: bool) -> None:
    strategy = st.one_of(
        schema.as_strategy(schemathesis.GenerationMode.POSITIVE),
        schema.as_strategy(schemathesis.GenerationMode.NEGATIVE),
    )

    @given(case=strategy)
    @fuzz(examples)
    def run(case: Any) -> None:
        case.headers = {
            k: v for k, v in (case.headers or {}).items() if k.lower() not in {"authorization", "x-litellm-api-key"}
        }
        response = case.call(base_url=fz.url, headers=auth(key), timeout=60)
        case.validate_response(response, checks=[not_a_server_error])
        template = f"{case.method.upper()} {case.operation.path}"
        TALLY.requests += 1
        TALLY.statuses[response.status_code] += 1
        TALLY.per_test[test] += 1
        TALLY.per_test_status[f"{test} {response.status_code}"] += 1
        where = f"{template} {case.formatted_path} -> {response.status_code} {response.content[:300]!r}"
        if response.status_code < 300:
            assert case.method.upper() == "GET" or not writes_refused, where
            TALLY.accepted[template] += 1
        else:
            assert 400 <= response.status_code < 500, where
            content_type = ";".join(response.headers.get("content-type", []))
            check_error_body(response.status_code, content_type, response.content, where)

    run()


def test_schemathesis_routes_with_a_team_without_credits(fz: Fuzz) -> None:
    """Schema-driven cases for every route of ours: with no credits, a write can only be refused."""
    run_schemathesis(fz, our_schema(fz), BROKE, examples=400, test="schemathesis-broke", writes_refused=True)
    fz.assert_unchanged()


def test_schemathesis_read_routes_with_a_funded_team(fz: Fuzz) -> None:
    """The read-only routes' schema-driven cases with a team that has jobs: no 5xx, errors OpenAI's."""
    schema = our_schema(fz).include(method="GET")
    run_schemathesis(fz, schema, TEAM_A, examples=250, test="schemathesis-team-a", writes_refused=True)
    fz.assert_unchanged()


#: Every test that sends fuzzed requests (the names they count under).
FUZZ_TESTS = {
    "keys",
    "other-teams",
    "raw-bodies",
    "body-fields",
    "path-ids",
    "queries",
    "chat-metadata",
    "chat-sdk",
    "edge",
    "schemathesis-broke",
    "schemathesis-team-a",
}


# -- the verdict ----------------------------------------------------------------------------------


def test_fuzz_totals_and_nothing_changed(fz: Fuzz) -> None:
    """At least 2,000 fuzzed requests, no 5xx, and the state is what it was before the first."""
    fz.assert_unchanged()
    missing = FUZZ_TESTS - TALLY.per_test.keys()
    if missing:
        pytest.skip(f"the count needs the whole module; not run: {sorted(missing)}")
    summary = {
        "requests": TALLY.requests,
        "seconds": round(time.monotonic() - TALLY.started, 1),
        "statuses": dict(sorted(TALLY.statuses.items())),
        "accepted_read_only": dict(TALLY.accepted),
        "per_test": dict(TALLY.per_test),
        "per_test_status": dict(sorted(TALLY.per_test_status.items())),
    }
    print(json.dumps(summary, indent=2))
    assert not [s for s in TALLY.statuses if s >= 500]
    assert TALLY.requests >= 2000, summary


@pytest.fixture(autouse=True)
def _nothing_changed_after_each_test(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if (
        "fz" in request.fixturenames
        and request.node.name.startswith("test_fuzz_")
        and "totals" not in request.node.name
    ):
        request.getfixturevalue("fz").assert_unchanged()
