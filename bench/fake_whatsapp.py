"""A minimal stand-in for the WhatsApp Cloud API on 127.0.0.1, for the notification benchmark.

    python -m bench.fake_whatsapp --port 0 --latency 0.15

Answers every `POST /<version>/<phone-number-id>/messages` after `latency` seconds with the
Cloud API's success shape (`{"messages": [{"id": "wamid..."}]}`, what
`bullwait.waitlist.whatsapp.parse_response` reads), and records each request: `t`, when the kernel
received its last bytes (`SO_TIMESTAMPNS`, so a moment when this process was not
scheduled does not bunch arrivals together), `tApp`, when this process read it, `to`, and
the body. `GET /__stats` returns the records as JSON. Prints `ready <port>` once
listening. HTTP/1.1 with keep-alive, one request at a time per connection (what httpx
sends). Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import struct
import time
from typing import Any

RECORDS: list[dict[str, Any]] = []
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; SCM_TIMESTAMPNS has the same value
STAMP_SPACE = socket.CMSG_SPACE(16)


def kernel_time(ancillary: list[tuple[int, int, bytes]]) -> float | None:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            seconds, nanos = struct.unpack("qq", data[:16])
            return seconds + nanos / 1e9
    return None


class Connection:
    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop, latency: float) -> None:
        self.sock, self.loop, self.latency = sock, loop, latency
        self.buffer = b""
        self.open = True
        loop.add_reader(sock.fileno(), self.readable)

    def readable(self) -> None:
        try:
            data, ancillary, _, _ = self.sock.recvmsg(65536, STAMP_SPACE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        arrived = kernel_time(ancillary) or time.time()
        self.buffer += data
        while self.open:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            lines = self.buffer[:head_end].decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            end = head_end + 4 + int(headers.get("content-length", "0") or 0)
            if len(self.buffer) < end:
                return
            body, self.buffer = self.buffer[head_end + 4:end], self.buffer[end:]
            method, path, _ = lines[0].split(" ", 2)
            self.request(method, path, body, arrived)

    def request(self, method: str, path: str, body: bytes, arrived: float) -> None:
        if method == "GET" and path == "/__stats":
            self.answer("200 OK", json.dumps(RECORDS).encode())
        elif method == "POST" and path.endswith("/messages"):
            message = json.loads(body or b"{}")
            RECORDS.append({"t": arrived, "tApp": time.time(), "to": message.get("to"), "body": message})
            payload = json.dumps({
                "messaging_product": "whatsapp",
                "contacts": [{"input": message.get("to"), "wa_id": str(message.get("to", "")).lstrip("+")}],
                "messages": [{"id": f"wamid.bench{len(RECORDS)}"}],
            }).encode()
            self.loop.call_later(self.latency, self.answer, "200 OK", payload)
        else:
            self.answer("404 Not Found", b'{"error":{"message":"not found","code":100}}')

    def answer(self, status: str, payload: bytes) -> None:
        if not self.open:
            return
        head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        self.loop.create_task(self.send(head.encode() + payload))

    async def send(self, data: bytes) -> None:
        try:
            await self.loop.sock_sendall(self.sock, data)
        except OSError:
            self.close()

    def close(self) -> None:
        if self.open:
            self.open = False
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()


async def serve(port: int, latency: float) -> None:
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", port), backlog=512)
    listener.setblocking(False)
    connections: list[Connection] = []

    def accept() -> None:
        try:
            sock, _ = listener.accept()
        except BlockingIOError:
            return
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connections.append(Connection(sock, loop, latency))

    loop.add_reader(listener.fileno(), accept)
    print(f"ready {listener.getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.15)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.latency))


if __name__ == "__main__":
    main()
