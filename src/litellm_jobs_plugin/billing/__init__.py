"""Billing integrations: usage export to metering and billing systems, and credit top-ups from Stripe.

See docs/usage-export.md and docs/stripe.md.
"""
