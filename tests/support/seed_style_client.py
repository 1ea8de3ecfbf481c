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


# -- The seed system's documented request and response shapes, as the smallest scripts a user writes -----
# Each function is written from the shapes alone (paths, body fields, answer fields), in the style of
# plain ``requests`` code: a field missing from an answer is a KeyError, not a silent default.


def job_with_one_call(
    api: str, key: str, *, team_id: str, job_type: str, metadata: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Create a job, make one call naming nothing but its messages, complete it: what a first integration does."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    create: dict[str, Any] = {"team_id": team_id, "job_type": job_type}
    if metadata is not None:
        create["metadata"] = metadata
    job = requests.post(f"{api}/jobs/create", headers=headers, json=create, timeout=60).json()
    call = requests.post(
        f"{api}/jobs/{job['job_id']}/llm-call",
        headers=headers,
        json={"messages": [{"role": "user", "content": "Say hello"}]},
        timeout=60,
    ).json()
    done = requests.post(
        f"{api}/jobs/{job['job_id']}/complete", headers=headers, json={"status": "completed"}, timeout=60
    ).json()
    return {
        "job_id": job["job_id"],
        "content": call["response"]["content"],
        "credits_remaining": done["costs"]["credits_remaining"],
    }


def stream_reading_every_data_line(api: str, key: str, *, team_id: str, job_type: str) -> dict[str, Any]:
    """Stream one call and decode every line that starts with ``data: `` as JSON, printing ``content``.

    A reader this naive must not break on the end of the stream: the proxy writes its end marker
    so that such a reader skips it, while SSE parsers still read it as ``[DONE]``.
    """
    headers = {"Authorization": f"Bearer {key}"}
    job_id = requests.post(
        f"{api}/jobs/create", headers=headers, json={"team_id": team_id, "job_type": job_type}, timeout=60
    ).json()["job_id"]
    response = requests.post(
        f"{api}/jobs/{job_id}/llm-call-stream",
        headers=headers,
        json={"messages": [{"role": "user", "content": "Tell me a story"}]},
        stream=True,
        timeout=60,
    )
    text = []
    for line in response.iter_lines():
        if line.startswith(b"data: "):
            chunk = json.loads(line[6:])
            if chunk.get("content"):
                text.append(chunk["content"])
    return {"job_id": job_id, "text": "".join(text)}
