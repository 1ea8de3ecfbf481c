"""Who LiteLLM lets read ``/metrics`` with its own key database (the documented production set-up).

LiteLLM's series and, with JOBS_METRICS_TEAM_LABELS, ours carry every team's figures; a team key
must not read them. LiteLLM authenticates ``/metrics`` by default and, for a key of its database,
checks the route: ``/metrics`` is an admin route, refused to a key of a non-admin user. (A
custom_auth skips that check: it must refuse ``/metrics`` itself, as demo_auth.py does.)
"""

from __future__ import annotations

import litellm
import pytest
from fastapi import Request
from litellm.proxy._types import LitellmUserRoles, UserAPIKeyAuth
from litellm.proxy.auth.route_checks import RouteChecks


def request_to(path: str) -> Request:
    return Request({"type": "http", "method": "GET", "path": path, "headers": [], "query_string": b""})


def test_metrics_require_a_key_by_default() -> None:
    assert litellm.require_auth_for_metrics_endpoint is True


@pytest.mark.parametrize("path", ["/metrics", "/metrics/"])
@pytest.mark.parametrize("role", [None, LitellmUserRoles.INTERNAL_USER, LitellmUserRoles.INTERNAL_USER_VIEW_ONLY])
def test_a_team_key_may_not_read_metrics(path: str, role: LitellmUserRoles | None) -> None:
    token = UserAPIKeyAuth(api_key="hashed", team_id="team-b", user_role=role)
    with pytest.raises(Exception, match="Only proxy admin") as refused:
        RouteChecks.non_proxy_admin_allowed_routes_check(
            user_obj=None, _user_role=role, route=path, request=request_to(path), valid_token=token, request_data={}
        )
    assert f"Route={path}" in str(refused.value)


def test_an_llm_route_passes_the_same_check() -> None:
    """The check above refuses /metrics, not every route (else it would prove nothing)."""
    token = UserAPIKeyAuth(api_key="hashed", team_id="team-b", user_role=LitellmUserRoles.INTERNAL_USER)
    route = "/chat/completions"
    RouteChecks.non_proxy_admin_allowed_routes_check(
        user_obj=None,
        _user_role=LitellmUserRoles.INTERNAL_USER,
        route=route,
        request=request_to(route),
        valid_token=token,
        request_data={},
    )
