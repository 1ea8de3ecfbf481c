"""The plugin's settings: every environment variable it reads, in one class.

Nothing else in the package reads the environment (a test enforces it); the plugin builds one
:class:`Settings` at start-up and passes it down.
"""

from __future__ import annotations

import enum
import re
from decimal import Decimal
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
#: Query parameters of a Prisma database URL that libpq (psycopg) refuses. LiteLLM's DATABASE_URL
#: often carries them (LiteLLM itself adds connection_limit and pool_timeout).
_PRISMA_ONLY_PARAMS = frozenset(
    {"connection_limit", "pool_timeout", "schema", "pgbouncer", "statement_cache_size", "socket_timeout"}
)


class UntaggedPolicy(enum.StrEnum):
    """What happens to a call that names no ``job_id``."""

    SINGLE_CALL_JOB = "single_call_job"
    ALLOW = "allow"
    REJECT = "reject"


class UnpricedJobTypes(enum.StrEnum):
    """What a new job of a job_type the operator has not priced gets."""

    AUTO = "auto"  # reject once JOBS_JOB_PRICES names any type, else charge the default price
    CHARGE_DEFAULT = "charge_default"  # JOBS_DEFAULT_PRICE
    REJECT = "reject"  # 400 unknown_job_type


class JobTypeCaps(BaseModel):
    """Caps every job of one type gets (a tighter cap given at creation wins)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_calls: int | None = Field(default=None, ge=1)
    max_cost_usd: Decimal | None = Field(default=None, gt=0, allow_inf_nan=False)


class CostPrice(BaseModel):
    """A job type charged from its provider cost: ``credits_per_usd`` × the job's cost, rounded up to
    a millionth of a credit, at least ``minimum``. ``maximum`` is held when the job opens and is the
    most it is charged: the job takes no calls once its cost reaches ``maximum / credits_per_usd``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    credits_per_usd: Decimal = Field(gt=0, allow_inf_nan=False, max_digits=30)
    minimum: Decimal = Field(default=Decimal(0), ge=0, allow_inf_nan=False, max_digits=30)
    maximum: Decimal = Field(gt=0, allow_inf_nan=False, max_digits=20, decimal_places=6)

    @model_validator(mode="after")
    def _minimum_within_maximum(self) -> CostPrice:
        if self.minimum > self.maximum:
            raise ValueError("minimum must not exceed maximum")
        return self

    @property
    def max_cost_usd(self) -> Decimal:
        """The provider cost at which the job's charge reaches its maximum."""
        return self.maximum / self.credits_per_usd


class FailMode(enum.StrEnum):
    """What a request that would open a new job (a new credit hold) gets while PostgreSQL is down."""

    CLOSED = "closed"  # 503 jobs_store_unavailable; calls of open jobs go on
    OPEN = "open"  # the hold is taken anyway (Redis or memory) and written when PostgreSQL is back


