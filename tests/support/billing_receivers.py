"""Local HTTP receivers standing in for OpenMeter, Lago and Stripe (127.0.0.1 only, never the internet).

Each records every request it takes, checks its payload against the fields the target system
documents, and can be told to refuse (500) or to stop answering, to test retries and crashes.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    #: The usage events of the request, as the target would read them (one or many).
    events: list[dict[str, Any]]


def _uuid(text: Any) -> bool:
    try:
        return str(uuid.UUID(str(text))) == text
    except ValueError:
        return False


def check_cloudevent(e: Any) -> dict[str, Any]:
    """A CloudEvents 1.0 JSON event as OpenMeter ingests it: specversion, id, source, type, subject, time, data."""
    assert isinstance(e, dict), e
    assert e["specversion"] == "1.0"
    for name in ("id", "source", "type", "subject"):
        assert isinstance(e[name], str), name
        assert e[name], name
    assert _uuid(e["id"]), e["id"]
    assert _RFC3339.match(e["time"]), e["time"]
    assert e.get("datacontenttype", "application/json") == "application/json"
    assert isinstance(e["data"], dict)
    return e


def check_lago(body: Any) -> dict[str, Any]:
    """Lago's POST /api/v1/events body: {"event": {transaction_id, external_subscription_id|external_customer_id,
    code, timestamp, properties}}."""
    assert isinstance(body, dict), body
    assert set(body) == {"event"}, body
    e = body["event"]
    assert isinstance(e["transaction_id"], str)
    assert _uuid(e["transaction_id"])
    assert isinstance(e.get("external_subscription_id") or e.get("external_customer_id"), str)
    assert isinstance(e["code"], str)
    assert e["code"]
    assert isinstance(e["timestamp"], int | float | str)
    float(e["timestamp"])
    assert isinstance(e["properties"], dict)
    return dict(e)


def check_stripe(form: dict[str, str]) -> dict[str, str]:
    """Stripe's POST /v1/billing/meter_events form: event_name, payload[stripe_customer_id], payload[value],
    identifier, timestamp (Unix seconds)."""
    assert set(form) == {
        "event_name",
        "identifier",
        "timestamp",
        "payload[stripe_customer_id]",
        "payload[value]",
    }, form
    assert form["event_name"]
    assert len(form["event_name"]) <= 100
    assert _uuid(form["identifier"])
    assert form["timestamp"].isdigit()
    datetime.fromtimestamp(int(form["timestamp"]))
    assert form["payload[stripe_customer_id]"]
    float(form["payload[value]"])
    assert "e" not in form["payload[value]"].lower()
    return form


@dataclass
class Receiver:
    kind: str  # cloudevents | lago | stripe
    port: int = 0
    received: list[Received] = field(default_factory=list)
    #: Answer 500 to every request after this many were taken (None: take them all).
    fail_after: int | None = None
    #: While set, requests are held unanswered (the exporter is stuck mid-delivery).
    hold: threading.Event = field(default_factory=threading.Event)
    api_key: str = "sk-test-sink"
    lock: threading.Lock = field(default_factory=threading.Lock)
    errors: list[str] = field(default_factory=list)
    #: Requests being held right now (tests wait for one instead of sleeping).
    holding: int = 0

    @property
    def url(self) -> str:
        path = {"cloudevents": "/api/v1/events", "lago": "/api/v1/events", "stripe": "/v1/billing/meter_events"}
        return f"http://127.0.0.1:{self.port}{path[self.kind]}"

    @property
    def events(self) -> list[dict[str, Any]]:
        with self.lock:
            return [e for r in self.received for e in r.events]

    def ids(self) -> list[str]:
        key = {"cloudevents": "id", "lago": "transaction_id", "stripe": "identifier"}[self.kind]
        return [str(e[key]) for e in self.events]

    def parse(self, path: str, headers: dict[str, str], body: bytes) -> list[dict[str, Any]]:
        assert headers.get("authorization") == f"Bearer {self.api_key}", headers.get("authorization")
        ctype = headers.get("content-type", "")
        if self.kind == "cloudevents":
            assert path == "/api/v1/events"
            if ctype.startswith("application/cloudevents-batch+json"):
                batch = json.loads(body)
                assert isinstance(batch, list)
                assert batch
                return [check_cloudevent(e) for e in batch]
            assert ctype.startswith("application/cloudevents+json"), ctype
            return [check_cloudevent(json.loads(body))]
        if self.kind == "lago":
            assert path == "/api/v1/events"
            assert ctype.startswith("application/json")
            return [check_lago(json.loads(body))]
        assert path == "/v1/billing/meter_events"
        assert ctype.startswith("application/x-www-form-urlencoded")
        return [dict(check_stripe(dict(parse_qsl(body.decode(), strict_parsing=True))))]

    @contextlib.contextmanager
    def running(self) -> Iterator[Receiver]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if receiver.hold.is_set():
                    with receiver.lock:
                        receiver.holding += 1
                    while receiver.hold.is_set():
                        time.sleep(0.02)
                    with receiver.lock:
                        receiver.holding -= 1
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver.lock:
                    refuse = receiver.fail_after is not None and len(receiver.received) >= receiver.fail_after
                if refuse:
                    self._answer(500, {"error": "refused by the test"})
                    return
                try:
                    events = receiver.parse(self.path, headers, body)
                except Exception as exc:  # a payload the target would refuse
                    with receiver.lock:
                        receiver.errors.append(f"{type(exc).__name__}: {exc}")
                    self._answer(400, {"error": str(exc)})
                    return
                with receiver.lock:
                    receiver.received.append(Received(self.path, headers, body, events))
                self._answer(200, {"ok": True})

            def _answer(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.hold.clear()
            server.shutdown()
            server.server_close()
