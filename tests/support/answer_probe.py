"""A LiteLLM callback for test proxies, listed after the plugin: for each non-streamed call it writes
the record the plugin makes from the answer (post-call hook) and the one LiteLLM's success event
would make, one JSON line each, to the file named by ANSWER_PROBE_FILE. With ANSWER_PROBE_YIELD_S, its
post-call hook first waits that long (a hook waiting for I/O): LiteLLM's success logging, if it is not
deferred past the post-call hooks, then runs first and its line comes first."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from typing import Any

from litellm.integrations.custom_logger import CustomLogger

from litellm_jobs_plugin import litellm_adapter as adapter
from litellm_jobs_plugin.models import CallEvent, CallStatus


def _line(side: str, event: CallEvent | None, call_id: object) -> None:
    fields = None
    if event is not None:
        fields = {k: v for k, v in dataclasses.asdict(event).items() if k not in ("context", "started_at", "ended_at")}
        fields["cost_usd"] = str(event.cost_usd)
        fields["status"] = event.status.value
    with open(os.environ["ANSWER_PROBE_FILE"], "a") as f:
        f.write(json.dumps({"side": side, "litellm_call_id": call_id, "event": fields}) + "\n")


class AnswerProbe(CustomLogger):
    async def async_post_call_success_hook(self, data: dict[str, Any], user_api_key_dict: Any, response: Any) -> Any:
        await asyncio.sleep(float(os.environ.get("ANSWER_PROBE_YIELD_S") or 0))
        context = adapter.stash_of_request(data)
        event = adapter.answer_event(data, response, context) if context is not None else None
        _line("answer", event, data.get("litellm_call_id"))
        return None

    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        event = adapter.call_event(kwargs, start_time, end_time, CallStatus.SUCCESS)
        _line("logged", event, kwargs.get("litellm_call_id"))


probe = AnswerProbe()
