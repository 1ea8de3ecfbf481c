"""Money, written one way everywhere (docs/money.md).

* :func:`exact` — what the API and ``--json`` give: every digit kept, plain notation (never
  ``3.24e-05``), trailing zeros stripped (``100``, ``0.0000324``, ``99.5``).
* :class:`Number` — an amount that seed-compatible fields give as a JSON *number* (the seed API's
  balances and a closed job's ``costs``); its text is :func:`exact`'s, written by :func:`dumps`.
* :func:`display` — for people (CLI tables, the dashboard): 4 significant digits, the integer part
  never rounded away, plain notation, trailing zeros stripped (``0.0000324``, ``1235``, ``99.5``).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import PlainSerializer

#: Significant digits shown to people.
DISPLAY_DIGITS = 4


def _decimal(value: Decimal | float | int | str) -> Decimal:
    if isinstance(value, Decimal):
        return value
    if isinstance(value, float):
        return Decimal(repr(value))  # the float's shortest text, not its binary expansion
    return Decimal(value)


def exact(value: Decimal | float | int | str) -> str:
    """``Decimal("0.000013500000000000000000000000")`` → ``"0.0000135"``; ``100.000000`` → ``"100"``."""
    d = _decimal(value)
    if not d.is_finite():
        raise ValueError(f"not a finite amount: {value!r}")
    if d == 0:
        return "0"
    text = f"{d:f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def display(value: Decimal | float | int | str | None) -> str:
    """An amount for people: ``0.000032399999999`` → ``"0.0000324"``, ``1234.5678`` → ``"1235"``."""
    if value is None:
        return ""
    try:
        d = _decimal(value)
    except (InvalidOperation, ValueError):
        return str(value)
    if not d.is_finite():
        return str(value)
    if d == 0:
        return "0"
    places = max(0, DISPLAY_DIGITS - 1 - d.adjusted())
    return exact(d.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))


class Number(Decimal):
    """An amount written as a JSON number (by :func:`dumps`), in :func:`exact`'s plain notation."""


def number(value: Decimal | float | int | str) -> Number:
    return Number(exact(value))


def dumps(obj: Any, *, fallback: Callable[[Any], Any] | None = None, **kwargs: Any) -> str:
    """``json.dumps`` where a :class:`Number` is a JSON number in plain notation, any other Decimal
    an exact string; never an exponent, never NaN."""
    nonce = secrets.token_hex(8)
    numbers: list[str] = []

    def default(o: Any) -> Any:
        if isinstance(o, Number):
            numbers.append(exact(o))
            return f"{nonce}:{len(numbers) - 1}"
        if isinstance(o, Decimal):
            return exact(o)
        if fallback is not None:
            return fallback(o)
        raise TypeError(f"{type(o).__name__} is not JSON serializable")

    text = json.dumps(obj, default=default, allow_nan=False, **kwargs)
    if not numbers:
        return text
    return re.sub(f'"{nonce}:(\\d+)"', lambda m: numbers[int(m.group(1))], text)


#: A Decimal model field that pydantic's JSON dump writes as :func:`exact`'s string.
Amount = Annotated[Decimal, PlainSerializer(exact, return_type=str, when_used="json")]
