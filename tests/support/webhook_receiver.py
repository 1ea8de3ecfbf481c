"""A webhook receiver for tests: a real HTTP server on 127.0.0.1, in a thread of the test process.

It verifies every request's signature with ``standardwebhooks`` (against each secret it was given),
records what came, and answers as its ``behave`` function says: a status code, or a delay first
(longer than the sender's timeout: a timed-out attempt). ``accepted`` holds each webhook-id it
answered 2xx, in arrival order.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError


@dataclass
class Received:
    webhook_id: str
    headers: dict[str, str]
    body: bytes
    verified_by: list[int]  # the indexes of the secrets whose signature verified
    answered: int = 0

    @property
    def json(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.body)
        return value


#: (the request, how many times this webhook-id came before) → (status, seconds to wait before answering)
Behaviour = Callable[[Received, int], tuple[int, float]]


def always_ok(_: Received, __: int) -> tuple[int, float]:
    return 200, 0.0


@dataclass
class Receiver:
    secrets: list[str]
    behave: Behaviour = always_ok
    received: list[Received] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    port: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def handle(self, headers: dict[str, str], body: bytes) -> tuple[int, float]:
        verified = []
        for i, secret in enumerate(self.secrets):
            with contextlib.suppress(WebhookVerificationError):
                Webhook(secret).verify(body, headers)
                verified.append(i)
        got = Received(headers.get("webhook-id", ""), headers, body, verified)
        with self._lock:
            before = sum(1 for r in self.received if r.webhook_id == got.webhook_id)
            self.received.append(got)
        status, delay = self.behave(got, before)
        got.answered = status
        return status, delay

    def answered(self, status: int, delay: float, webhook_id: str) -> None:
        if 200 <= status < 300:
            with self._lock:
                self.accepted.append(webhook_id)

    def events(self) -> list[dict[str, Any]]:
        """The bodies it accepted, once per webhook-id, in order."""
        seen: dict[str, dict[str, Any]] = {}
        with self._lock:
            for r in self.received:
                if r.answered and 200 <= r.answered < 300 and r.webhook_id not in seen:
                    seen[r.webhook_id] = r.json
        return list(seen.values())

    @contextlib.contextmanager
    def running(self) -> Iterator[Receiver]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, delay = receiver.handle(headers, body)
                if delay:
                    time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("content-length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    return  # the sender gave up (its timeout) and closed the connection
                receiver.answered(status, delay, headers.get("webhook-id", ""))

            def log_message(self, *args: Any) -> None:
                return None

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self.port = int(server.server_address[1])
        thread = threading.Thread(target=server.serve_forever, name="webhook-receiver", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)
