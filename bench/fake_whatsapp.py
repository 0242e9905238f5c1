"""A minimal stand-in for the WhatsApp Cloud API on 127.0.0.1, for the notification benchmark.

    python -m bench.fake_whatsapp --port 0 --latency 0.15

Answers every `POST /<version>/<phone-number-id>/messages` after `latency` seconds with the
Cloud API's success shape, and records (arrival time, `to`, body) of each request.
`GET /__stats` returns the records as JSON. Prints `ready <port>` once listening.
HTTP/1.1 with keep-alive; only what httpx sends. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

RECORDS: list[dict[str, Any]] = []


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, latency: float) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
            arrived = time.time()
            if method == "GET" and path == "/__stats":
                payload = json.dumps(RECORDS).encode()
                status = "200 OK"
            elif method == "POST" and path.endswith("/messages"):
                message = json.loads(body or b"{}")
                RECORDS.append({"t": arrived, "to": message.get("to"), "body": message})
                await asyncio.sleep(latency)
                payload = json.dumps(
                    {
                        "messaging_product": "whatsapp",
                        "contacts": [{"input": message.get("to"), "wa_id": str(message.get("to", "")).lstrip("+")}],
                        "messages": [{"id": f"wamid.bench{len(RECORDS)}"}],
                    }
                ).encode()
                status = "200 OK"
            else:
                payload = b'{"error":{"message":"not found","code":100}}'
                status = "404 Not Found"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve(port: int, latency: float) -> None:
    server = await asyncio.start_server(lambda r, w: handle(r, w, latency), "127.0.0.1", port)
    print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.15)
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.port, args.latency))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
