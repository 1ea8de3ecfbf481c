"""The pure credit decisions: prices and caps from the operator only, refusals, the allowance."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from prometheus_client import CollectorRegistry

from litellm_jobs_plugin.credits import decide
from litellm_jobs_plugin.errors import FailureAllowanceExhausted, JobTypeNotAllowed, StoreUnavailable, UnknownJobType
from litellm_jobs_plugin.metrics import Metrics
from litellm_jobs_plugin.models import JobCaps, JobStatus
from litellm_jobs_plugin.settings import JobTypeCaps, Settings, UnpricedJobTypes

PRICED = Settings(job_prices={"document_analysis": Decimal(5), "chat": Decimal("0.5")})
NO_POLICY = decide.TeamPolicy()
NO_USE = decide.FailureUse()


def terms(settings: Settings, job_type: str, policy: decide.TeamPolicy = NO_POLICY, **kw: object) -> decide.Terms:
    use = kw.pop("use", NO_USE)
    assert isinstance(use, decide.FailureUse)
    return decide.terms(settings, policy, use, team_id="t", job_type=job_type, **kw)  # type: ignore[arg-type]


def test_prices_come_from_the_operator_and_unpriced_types_are_refused_once_prices_are_set() -> None:
    assert terms(PRICED, "document_analysis").price == 5
    for spelled in ("Document_Analysis", "zzz", "CHAT"):
        refusal = terms(PRICED, spelled).refusal
        assert isinstance(refusal, UnknownJobType)
        assert "case-sensitive" in refusal.message
    # The default type of untagged calls is always priced (the default price).
    assert terms(PRICED, "default").refusal is None
    assert terms(PRICED, "default").price == 1


def test_the_unpriced_setting() -> None:
    unpriced = Settings()  # no price list: every type pays the default
    assert terms(unpriced, "anything").refusal is None
    charge = Settings(job_prices={"a": Decimal(2)}, unpriced_job_types=UnpricedJobTypes.CHARGE_DEFAULT)
    assert terms(charge, "b").price == 1
    reject = Settings(unpriced_job_types=UnpricedJobTypes.REJECT)
    assert isinstance(terms(reject, "b").refusal, UnknownJobType)


def test_a_team_policy_overrides_prices_and_limits_job_types() -> None:
    policy = decide.TeamPolicy(
        job_prices={"chat": Decimal(2), "special": Decimal(7)}, allowed_job_types=frozenset({"chat", "special"})
    )
    assert terms(PRICED, "chat", policy).price == 2
    assert terms(PRICED, "special", policy).price == 7
    assert isinstance(terms(PRICED, "document_analysis", policy).refusal, JobTypeNotAllowed)


def test_type_caps_apply_and_the_tighter_cap_wins() -> None:
    settings = Settings(job_type_caps={"chat": JobTypeCaps(max_calls=5, max_cost_usd=Decimal("0.5"))})
    assert terms(settings, "chat").caps == JobCaps(max_calls=5, max_cost_usd=Decimal("0.5"))
    tighter = terms(settings, "chat", requested_caps=JobCaps(max_calls=2, max_cost_usd=Decimal(9))).caps
    assert tighter == JobCaps(max_calls=2, max_cost_usd=Decimal("0.5"))
    assert terms(settings, "other", requested_caps=JobCaps(max_calls=3)).caps == JobCaps(max_calls=3)


def test_the_failure_allowance() -> None:
    settings = Settings(failure_allowance_usd=Decimal("0.10"), failure_window_s=3600)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    under = decide.FailureUse(Decimal("0.09"), at)
    over = decide.FailureUse(Decimal("0.10"), at)
    assert terms(settings, "chat", use=under).refusal is None
    refusal = terms(settings, "chat", use=over).refusal
    assert isinstance(refusal, FailureAllowanceExhausted)
    assert "0.1 USD" in refusal.message
    assert "2026-01-01T01:00:00+00:00" in refusal.message  # when the oldest failure leaves the window
    # The admin's allowance for the team wins; no allowance at all is no limit.
    assert terms(settings, "chat", decide.TeamPolicy(failure_allowance_usd=Decimal(1)), use=over).refusal is None
    assert terms(Settings(failure_allowance_usd=None), "chat", use=over).refusal is None


def test_refusals_in_order_and_the_store_last() -> None:
    assert isinstance(terms(Settings(), "chat", store_up=False).refusal, StoreUnavailable)
    assert isinstance(terms(PRICED, "zzz", store_up=False).refusal, UnknownJobType)


def test_join_open_close_and_settle() -> None:
    job = decide.JobState("in_progress", "a", calls=2, max_calls=2, max_cost=None, cost=Decimal(0))
    assert decide.join(job, requested_type=None, count_call=True, create_only=False) is decide.Verdict.OVER_CALLS
    assert decide.join(job, requested_type=None, count_call=False, create_only=False) is decide.Verdict.OK
    assert decide.join(job, requested_type="b", count_call=False, create_only=True) is decide.Verdict.TYPE_MISMATCH
    closed = decide.JobState("failed", "a", 0, None, None, Decimal(0))
    assert decide.join(closed, requested_type=None, count_call=True, create_only=False) is decide.Verdict.CLOSED
    assert decide.open_new(Decimal(1), Decimal(2), refused=False) is decide.Verdict.INSUFFICIENT
    assert decide.open_new(Decimal(5), Decimal(2), refused=True) is decide.Verdict.REFUSED
    assert decide.close("failed", JobStatus.FAILED, last_activity=0, idle_cutoff=None) is decide.CloseVerdict.SAME
    assert (
        decide.close("failed", JobStatus.COMPLETED, last_activity=0, idle_cutoff=None) is decide.CloseVerdict.CONFLICT
    )
    assert decide.close("pending", JobStatus.EXPIRED, last_activity=10, idle_cutoff=5) is decide.CloseVerdict.ACTIVE
    assert decide.settlement(Decimal(3), JobStatus.COMPLETED) == (0, -3)
    assert decide.settlement(Decimal(3), JobStatus.EXPIRED) == (3, -3)


def test_failure_spend_in_the_metrics() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, team_labels=True)
    metrics.uncharged("chat", "team-a", Decimal("0.25"))
    metrics.failure_use("team-a", Decimal("0.25"))
    assert (
        registry.get_sample_value("litellm_jobs_uncharged_cost_usd_total", {"job_type": "chat", "team": "team-a"})
        == 0.25
    )
    assert registry.get_sample_value("litellm_jobs_failure_allowance_used_usd", {"team": "team-a"}) == 0.25
    quiet = CollectorRegistry()
    Metrics(quiet).failure_use("team-a", Decimal(1))  # no team labels: no per-team gauge at all
    assert quiet.get_sample_value("litellm_jobs_failure_allowance_used_usd", {"team": "team-a"}) is None


def test_a_cost_based_price_charges_from_the_cost_rounded_up_within_minimum_and_maximum() -> None:
    from litellm_jobs_plugin.settings import CostPrice

    rule = CostPrice(credits_per_usd=Decimal(1000), minimum=Decimal("0.5"), maximum=Decimal(10))
    assert decide.cost_charge(rule, Decimal("0.0000001")) == Decimal("0.5")  # the minimum
    assert decide.cost_charge(rule, Decimal("0.0012345678")) == Decimal("1.234568")  # rounded up
    assert decide.cost_charge(rule, Decimal(1)) == 10  # never more than held
    settings = Settings(job_prices={"research": rule})
    opened = terms(settings, "research", requested_caps=JobCaps(max_calls=4))
    assert opened.price == 10  # the maximum is held
    assert opened.caps == JobCaps(max_calls=4, max_cost_usd=Decimal("0.01"))  # never run past what is held
    # A team's fixed price replaces the cost-based one.
    assert decide.cost_rule(settings, decide.TeamPolicy(job_prices={"research": Decimal(3)}), "research") is None
    assert decide.settlement(Decimal(10), JobStatus.COMPLETED, Decimal("1.5")) == (Decimal("8.5"), -10)


def test_a_partial_capture_is_a_capture_and_a_release_and_the_journal_says_so() -> None:
    from litellm_jobs_plugin.journal import decode_entry
    from litellm_jobs_plugin.models import LedgerKind, closure_entries

    entries = closure_entries(
        "t",
        "j",
        "research",
        Decimal(10),
        "7",
        JobStatus.COMPLETED,
        single_call=False,
        closes_row=True,
        charged=Decimal("1.5"),
    )
    assert [(e.kind, e.amount, e.closes) for e in entries] == [
        (LedgerKind.HOLD, 10, None),
        (LedgerKind.CAPTURE, Decimal("1.5"), None),
        (LedgerKind.RELEASE, Decimal("8.5"), JobStatus.COMPLETED),
    ]
    record = {
        "k": "close",
        "t": "t",
        "j": "j",
        "y": "research",
        "m": "10000000",
        "i": "7",
        "c": "completed",
        "s": "0",
        "g": "1500000",
    }
    assert list(decode_entry(record)) == entries
    assert len(decode_entry({**record, "g": ""})) == 2  # a fixed price: the hold captured whole
