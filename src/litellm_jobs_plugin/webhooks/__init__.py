"""Signed webhooks, delivered durably (docs/webhooks.md).

Events are written by triggers of migration 0007 in the transaction of the state change they
report (an outbox); :mod:`.worker` sends them, signed per the Standard Webhooks specification
(:mod:`.events`); :mod:`.registry` keeps the endpoints; :mod:`.routes` and ``litellm-jobs webhooks``
manage them.
"""

from __future__ import annotations

from .events import EVENT_TYPES

__all__ = ["EVENT_TYPES"]
