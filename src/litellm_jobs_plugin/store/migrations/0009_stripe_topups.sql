-- Credit top-ups from Stripe: every verified webhook event of a handled type, once (its Stripe
-- event id), with what became of it; and the credits a Stripe price is worth.

CREATE TABLE stripe_events (
    event_id     text           PRIMARY KEY,
    type         text           NOT NULL,
    object_id    text,
    team_id      text,
    credits      numeric(20, 6),
    status       text           NOT NULL,
    detail       text,
    payload      jsonb          NOT NULL,
    received_at  timestamptz    NOT NULL DEFAULT now(),
    updated_at   timestamptz    NOT NULL DEFAULT now(),
    CONSTRAINT stripe_events_status_check
        CHECK (status IN ('received', 'granted', 'unknown_team', 'no_credits', 'invalid', 'unpaid'))
);

CREATE INDEX stripe_events_status_idx ON stripe_events (status, received_at);

CREATE TABLE stripe_prices (
    price_id   text           PRIMARY KEY,
    credits    numeric(20, 6) NOT NULL,
    updated_at timestamptz    NOT NULL DEFAULT now(),
    CONSTRAINT stripe_prices_credits_check CHECK (credits > 0)
);
