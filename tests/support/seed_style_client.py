"""A client written the way code for the seed system is written — independently of our client.

It knows only the seed's HTTP API: it sends ``model_group`` and ``purpose``, reads answers either as
the seed documents them (``response.content``) or OpenAI-shaped (``choices[0].message.content``),
parses SSE ``data:`` lines both as ``{"content": ...}`` and as OpenAI chunks, and asks for structured
output with a ``json_schema`` response_format. Plain ``requests``, as in the seed's examples.
"""

from __future__ import annotations

import json
from typing import Any

import requests


class SeedStyleClient:
    def __init__(self, api: str, key: str, *, team_id: str) -> None:
        self.api = api
        self.team_id = team_id
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def _post(self, path: str, body: dict[str, Any], **kwargs: Any) -> requests.Response:
        r = requests.post(f"{self.api}{path}", headers=self.headers, json=body, timeout=60, **kwargs)
        if not kwargs.get("stream"):
            r.raise_for_status()
        return r

    def analyse_document(self, text: str) -> dict[str, Any]:
        job = self._post("/jobs/create", {"team_id": self.team_id, "job_type": "document_analysis"}).json()
        job_id = job["job_id"]
        call = {"team_id": self.team_id, "model_group": "Summarizer"}

        summary = self._post(
            f"/jobs/{job_id}/llm-call",
            {**call, "purpose": "summary", "messages": [{"role": "user", "content": f"Summarise: {text}"}]},
        ).json()

        stream = self._post(
            f"/jobs/{job_id}/llm-call-stream",
            {**call, "purpose": "stream", "messages": [{"role": "user", "content": f"Explain: {text}"}]},
            stream=True,
        )
        from_content, from_chunks = [], []
        for line in stream.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            from_content.append(chunk.get("content", ""))
            for choice in chunk.get("choices", []):
                from_chunks.append(choice.get("delta", {}).get("content") or "")

        schema = {
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
            "required": ["name", "age"],
            "additionalProperties": False,
        }
        entities = self._post(
            f"/jobs/{job_id}/llm-call",
            {
                **call,
                "purpose": "entities",
                "messages": [{"role": "user", "content": f"Who wrote: {text}"}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "Author", "schema": schema}},
            },
        ).json()

        complete = self._post(f"/jobs/{job_id}/complete", {"team_id": self.team_id, "status": "completed"}).json()
        return {
            "job_id": job_id,
            "summary_from_content": summary["response"]["content"],
            "summary_from_choices": summary["choices"][0]["message"]["content"],
            "stream_text_from_content": "".join(from_content),
            "stream_text_from_chunks": "".join(from_chunks),
            "entities": json.loads(entities["choices"][0]["message"]["content"]),
            "complete": complete,
        }
