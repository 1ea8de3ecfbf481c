"""The named queries of ``queries.sql``, parsed once."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import LiteralString, cast

_HEADER = re.compile(r"^-- name: ([a-z_]+)\s*$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, LiteralString]:
    """``{name: sql}`` of a file made of ``-- name: x`` blocks."""
    parts = _HEADER.split(text)
    queries: dict[str, LiteralString] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        # The text comes from a file shipped in the package, never from input.
        queries[name] = cast(LiteralString, body.strip())
    return queries


@cache
def queries() -> dict[str, LiteralString]:
    return parse_queries(resources.files(__package__).joinpath("queries.sql").read_text("utf-8"))


def query(name: str) -> LiteralString:
    return queries()[name]
