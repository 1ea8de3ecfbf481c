"""The ``team`` label of the litellm_jobs_* series is opt-in (JOBS_METRICS_TEAM_LABELS).

Any key LiteLLM lets read ``/metrics`` reads every series on it: per-team figures there would be
every team's to read.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from prometheus_client import CollectorRegistry

from litellm_jobs_plugin.metrics import Metrics
from litellm_jobs_plugin.models import JobStatus
from litellm_jobs_plugin.settings import Settings


def drive(metrics: Metrics) -> None:
    for team in ("team-a", "team-b"):
        metrics.job_started("doc", team)
        metrics.job_closed("doc", team, JobStatus.COMPLETED, charged=Decimal(3), calls=2)
        metrics.rejected("insufficient_credits", team)


def labels_of(registry: CollectorRegistry) -> set[str]:
    return {name for family in registry.collect() for sample in family.samples for name in sample.labels}


def test_series_carry_no_team_label_by_default() -> None:
    assert Settings().metrics_team_labels is False
    registry = CollectorRegistry()
    drive(Metrics(registry))
    value = registry.get_sample_value
    assert "team" not in labels_of(registry)
    # Both teams are counted together: fleet totals by job type.
    assert value("litellm_jobs_started_total", {"job_type": "doc"}) == 2
    assert value("litellm_jobs_closed_total", {"job_type": "doc", "status": "completed"}) == 2
    assert value("litellm_jobs_credits_charged_total", {"job_type": "doc"}) == 6
    assert value("litellm_jobs_rejections_total", {"reason": "insufficient_credits"}) == 2


def test_team_labels_are_an_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBS_METRICS_TEAM_LABELS", "true")
    assert Settings().metrics_team_labels is True
    registry = CollectorRegistry()
    drive(Metrics(registry, team_labels=True))
    value = registry.get_sample_value
    assert "team" in labels_of(registry)
    assert value("litellm_jobs_started_total", {"job_type": "doc", "team": "team-a"}) == 1
    assert value("litellm_jobs_closed_total", {"job_type": "doc", "team": "team-b", "status": "completed"}) == 1
    assert value("litellm_jobs_credits_charged_total", {"job_type": "doc", "team": "team-a"}) == 3
    assert value("litellm_jobs_rejections_total", {"reason": "insufficient_credits", "team": "team-b"}) == 1
