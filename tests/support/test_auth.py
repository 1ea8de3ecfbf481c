"""custom_auth for test proxies: maps fixed test keys to LiteLLM teams.

LiteLLM's own key database needs Prisma engines that cannot be installed here, so the tests give
keys their teams through the proxy's documented ``general_settings.custom_auth`` hook. This file
is copied next to each test config; the proxy loads it from there.
"""

from __future__ import annotations

from fastapi import Request
from litellm.proxy._types import LitellmUserRoles, ProxyException, UserAPIKeyAuth
from litellm.proxy.utils import hash_token

MASTER_KEY = "sk-master"
TEAM_KEYS = {
    "sk-team-a": "team-a",
    "sk-team-b": "team-b",
    "sk-team-c": "team-c",
    "sk-team-d": "team-d",
    "sk-team-e": "team-e",
    "sk-acme": "acme-corp",  # the seed documents' team
    "sk-broke": "team-broke",  # never granted credits
}
NO_TEAM_KEY = "sk-noteam"


async def user_api_key_auth(request: Request, api_key: str | None) -> UserAPIKeyAuth:
    key = (api_key or "").removeprefix("Bearer ").strip()  # LiteLLM passes None when no key was sent
    if key == MASTER_KEY:
        return UserAPIKeyAuth(api_key=hash_token(key), user_role=LitellmUserRoles.PROXY_ADMIN, user_id="admin")
    if key in TEAM_KEYS:
        return UserAPIKeyAuth(
            api_key=hash_token(key),
            team_id=TEAM_KEYS[key],
            user_role=LitellmUserRoles.INTERNAL_USER,
            user_id=f"user-of-{TEAM_KEYS[key]}",
        )
    if key == NO_TEAM_KEY:
        return UserAPIKeyAuth(api_key=hash_token(key), user_role=LitellmUserRoles.INTERNAL_USER, user_id="loner")
    raise ProxyException(message="Invalid API key", type="auth_error", param="api_key", code=401)
