from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from litellm_jobs_plugin.journal import decode, decode_entry, encode
from litellm_jobs_plugin.models import CallStatus, JobStatus, LedgerEntry, LedgerKind, closure_entries, ledger_key
from tests.support.events import context, event

ids = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)


@given(
    call_id=ids,
    job_id=st.none() | ids,
    cost=st.decimals(min_value=0, max_value=10**6, places=18, allow_nan=False),
    status=st.sampled_from(CallStatus),
    # job_metadata integers fit in 64 bits (metadata.check_job_metadata refuses the others)
    metadata=st.none() | st.dictionaries(ids, st.integers(-(2**63), 2**63 - 1) | ids | st.none(), max_size=3),
)
def test_a_call_event_survives_the_journal_digit_for_digit(
    call_id: str, job_id: str | None, cost: Decimal, status: CallStatus, metadata: dict[str, object] | None
) -> None:
    original = event(call_id, status=status, ctx=context(job_id=job_id, job_metadata=metadata, purpose="p"))
    original = type(original)(**{**{f: getattr(original, f) for f in original.__slots__}, "cost_usd": cost})
    assert decode({"v": encode(original)}) == original


def test_a_ledger_entry_survives_the_journal() -> None:
    entry = LedgerEntry(
        team_id="t:1",
        kind=LedgerKind.CAPTURE,
        amount=Decimal("2.500000"),
        idempotency_key=ledger_key(LedgerKind.CAPTURE, "t:1", "job:x", "17"),
        job_id="job:x",
        job_type="doc",
        note=None,
    )
    assert decode({"v": encode(entry)}) == entry


def test_the_hold_record_of_open_job_lua_is_the_hold_entry_the_service_would_write() -> None:
    fields = {"k": "hold", "t": "team:a", "j": "job-1", "y": "doc", "m": "2500000", "s": "1", "i": "1733140000000"}
    assert decode(fields) == LedgerEntry(
        team_id="team:a",
        kind=LedgerKind.HOLD,
        amount=Decimal("2.500000"),
        idempotency_key=ledger_key(LedgerKind.HOLD, "team:a", "job-1", "1733140000000"),
        job_id="job-1",
        job_type="doc",
        single_call=True,
    )


@given(status=st.sampled_from([JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.EXPIRED]), single=st.booleans())
def test_the_close_record_of_close_job_lua_is_the_entries_the_service_would_write(
    status: JobStatus, single: bool
) -> None:
    fields = {"k": "close", "t": "team:a", "j": "job-1", "y": "doc", "m": "2500000", "i": "17331", "c": status.value}
    fields["s"] = "1" if single else "0"
    expected = closure_entries(
        "team:a", "job-1", "doc", Decimal("2.5"), "17331", status, single_call=single, closes_row=True
    )
    assert list(decode_entry(fields)) == expected
    kind = LedgerKind.CAPTURE if status is JobStatus.COMPLETED else LedgerKind.RELEASE
    assert [(e.kind, e.amount, e.closes) for e in expected] == [
        (LedgerKind.HOLD, Decimal("2.5"), None),
        (kind, Decimal("2.5"), status),
    ]
    assert decode_entry({"v": encode(event("one"))}) == (event("one"),)