class Settings(BaseSettings):
    """Settings of the jobs plugin, read from ``JOBS_*`` environment variables.

    Example::

        JOBS_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/litellm \\
        JOBS_JOB_PRICES='{"document_analysis": 3}' litellm --config litellm_config.yaml
    """

    model_config = SettingsConfigDict(env_prefix="JOBS_", extra="ignore", populate_by_name=True)

    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("JOBS_DATABASE_URL", "DATABASE_URL"),
        description="PostgreSQL URL; unset: an embedded PostgreSQL under data_dir.",
    )
    data_dir: Path = Field(default=Path("./.litellm-jobs"), description="Home of the embedded PostgreSQL.")
    db_schema: str = Field(default="litellm_jobs", description="PostgreSQL schema holding our tables.")
    redis_url: str | None = Field(
        default=None,
        description="Redis for shared hot state (redis://, rediss://; a Redis Cluster: redis+cluster://host:port,"
        "host:port); unset: one replica.",
    )
    idle_timeout_s: float = Field(default=900.0, gt=0)
    untagged: UntaggedPolicy = UntaggedPolicy.SINGLE_CALL_JOB
    default_job_type: str = Field(default="default", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    default_price: Decimal = Field(default=Decimal(1), ge=0)
    job_prices: dict[str, Decimal | CostPrice] = Field(
        default_factory=dict,
        description="Credits per completed job, by job type (JSON). A number is a fixed price; an object "
        '{"credits_per_usd": 1000, "minimum": 1, "maximum": 50} charges from the job\'s provider cost '
        '(e.g. {"chat": 0.5, "research": {"credits_per_usd": 1000, "minimum": 1, "maximum": 50}}).',
    )
    unpriced_job_types: UnpricedJobTypes = Field(
        default=UnpricedJobTypes.AUTO,
        description="A new job of a type JOBS_JOB_PRICES does not name: auto (reject once any price is set, else "
        "charge the default price), charge_default, or reject (400 unknown_job_type).",
    )
    job_type_caps: dict[str, JobTypeCaps] = Field(
        default_factory=dict,
        description='Caps for every job of a type (JSON, e.g. {"chat": {"max_calls": 20, "max_cost_usd": "0.50"}}).',
    )
    failure_allowance_usd: Decimal | None = Field(
        default=Decimal(5),
        ge=0,
        allow_inf_nan=False,
        description="Per team: provider cost (USD) of failed and expired jobs, which are not charged, allowed per "
        "window; past it, new jobs get 402 failure_allowance_exhausted. Empty: no limit.",
    )
    failure_window_s: float = Field(default=86_400.0, gt=0, description="The failure allowance's rolling window.")
    policy_refresh_s: float = Field(
        default=5.0,
        gt=0,
        description="How often each process re-reads team policies and failure spend from PostgreSQL.",
    )

    # The writer: a bounded buffer drained in batches by one background task per process.
    buffer_max: int = Field(default=50_000, ge=1)
    batch_size: int = Field(default=500, ge=1)
    batch_linger_ms: float = Field(
        default=0.0, ge=0, description="After a batch's first record, wait this long for more before writing."
    )
    enqueue_timeout_s: float = Field(default=5.0, ge=0)
    shutdown_timeout_s: float = Field(default=30.0, gt=0)
    pool_min_size: int = Field(default=1, ge=0)
    pool_max_size: int = Field(default=5, ge=1)
    startup_timeout_s: float = Field(default=60.0, gt=0)
    reaper_interval_s: float = Field(default=30.0, gt=0, description="How often idle jobs are looked for.")
    complete_wait_s: float = Field(default=5.0, ge=0, description="complete waits this long for in-flight calls.")
    local_credits: bool = Field(
        default=True,
        description="Without Redis: decide credits in memory while this process is alone on the database.",
    )
    default_model: str | None = Field(
        default=None, description="Model group of the seed routes' calls that name no model (or model_group)."
    )
    tag_job_type: bool = Field(
        default=True, description="Mirror job_type into LiteLLM's request tags (job_type:<type>)."
    )
    metrics_max_job_types: int = Field(
        default=100, ge=0, description="job_type label values per process; later types are counted as 'other'."
    )
    metrics_team_labels: bool = Field(
        default=False,
        description="Label the litellm_jobs_* series by team (any key that may read /metrics then reads every team's).",
    )
    redis_prefix: str = Field(default="ljp", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    redis_shards: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="Shards of the Redis journal and open-jobs index (each team in one, by a hash of its id);"
        " unset: 1 on a single Redis, 16 on a cluster. Change it only with every replica stopped.",
    )
    redis_max_connections: int = Field(
        default=200,
        ge=1,
        description="Redis connections per process (on a cluster, per node: eight times this, at least 512); a call "
        "waits up to 10 s for a free one under a burst, then gets 503.",
    )
    closed_job_ttl_s: int = Field(default=7 * 24 * 3600, gt=0, description="Redis keeps closed jobs this long.")
    fail_mode: FailMode = Field(default=FailMode.CLOSED, description="New holds while PostgreSQL is down.")
    store_check_interval_s: float = Field(
        default=1.0, gt=0, description="How often PostgreSQL's reachability is checked (for JOBS_FAIL_MODE)."
    )
    journal_claim_idle_s: float = Field(
        default=30.0, gt=0, description="A journal entry unacknowledged this long is taken over by another replica."
    )
    durable_ack_timeout_s: float = Field(
        default=2.0,
        ge=0,
        description="With Redis: how long a non-streamed answer that is not a chat completion (recorded by its "
        "success event, not from the answer) waits at most for its record to be in the journal.",
    )
    reconcile_interval_s: float = Field(
        default=300.0,
        ge=0,
        description="How often job totals and balances are checked against their source rows (0: off).",
    )

    # Usage export and Stripe top-ups (docs/usage-export.md, docs/stripe.md).
    export_interval_s: float = Field(
        default=10.0, ge=0, description="How often closed jobs are exported to the usage sinks (0: never)."
    )
    export_delay_s: float = Field(
        default=30.0,
        ge=0,
        description="A closed job is exported once closed this long (calls still running at its close are then "
        "recorded).",
    )
    export_batch_size: int = Field(default=100, ge=1, le=1000, description="Closed jobs read per export page.")
    export_retention_s: float = Field(
        default=86_400.0,
        gt=0,
        description="A closure stays in the usage outbox this long once every enabled sink has taken it; a sink "
        "disabled for longer than this holds nothing back (re-enabled, it resumes where the outbox then starts).",
    )
    export_timeout_s: float = Field(default=10.0, gt=0, description="Timeout of one request to a usage sink.")
    stripe_webhook_secret: SecretStr | None = Field(
        default=None,
        description="The signing secret (whsec_...) of the Stripe webhook endpoint; unset: the webhook answers 503.",
    )
    stripe_webhook_tolerance_s: int = Field(
        default=300, ge=1, description="A Stripe webhook signed longer ago than this is refused (400)."
    )

    # Webhooks (docs/webhooks.md): one delivery worker at a time across replicas sends the outbox.
    webhooks_enabled: bool = Field(
        default=True, description="Run the webhook delivery worker in this process (one delivers, others stand by)."
    )
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=300, description="Timeout of one webhook request.")
    webhook_concurrency: int = Field(default=8, ge=1, le=256, description="Webhook requests in flight at once.")
    webhook_max_age_s: float = Field(
        default=86_400.0,
        gt=0,
        description="A delivery still failing this long after its event (or its manual retry) is a dead letter.",
    )
    webhook_backoff_base_s: float = Field(
        default=1.0, gt=0, description="Delay after a webhook's first failed attempt; doubled after each next one."
    )
    webhook_backoff_max_s: float = Field(default=600.0, gt=0, description="Longest delay between two attempts.")
    webhook_poll_s: float = Field(
        default=30.0,
        gt=0,
        description="The worker looks for due deliveries at least this often (it is woken at once by each new "
        "event, and when a retry falls due).",
    )
    webhook_standby_s: float = Field(
        default=5.0, gt=0, description="How often a standing-by process tries to become the delivering one."
    )
    webhook_retention_s: float = Field(
        default=7 * 86_400.0,
        gt=0,
        description="Delivered webhooks are deleted after this long (dead letters are kept).",
    )
    webhook_job_settle_s: float = Field(
        default=1.0,
        ge=0,
        description="A job event is first sent this long after the job closed, so that calls finished before the "
        "close (written off the request path) are in its totals.",
    )
    webhook_rotation_overlap_s: float = Field(
        default=86_400.0,
        ge=0,
        description="After a secret rotation, how long webhooks are also signed with the old secret.",
    )

    @field_validator("database_url")
    @classmethod
    def _libpq_url(cls, value: str | None) -> str | None:
        """The URL without Prisma-only parameters (a key=value DSN is left as it is)."""
        if value is None or "://" not in value:
            return value
        parts = urlsplit(value)
        kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in _PRISMA_ONLY_PARAMS]
        return urlunsplit(parts._replace(query=urlencode(kept)))

    @field_validator("db_schema")
    @classmethod
    def _check_schema(cls, value: str) -> str:
        # The schema name is the only identifier we put into SQL text (CREATE SCHEMA, search_path),
        # so it is held to a strict shape here rather than quoted at each use.
        if not _SCHEMA_NAME.fullmatch(value):
            raise ValueError("JOBS_DB_SCHEMA must match [a-z_][a-z0-9_]{0,62}")
        return value

    @field_validator("failure_allowance_usd", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("job_prices")
    @classmethod
    def _prices_finite(cls, value: dict[str, Decimal | CostPrice]) -> dict[str, Decimal | CostPrice]:
        for job_type, price in value.items():
            if isinstance(price, Decimal) and (not price.is_finite() or price < 0):
                raise ValueError(f"the price of {job_type!r} must be a finite number >= 0")
        return value

    def price_of(self, job_type: str) -> Decimal:
        """Credits held when a job of ``job_type`` opens (the operator's list, else the default):
        its fixed price, or a cost-based price's maximum."""
        price = self.job_prices.get(job_type, self.default_price)
        return price.maximum if isinstance(price, CostPrice) else price

    def cost_price_of(self, job_type: str) -> CostPrice | None:
        price = self.job_prices.get(job_type)
        return price if isinstance(price, CostPrice) else None
