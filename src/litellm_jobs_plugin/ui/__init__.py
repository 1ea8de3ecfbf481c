"""The jobs dashboard page, ``GET /jobs/ui`` (one static HTML file; its data comes from our JSON routes)."""

from __future__ import annotations

import functools
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

#: The page runs only its own inline script and styles, and talks only to this proxy.
_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@functools.cache
def page() -> str:
    return files(__package__).joinpath("jobs.html").read_text(encoding="utf-8")


def add_ui_routes(router: APIRouter) -> None:
    @router.get("/jobs/ui", include_in_schema=False)
    async def jobs_ui() -> HTMLResponse:
        return HTMLResponse(page(), headers={"cache-control": "no-store", "content-security-policy": _CSP})
