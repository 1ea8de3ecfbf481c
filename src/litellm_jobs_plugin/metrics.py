"""Prometheus series ``litellm_jobs_*``, added to the proxy's own ``/metrics``.

They live in ``prometheus_client``'s default registry, which LiteLLM's ``prometheus`` callback
serves; with ``PROMETHEUS_MULTIPROC_DIR`` set (``litellm --num_workers N``) prometheus_client keeps
every worker's values in that directory and LiteLLM's ``/metrics`` sums them. Labels are
``job_type`` and ``status``/``reason`` — never a job id (unbounded cardinality). A ``team`` label is
added only with ``team_labels`` (``JOBS_METRICS_TEAM_LABELS``): any key LiteLLM lets read
``/metrics`` reads every series on it, so per-team figures there are every team's to read. Each team
reads its own through the plugin's team-scoped routes.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import TYPE_CHECKING, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from .models import JobStatus
from .writer import WriterStats

if TYPE_CHECKING:
    from .reconcile import Report

#: Job cost buckets in USD: a cent's fraction to tens of dollars.
COST_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 50.0)
CALL_BUCKETS = (1, 2, 3, 5, 8, 13, 21, 34, 55, 100, 250)


OTHER_JOB_TYPES = "other"

_M = TypeVar("_M", bound=MetricWrapperBase)


class Metrics:
    """The plugin's series; one instance per process (``registry`` is for tests).

    ``job_type`` comes from clients, so its label is bounded: the priced job types
    (``JOBS_JOB_PRICES``) and the first ``max_job_types`` others this process sees keep their
    name; later ones are counted as ``other``. ``team_labels``: the job, credit and rejection
    series carry a ``team`` label (off: they count every team together).
    """

    def __init__(
        self,
        registry: CollectorRegistry = REGISTRY,
        *,
        max_job_types: int = 100,
        known_job_types: Iterable[str] = (),
        team_labels: bool = False,
    ) -> None:
        self._known = set(known_job_types)
        self._team_labels = team_labels
        team = ("team",) if team_labels else ()
        self._seen_types: set[str] = set()
        self._max_job_types = max_job_types

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(f"litellm_jobs_{name}", doc, labels, registry=registry)

        self.jobs_started = counter("started", "Jobs opened (by a route or their first call).", ("job_type", *team))
        self.jobs_closed = counter(
            "closed", "Jobs closed, by outcome (completed, failed, expired).", ("job_type", *team, "status")
        )
        self.credits_charged = counter("credits_charged", "Credits captured by completed jobs.", ("job_type", *team))
        self.rejections = counter(
            "rejections", "Calls and jobs refused for credits (402), by reason.", ("reason", *team)
        )
        self.uncharged_cost = counter(
            "uncharged_cost_usd",
            "Provider cost (USD) of failed and expired jobs, which are not charged: what the failure allowance bounds.",
            ("job_type", *team),
        )
        # Each worker reads the same figure from PostgreSQL: the latest read wins, never a sum.
        self.failure_allowance_used = (
            Gauge(
                "litellm_jobs_failure_allowance_used_usd",
                "Provider cost (USD) of the team's failed and expired jobs in the failure allowance's window.",
                ("team",),
                registry=registry,
                multiprocess_mode="livemostrecent",
            )
            if team_labels
            else None
        )
        self.job_cost = Histogram(
            "litellm_jobs_job_cost_usd",
            "Provider cost of closed jobs, as LiteLLM computed it (USD).",
            ("job_type",),
            buckets=COST_BUCKETS,
            registry=registry,
        )
        self.calls_per_job = Histogram(
            "litellm_jobs_calls_per_job",
            "Calls admitted to each closed job.",
            ("job_type",),
            buckets=CALL_BUCKETS,
            registry=registry,
        )
        self.buffer_depth = Gauge(
            "litellm_jobs_writer_buffer_depth",
            "Call records buffered and not yet written.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        # The journal is shared by every replica: each one reports what it last read (max, not sum).
        self.journal_backlog = Gauge(
            "litellm_jobs_journal_backlog",
            "Records in the Redis journal not yet written to PostgreSQL (all replicas).",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.journal_oldest_age = Gauge(
            "litellm_jobs_journal_oldest_age_seconds",
            "Age of the oldest record in the Redis journal not yet written to PostgreSQL.",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.records_written = counter("records_written", "Call events and ledger entries written to PostgreSQL.")
        self.records_dropped = counter("records_dropped", "Records given up on (must stay 0).")
        self.store_errors = counter("store_errors", "Failed write attempts (retried).")
        # Reconciliation (reconcile.drift_check_forever): the latest check's value wins across the
        # workers of a replica; every replica checks on its own timer, so max() over instances.
        self.reconcile_drift = Gauge(
            "litellm_jobs_reconcile_drift",
            "Rows whose cached totals differ from their source rows, by kind, at the last check (must stay 0).",
            ("kind",),
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        self.reconcile_last_check = Gauge(
            "litellm_jobs_reconcile_last_check_timestamp_seconds",
            "When the last drift check of every team ran (Unix time).",
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        self.reconcile_errors = counter("reconcile_check_errors", "Drift checks that failed (retried).")
        # Webhooks (webhooks/worker.py): only the delivering process moves them.
        self.webhook_delivered = counter(
            "webhook_delivered", "Webhook deliveries a receiver accepted (2xx).", ("event_type",)
        )
        self.webhook_failed_attempts = counter(
            "webhook_failed_attempts", "Webhook attempts that failed (error, timeout, not 2xx).", ("event_type",)
        )
        self.webhook_dead_lettered = counter(
            "webhook_dead_lettered", "Webhook deliveries given up on after JOBS_WEBHOOK_MAX_AGE_S.", ("event_type",)
        )
        self.webhook_backlog = Gauge(
            "litellm_jobs_webhook_backlog",
            "Webhook deliveries not yet delivered nor dead (all replicas).",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.webhook_dead_letters = Gauge(
            "litellm_jobs_webhook_dead_letters",
            "Dead-lettered webhook deliveries kept for a manual retry (all replicas).",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self._seen = WriterStats()
        #: Each series' labelled children, kept: ``labels()`` validates and locks on every call (a
        #: single-call job moves four series). Bounded as the series are (job types, teams, reasons).
        self._children: dict[tuple[MetricWrapperBase, tuple[str, ...]], MetricWrapperBase] = {}

    def _child(self, metric: _M, *labels: str) -> _M:
        child = self._children.get((metric, labels))
        if child is None:
            child = self._children[(metric, labels)] = metric.labels(*labels)
        return child  # type: ignore[return-value]

    def _type(self, job_type: str) -> str:
        if job_type in self._known or job_type in self._seen_types:
            return job_type
        if len(self._seen_types) < self._max_job_types:
            self._seen_types.add(job_type)
            return job_type
        return OTHER_JOB_TYPES

    def _team(self, team: str) -> tuple[str, ...]:
        return (team,) if self._team_labels else ()

    def job_started(self, job_type: str, team: str) -> None:
        self._child(self.jobs_started, self._type(job_type), *self._team(team)).inc()

    def job_closed(self, job_type: str, team: str, status: JobStatus, *, charged: Decimal, calls: int) -> None:
        label = self._type(job_type)
        self._child(self.jobs_closed, label, *self._team(team), status.value).inc()
        if charged:
            self._child(self.credits_charged, label, *self._team(team)).inc(float(charged))
        self._child(self.calls_per_job, label).observe(calls)

    def job_cost_known(self, job_type: str, cost_usd: Decimal) -> None:
        self._child(self.job_cost, self._type(job_type)).observe(float(cost_usd))

    def uncharged(self, job_type: str, team: str, cost_usd: Decimal) -> None:
        """A failed or expired job's provider cost, once known."""
        if cost_usd > 0:
            self._child(self.uncharged_cost, self._type(job_type), *self._team(team)).inc(float(cost_usd))

    def failure_use(self, team: str, spent_usd: Decimal) -> None:
        """A team's failure spend as last read (only with team labels: it is one team's figure)."""
        if self.failure_allowance_used is not None:
            self.failure_allowance_used.labels(team).set(float(spent_usd))

    def rejected(self, reason: str, team: str) -> None:
        self._child(self.rejections, reason, *self._team(team)).inc()

    def journal_progress(self, backlog: int, oldest_age_s: float) -> None:
        """Called by the writer's journal reader every few seconds."""
        self.journal_backlog.set(backlog)
        self.journal_oldest_age.set(oldest_age_s)

    def writer_progress(self, stats: WriterStats, depth: int) -> None:
        """Called by the writer after each batch: counters move by what changed since last time."""
        self.buffer_depth.set(depth)
        for counter, now, before in (
            (self.records_written, stats.written, self._seen.written),
            (self.records_dropped, stats.dropped, self._seen.dropped),
            (self.store_errors, stats.store_errors, self._seen.store_errors),
        ):
            if now > before:
                counter.inc(now - before)
        self._seen = WriterStats(written=stats.written, dropped=stats.dropped, store_errors=stats.store_errors)

    def drift_checked(self, report: Report) -> None:
        """Called after a drift check of every team: the drifting rows per kind, and when.

        A check of one team (``report.team_id`` set) says nothing of the others: ignored.
        """
        if report.team_id is not None:
            return
        for kind, count in report.counts.items():
            self.reconcile_drift.labels(kind.value).set(count)
        self.reconcile_last_check.set(report.checked_at.timestamp())

    def drift_check_failed(self) -> None:
        self.reconcile_errors.inc()


_process_metrics: Metrics | None = None


def process_metrics(
    *, max_job_types: int = 100, known_job_types: Iterable[str] = (), team_labels: bool = False
) -> Metrics:
    """This process's series in the default registry (created once: a name registers only once)."""
    global _process_metrics
    if _process_metrics is None:
        _process_metrics = Metrics(
            max_job_types=max_job_types, known_job_types=known_job_types, team_labels=team_labels
        )
    return _process_metrics
