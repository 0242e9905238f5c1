"""A local stand-in for the WhatsApp Cloud API: real HTTP on 127.0.0.1 only, a thread per
connection. The tests drive it in-process; the notification benchmark and developers run it
on its own:

    python -m bullwait.dev.fake_whatsapp --port 0 --latency 0.15    # prints `ready <port>`

    with FakeWhatsApp() as api:
        env.update(api.env())                         # WHATSAPP_* settings pointing at it
        api.fail_next(1, status=429, code=130429)     # the next request is throttled
        api.latency = 1.5                             # hold each response 1.5 s
        api.fail_for(6.0, status=429, code=130429)    # every request in the next 6 s is throttled
        ...
        api.requests  # every request received (path, headers, JSON body, times)

        api.slow_next(3.0)                            # accept the next message, answering after 3 s
        api.odd_next("reset")                          # read the request, then reset the connection
        api.odd_next("nested", status=500)            # a 500 whose body is JSON nested 100,000 deep

It answers `POST /<version>/<phone-number-id>/messages` like the Cloud API: 200 with
`{"messages": [{"id": "wamid.<n>"}]}` (what `bullwait.waitlist.whatsapp.parse_response`
reads), or the error that was queued with `fail_next` (`{"error": {"code", "message", ...}}`).
A request is recorded as soon as its body is read, *before* the latency wait, so a test can
kill the sender in between. `GET /__stats` returns the messages received as JSON, for a
process that runs the fake on its own.

Each record has two times: `at`, when this process read the request, and `arrived`, when the
kernel received its last bytes (`SO_TIMESTAMPNS` on Linux, else the same as `at`), so a
moment when this process was not scheduled does not bunch arrivals together.

`odd_next` queues answers no API should give (`ODD_KINDS`): `nested` (JSON nested past
any recursion limit), `huge` (`size` bytes of JSON, streamed, never held in memory),
`truncated` (Content-Length promises the whole answer, half is sent, then the connection
closes), `html` (not JSON), `reset` (no answer: the connection is reset once the request
is read), each with `status` (200: the message *was* accepted) and an optional `hang`
first (a slow answer). `Recorded.answered` is the status sent (-1 for a reset).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import socket
import struct
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
ODD_KINDS = ("nested", "huge", "truncated", "html", "reset")
NESTING = 100_000
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; SCM_TIMESTAMPNS has the same value
STAMP_SPACE = socket.CMSG_SPACE(16)


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: Any
    at: float
    answered: int = 0
    arrived: float = 0.0


@dataclass
class Planned:
    status: int
    code: int | None
    message: str
    retry_after: float | None = None
    hang: float = 0.0
    odd: str | None = None  # one of ODD_KINDS
    size: int = 0


@dataclass
class FakeWhatsApp:
    latency: float = 0.0
    port: int = 0  # 0: any free one (`base_url` says which)
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
        self,
        count: int = 1,
        status: int | None = None,
        code: int | None = None,
        message: str | None = None,
        retry_after: float | None = None,
        hang: float = 0.0,
    ) -> None:
        """Answer the next `count` requests with an error (or hang `hang` s for timeouts)."""
        default_status, default_message = ERRORS.get(code or 0, (status or 500, "error"))
        with self._lock:
            for _ in range(count):
                self._plan.append(
                    Planned(status or default_status, code, message or default_message, retry_after, hang)
                )

    def slow_next(self, hang: float, count: int = 1) -> None:
        """Accept the next `count` messages (200 with an id), but only after `hang` s."""
        with self._lock:
            for _ in range(count):
                self._plan.append(Planned(200, None, "", hang=hang))

    def odd_next(
        self, kind: str, count: int = 1, status: int = 200, hang: float = 0.0, size: int = 200 * 2**20
    ) -> None:
        """Answer the next `count` requests oddly (`ODD_KINDS`, see the module docstring)."""
        assert kind in ODD_KINDS, kind
        with self._lock:
            for _ in range(count):
                self._plan.append(Planned(status, None, "", hang=hang, odd=kind, size=size))

    def fail_for(
        self,
        seconds: float,
        status: int | None = None,
        code: int | None = None,
        message: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        """Answer every request arriving in the next `seconds` with an error (an outage or
        a throttling storm); requests queued with `fail_next` are answered first."""
        default_status, default_message = ERRORS.get(code or 0, (status or 500, "error"))
        with self._lock:
            self._window = (
                time.time() + seconds,
                Planned(status or default_status, code, message or default_message, retry_after),
            )

    def sent(self) -> list[Recorded]:
        """Requests answered with a message id."""
        with self._lock:
            return [r for r in self.requests if r.answered == 200]

    def received(self) -> list[Recorded]:
        with self._lock:
            return list(self.requests)

    def stats(self) -> list[dict[str, Any]]:
        """The messages received, as `GET /__stats` returns them: `t` (kernel receive time),
        `tApp` (read time), `to` and the body."""
        return [
            {"t": r.arrived, "tApp": r.at, "to": r.body.get("to") if isinstance(r.body, dict) else None, "body": r.body}
            for r in self.received()
            if r.path.endswith("/messages")
        ]

    def start(self) -> FakeWhatsApp:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            disable_nagle_algorithm = True  # else a body written after its headers waits for an ACK

            def setup(self) -> None:
                super().setup()
                self.rfile.close()
                self.stamped = StampedReader(self.connection)
                self.rfile = io.BufferedReader(self.stamped)

            def log_message(self, *args: Any) -> None:
                return None

            def do_GET(self) -> None:  # noqa: N802
                if self.path == "/__stats":
                    self._answer(200, fake.stats())
                else:
                    self._answer(
                        404, {"error": {"code": 100, "message": "Unknown path", "type": "GraphMethodException"}}
                    )

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("content-length", 0))
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode(errors="replace")
                now = time.time()
                record = Recorded(self.path, dict(self.headers), body, now, arrived=self.stamped.last or now)
                with fake._lock:
                    fake.requests.append(record)
                    plan = fake._plan.pop(0) if fake._plan else None
                    if plan is None and fake._window is not None and record.at < fake._window[0]:
                        plan = fake._window[1]
                    fake._counter += 1
                    number = fake._counter
                time.sleep(fake.latency + (plan.hang if plan else 0))
                # `answered` is set before the answer goes out: a client that has its answer must
                # find it recorded (`sent()` read right after a send missed the last one).
                if not self.path.endswith("/messages"):
                    record.answered = 404
                    self._answer(
                        404, {"error": {"code": 100, "message": "Unknown path", "type": "GraphMethodException"}}
                    )
                    return
                if plan is not None and plan.odd is not None:
                    record.answered = -1 if plan.odd == "reset" else plan.status
                    self._odd(plan, number)
                    return
                if plan is None or plan.status == 200:
                    to = str(body.get("to", "")) if isinstance(body, dict) else ""
                    record.answered = 200
                    self._answer(
                        200,
                        {
                            "messaging_product": "whatsapp",
                            "contacts": [{"input": to, "wa_id": to.lstrip("+")}],
                            "messages": [{"id": f"wamid.FAKE{number:06d}"}],
                        },
                    )
                    return
                error: dict[str, Any] = {"message": plan.message, "type": "OAuthException", "fbtrace_id": "Afake"}
                if plan.code is not None:
                    error["code"] = plan.code
                    error["error_data"] = {"messaging_product": "whatsapp", "details": plan.message}
                headers = {"Retry-After": str(plan.retry_after)} if plan.retry_after is not None else {}
                record.answered = plan.status
                self._answer(plan.status, {"error": error}, headers)

            def _odd(self, plan: Planned, number: int) -> None:
                self.close_connection = True
                try:
                    if plan.odd == "reset":
                        # SO_LINGER 0: close() sends RST instead of FIN.
                        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        self.connection.close()
                        return
                    if plan.odd == "huge":
                        self._stream_huge(plan)
                        return
                    data = {
                        "nested": b"[" * NESTING + b"]" * NESTING,
                        "html": b"<html><body><h1>502 Bad Gateway</h1></body></html>",
                        "truncated": json.dumps(
                            {"messaging_product": "whatsapp", "messages": [{"id": f"wamid.FAKE{number:06d}"}]}
                        ).encode(),
                    }[plan.odd or ""]
                    sent = data[: len(data) // 2] if plan.odd == "truncated" else data
                    self.send_response(plan.status)
                    self.send_header("Content-Type", "text/html" if plan.odd == "html" else "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(sent)
                    self.wfile.flush()
                except OSError:
                    pass

            def _stream_huge(self, plan: Planned) -> None:
                """`plan.size` bytes of one JSON string, written a chunk at a time."""
                chunk = b"x" * 65536
                self.send_response(plan.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(plan.size))
                self.end_headers()
                head = b'{"error": {"code": 131000, "message": "'
                tail = b'"}}'
                self.wfile.write(head)
                left = plan.size - len(head) - len(tail)
                while left > 0:
                    self.wfile.write(chunk[: min(left, len(chunk))])
                    left -= len(chunk)
                self.wfile.write(tail)

            def _answer(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
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

        self._server = LoopbackServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> FakeWhatsApp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LoopbackServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # a burst of new connections is not dropped and retried a second later

    def server_bind(self) -> None:
        # Set on the listener so accepted sockets have it from their first byte (Linux copies
        # it to them); set after accept, a first request already queued would have no stamp.
        with contextlib.suppress(OSError):
            self.socket.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        super().server_bind()


class StampedReader(io.RawIOBase):
    """A socket's bytes, remembering when the kernel received the last ones read (`last`)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.last: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        size, ancillary, _, _ = self.sock.recvmsg_into([buffer], STAMP_SPACE)
        stamp = kernel_time(ancillary)
        if size and stamp is not None:
            self.last = stamp
        return size


def kernel_time(ancillary: list[tuple[int, int, bytes]]) -> float | None:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            seconds, nanos = struct.unpack("qq", data[:16])
            return float(seconds + nanos / 1e9)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description="A fake WhatsApp Cloud API on 127.0.0.1; prints `ready <port>`.")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--latency", type=float, default=0.15, help="seconds before each answer")
    args = parser.parse_args()
    api = FakeWhatsApp(latency=args.latency, port=args.port).start()
    print(f"ready {api.base_url.rsplit(':', 1)[1]}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        api.stop()


if __name__ == "__main__":
    main()
