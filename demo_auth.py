"""Demo custom_auth for litellm_config.yaml: fixed keys mapped to LiteLLM teams.

Only for trying the plugin without LiteLLM's key database. In production, use LiteLLM's virtual
keys (its teams then reach the plugin unchanged) or your own custom_auth.

``/metrics`` takes the master key only. LiteLLM runs custom_auth there and serves every series to any
key it accepts, and its own series carry every team's requests and spend (``team`` labels): a team
key must not read them. LiteLLM's key database refuses ``/metrics`` to keys of non-admin users by
itself; a custom_auth has to, as this one does.
"""

from __future__ import annotations

import os

from fastapi import Request
from litellm.proxy._types import LitellmUserRoles, ProxyException, UserAPIKeyAuth
from litellm.proxy.utils import hash_token

DEMO_KEYS = {"sk-demo-team-a": "demo-team-a", "sk-demo-team-b": "demo-team-b"}


def _is_metrics(request: Request) -> bool:
    path = request.url.path.removeprefix(request.scope.get("root_path") or "")
    return path == "/metrics" or path.startswith("/metrics/")


async def user_api_key_auth(request: Request, api_key: str | None) -> UserAPIKeyAuth:
    key = (api_key or "").removeprefix("Bearer ").strip()  # LiteLLM passes None when no key was sent
    if key == os.environ.get("LITELLM_MASTER_KEY", "sk-local-master"):
        return UserAPIKeyAuth(api_key=hash_token(key), user_role=LitellmUserRoles.PROXY_ADMIN)
    if key in DEMO_KEYS and _is_metrics(request):
        raise ProxyException(message="/metrics takes the master key only", type="auth_error", param="api_key", code=403)
    if key in DEMO_KEYS:
        return UserAPIKeyAuth(api_key=hash_token(key), team_id=DEMO_KEYS[key], user_role=LitellmUserRoles.INTERNAL_USER)
    raise ProxyException(message="Invalid API key", type="auth_error", param="api_key", code=401)
