"""A local stand-in for the WhatsApp Cloud API: real HTTP on 127.0.0.1, threaded.

    with FakeWhatsApp() as api:
        env["WHATSAPP_API_BASE_URL"] = api.base_url
        api.fail_next(1, status=429, code=130429)     # the next request is throttled
        api.latency = 1.5                             # hold each response 1.5 s
        api.fail_for(6.0, status=429, code=130429)    # every request in the next 6 s is throttled
        ...
        api.requests  # every request received (path, headers, JSON body, time)

It answers `POST /<version>/<phone-number-id>/messages` like the Cloud API: 200 with
`{"messages": [{"id": "wamid.<n>"}]}`, or the error that was queued with `fail_next`
(`{"error": {"code", "message", ...}}`). A request is recorded as soon as its body is
read, *before* the latency wait, so a test can kill the sender in between.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ERRORS = {
    130429: (429, "(#130429) Rate limit hit"),
    131056: (400, "(#131056) (Business Account, Consumer Account) pair rate limit hit"),
    131026: (400, "Message undeliverable"),
    132001: (404, "(#132001) Template name does not exist in the translation"),
    131000: (500, "Something went wrong"),
}


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: Any
    at: float
    answered: int = 0


@dataclass
class Planned:
    status: int
    code: int | None
    message: str
    retry_after: float | None = None
    hang: float = 0.0


@dataclass
class FakeWhatsApp:
    latency: float = 0.0
    requests: list[Recorded] = field(default_factory=list)
    _plan: list[Planned] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _counter: int = 0
    _window: tuple[float, Planned] | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def env(self, phone_number_id: str = "1234567890", token: str = "test-secret-token-xyz") -> dict[str, str]:
        return {
            "WHATSAPP_API_BASE_URL": self.base_url,
            "WHATSAPP_API_VERSION": "v21.0",
            "WHATSAPP_PHONE_NUMBER_ID": phone_number_id,
            "WHATSAPP_ACCESS_TOKEN": token,
        }

    def fail_next(
        self, count: int = 1, status: int | None = None, code: int | None = None, message: str | None = None,
        retry_after: float | None = None, hang: float = 0.0,
    ) -> None:
        """Answer the next `count` requests with an error (or hang `hang` s for timeouts)."""
        default_status, default_message = ERRORS.get(code or 0, (status or 500, "error"))
        with self._lock:
            for _ in range(count):
                self._plan.append(Planned(status or default_status, code, message or default_message, retry_after, hang))

    def fail_for(
        self, seconds: float, status: int | None = None, code: int | None = None, message: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        """Answer every request arriving in the next `seconds` with an error (an outage or
        a throttling storm); requests queued with `fail_next` are answered first."""
        default_status, default_message = ERRORS.get(code or 0, (status or 500, "error"))
        with self._lock:
            self._window = (time.time() + seconds, Planned(status or default_status, code, message or default_message, retry_after))

    def sent(self) -> list[Recorded]:
        """Requests answered with a message id."""
        with self._lock:
            return [r for r in self.requests if r.answered == 200]

    def received(self) -> list[Recorded]:
        with self._lock:
            return list(self.requests)

    def start(self) -> "FakeWhatsApp":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return None

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("content-length", 0))
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode(errors="replace")
                record = Recorded(self.path, dict(self.headers), body, time.time())
                with fake._lock:
                    fake.requests.append(record)
                    plan = fake._plan.pop(0) if fake._plan else None
                    if plan is None and fake._window is not None and record.at < fake._window[0]:
                        plan = fake._window[1]
                    fake._counter += 1
                    number = fake._counter
                time.sleep(fake.latency + (plan.hang if plan else 0))
                if not self.path.endswith("/messages"):
                    self._answer(404, {"error": {"code": 100, "message": "Unknown path", "type": "GraphMethodException"}})
                    record.answered = 404
                    return
                if plan is None:
                    self._answer(200, {
                        "messaging_product": "whatsapp",
                        "contacts": [{"input": body.get("to") if isinstance(body, dict) else "", "wa_id": "1"}],
                        "messages": [{"id": f"wamid.FAKE{number:06d}"}],
                    })
                    record.answered = 200
                    return
                error: dict[str, Any] = {"message": plan.message, "type": "OAuthException", "fbtrace_id": "Afake"}
                if plan.code is not None:
                    error["code"] = plan.code
                    error["error_data"] = {"messaging_product": "whatsapp", "details": plan.message}
                headers = {"Retry-After": str(plan.retry_after)} if plan.retry_after is not None else {}
                self._answer(plan.status, {"error": error}, headers)
                record.answered = plan.status

            def _answer(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> "FakeWhatsApp":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
