"""Money is written one way (docs/money.md): exact plain decimals for the API, 4 significant digits for people."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from litellm_jobs_plugin.models import Balance
from litellm_jobs_plugin.money import display, dumps, exact, number


@pytest.mark.parametrize(
    ("value", "text", "shown"),
    [
        (Decimal("100.000000"), "100", "100"),
        (Decimal("1E+2"), "100", "100"),
        (Decimal("99.500000"), "99.5", "99.5"),
        (Decimal("0.000013500000000000000000000000"), "0.0000135", "0.0000135"),
        (Decimal("3.24E-5"), "0.0000324", "0.0000324"),
        (Decimal("0.000032399999999999999"), "0.000032399999999999999", "0.0000324"),
        (5.399999999999999e-06, "0.000005399999999999999", "0.0000054"),
        (Decimal("1234.5678"), "1234.5678", "1235"),
        (Decimal("-4.000000"), "-4", "-4"),
        (Decimal("0E-6"), "0", "0"),
        (Decimal("1E-12"), "0.000000000001", "0.000000000001"),
    ],
)
def test_one_text_per_amount(value: Decimal | float, text: str, shown: str) -> None:
    assert exact(value) == text
    assert display(value) == shown
    assert "e" not in text.lower()
    assert "e" not in shown.lower()


def test_numbers_are_plain_json_numbers_and_exact() -> None:
    body = dumps({"n": number(Decimal("3.24E-5")), "s": Decimal("1.000000"), "l": [number(100)], "x": '"'})
    assert body == '{"n": 0.0000324, "s": "1", "l": [100], "x": "\\""}'
    assert json.loads(body, parse_float=Decimal)["n"] == Decimal("0.0000324")


def test_non_finite_amounts_are_refused() -> None:
    with pytest.raises(ValueError, match="not a finite amount"):
        exact(Decimal("NaN"))


def test_records_dump_money_as_exact_strings() -> None:
    b = Balance(
        team_id="t",
        credits_allocated=Decimal("100.000000"),
        credits_remaining=Decimal("99.000000"),
        credits_held=Decimal("1.000000"),
        credits_charged=Decimal("0E-6"),
    )
    assert b.model_dump(mode="json") == {
        "team_id": "t",
        "credits_allocated": "100",
        "credits_remaining": "99",
        "credits_held": "1",
        "credits_charged": "0",
    }
    assert b.model_dump()["credits_allocated"] == Decimal("100.000000")  # Python keeps the Decimal
