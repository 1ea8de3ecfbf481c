"""A LiteLLM callback for test proxies: appends each success event's standard-logging request tags
to the file named by TAG_PROBE_FILE (what LiteLLM's /ui and spend logs filter on)."""

from __future__ import annotations

import json
import os
from typing import Any

from litellm.integrations.custom_logger import CustomLogger


class TagProbe(CustomLogger):
    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        slo = kwargs.get("standard_logging_object") or {}
        line = {"call_id": kwargs.get("litellm_call_id"), "request_tags": slo.get("request_tags")}
        with open(os.environ["TAG_PROBE_FILE"], "a") as f:  # noqa: ASYNC230 - a test probe, tiny writes
            f.write(json.dumps(line) + "\n")


probe = TagProbe()
