"""Redis connections built from settings, and the check that Redis answers.

bullmq-py takes a dict of `redis.asyncio.Redis` keyword arguments and builds its own
clients from it (one main, one blocking per worker); `redis_options` makes that dict.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError, BusyLoadingError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bullwait.errors import RedisAccessDenied, RedisUnavailable
from bullwait.settings import Settings


def redis_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `redis.asyncio.Redis` (and bullmq's `connection` option)."""
    opts = settings.redis_address.connect_kwargs()
    if settings.redis_username and not opts.get("username"):
        opts["username"] = settings.redis_username
    if settings.redis_password and not opts.get("password"):
        opts["password"] = settings.redis_password
    if settings.redis_tls_ca_file:
        opts["ssl"] = True
        opts["ssl_ca_certs"] = settings.redis_tls_ca_file
        opts["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    # Plain commands keep redis-py's read timeout (a hung Redis is noticed in seconds); a
    # worker's blocking connection raises its own above the longest BZPOPMIN (worker.py).
    opts.setdefault("socket_connect_timeout", settings.redis_connect_timeout)
    opts.setdefault("socket_keepalive", True)
    opts.setdefault("health_check_interval", 15)
    return opts


def redis_client(settings: Settings, **extra: Any) -> aioredis.Redis:
    """A plain async client for bullwait's own commands (ops, store, metrics)."""
    opts = redis_options(settings)
    opts.update(extra)
    return aioredis.Redis(decode_responses=True, **opts)


def describe_redis(settings: Settings) -> str:
    """Where Redis is, for messages: scheme, host, port and db, any password masked."""
    return settings.redis_address.display()


def redis_hostname(settings: Settings) -> str | None:
    """The host Redis is reached at (None for a Unix socket)."""
    return settings.redis_address.host


async def check_redis(settings: Settings, timeout: float | None = None) -> str:
    """Ping Redis once, fail fast. Returns the server version; raises `RedisUnavailable`."""
    limit = timeout if timeout is not None else settings.redis_connect_timeout
    # One try, no redis-py retries: refused credentials must not be retried until the timeout.
    client = redis_client(settings, socket_timeout=limit, retry_on_timeout=False, retry=bounded_retry(0))
    try:
        info = await asyncio.wait_for(_ping_version(client), timeout=limit + 1)
    except AuthenticationError:
        raise RedisAccessDenied(
            f"Redis at {describe_redis(settings)} refused the credentials: "
            "check REDIS_USERNAME / REDIS_PASSWORD (or the URL)"
        ) from None
    except ResponseError as exc:
        raise RedisAccessDenied(f"Redis at {describe_redis(settings)} answered with an error: {exc}") from None
    except (RedisError, OSError, asyncio.TimeoutError) as exc:
        reason = _short_reason(exc)
        raise RedisUnavailable(
            f"cannot reach Redis at {describe_redis(settings)} ({reason}): "
            "start Redis or point REDIS_URL / --redis-url at it"
        ) from None
    finally:
        await client.aclose()
    return info


async def _ping_version(client: aioredis.Redis) -> str:
    await client.ping()
    info = await client.info("server")
    return str(info.get("redis_version", "unknown"))


def _short_reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "refused" in text.lower() or text.lower().startswith("error 111 "):
        return "connection refused"
    if "timeout" in text.lower() or "timed out" in text.lower():
        return "timed out"
    return text[:160]


async def wait_for_redis(settings: Settings, log: Any, max_delay: float = 30.0) -> str:
    """Retry `check_redis` with exponential backoff, one log line per attempt, until it answers."""
    delay = 0.5
    attempt = 1
    while True:
        try:
            return await check_redis(settings)
        except RedisAccessDenied:
            raise
        except RedisUnavailable as exc:
            log.warning("redis unreachable, retrying", attempt=attempt, retry_in=f"{delay:.1f}s", error=str(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay)
            attempt += 1


# --- Bounded retries (issue 8) ---------------------------------------------------------
# bullmq-py gives every client `Retry(ExponentialBackoff(cap=20, base=1), 20)`: one command
# keeps retrying through a lost connection for about six minutes. bullwait bounds that by
# `BULLWAIT_REDIS_RETRY_TIMEOUT` so a producer fails with a clear error instead of hanging.

RETRY_BACKOFF_BASE = 0.05
RETRY_BACKOFF_CAP = 1.0
RETRYABLE_ERRORS = (RedisConnectionError, RedisTimeoutError, BusyLoadingError)


class BoundedRetry(Retry):
    """Retries lost connections, never refused credentials (redis-py counts those as
    connection errors, so bad credentials would otherwise be retried for the whole wait)."""

    async def call_with_retry(self, do: Any, fail: Any, is_retryable: Any = None, with_failure_count: bool = False) -> Any:
        def retryable(error: Exception) -> bool:
            if isinstance(error, AuthenticationError):
                return False
            return is_retryable(error) if is_retryable is not None else True

        return await super().call_with_retry(do, fail, retryable, with_failure_count)


def bounded_retry(timeout: float) -> Retry:
    """A redis-py Retry whose back-off sleeps add up to about `timeout` seconds."""
    retries = 0
    total = 0.0
    while total < timeout:
        retries += 1
        total += min(RETRY_BACKOFF_CAP, RETRY_BACKOFF_BASE * 2**retries)
    return BoundedRetry(ExponentialBackoff(cap=RETRY_BACKOFF_CAP, base=RETRY_BACKOFF_BASE), retries, RETRYABLE_ERRORS)


def bound_retries(settings: Settings, *connections: Any) -> None:
    """Give bullmq `RedisConnection`s (or redis clients) bullwait's bounded retry."""
    retry = bounded_retry(settings.bullwait_redis_retry_timeout)
    for conn in connections:
        client = getattr(conn, "conn", conn)
        if client is not None and hasattr(client, "set_retry"):
            client.set_retry(retry)


# --- Blocking reads (issue 8) ------------------------------------------------------------
# redis-py 8 gives every connection a 5 s read timeout, and bullmq's marker wait (BZPOPMIN)
# blocks for up to 5 s when idle (drainDelay) and 10 s at most. The read timed out just as
# Redis answered, and the retry sent the same wait again, never reaching the fetch that
# follows a wait: a job whose wake-up marker was lost (its BZPOPMIN answer died with a
# restarting Redis) then sat in `wait` for minutes while its queue looked idle.
BLOCKING_READ_MARGIN = 10.0


def bound_blocking_reads(connection: Any, max_block_seconds: float) -> None:
    """Give a bullmq blocking connection a read timeout well above its longest wait."""
    client = getattr(connection, "conn", connection)
    pool = getattr(client, "connection_pool", None)
    if pool is None:
        return
    timeout = max_block_seconds + BLOCKING_READ_MARGIN
    pool.connection_kwargs["socket_timeout"] = timeout
    for conn in [*getattr(pool, "_available_connections", []), *getattr(pool, "_in_use_connections", [])]:
        conn.socket_timeout = timeout
    single = getattr(client, "connection", None)
    if single is not None:
        single.socket_timeout = timeout


# --- Client names through reconnects (issue 13) ---------------------------------------------
# Node's getWorkers(), Bull Board and `bullwait stats` find workers by CLIENT LIST names.
# bullmq-py names a connection with one CLIENT SETNAME and puts the name in the pool's
# kwargs, but its single connection already exists by then: redis-py sends a name on
# connect only from the connection's own `client_name`, so after a Redis restart every
# reconnected worker connection was anonymous and the workers vanished (ioredis re-sends it).


def keep_client_name(connection: Any, name: str) -> None:
    """Make every connection of a bullmq connection (or redis client), now or later, connect as `name`."""
    client = getattr(connection, "conn", connection)
    pool = getattr(client, "connection_pool", None)
    existing: list[Any] = [getattr(client, "connection", None)]
    if pool is not None:
        pool.connection_kwargs["client_name"] = name
        existing += [*getattr(pool, "_available_connections", []), *getattr(pool, "_in_use_connections", [])]
    for conn in existing:
        if conn is not None:
            conn.client_name = name


# --- Cancellation of blocking waits --------------------------------------------------------
# redis-py sends every command through `asyncio.wait_for(send, socket_timeout)`. On Python
# 3.11 (3.12 rewrote wait_for) a cancellation that arrives in the loop turn where the send
# finishes is swallowed: wait_for returns the send's result and the task goes on to read
# the reply. `Worker.close()` stops an idle worker by cancelling its BZPOPMIN; when that
# cancellation landed just as the BZPOPMIN left (SIGTERM right after the queue drained),
# close() waited out the whole block (5-10 s), and a stock bullmq-py worker, whose 5 s read
# timeout equals its 5 s block, re-sent the BZPOPMIN after each read timeout for minutes.


class CancelSafeSend:
    """Connection mixin: a cancellation that redis-py's send swallowed is raised again.

    The command was written but its reply will never be read, so the connection is closed
    first (as redis-py does when a read is cancelled)."""

    __slots__ = ()

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        task = asyncio.current_task()
        requested = task.cancelling() if task is not None else 0
        await super().send_packed_command(command, check_health)  # type: ignore[misc]
        if task is not None and task.cancelling() > requested:
            await self.disconnect(nowait=True)  # type: ignore[attr-defined]
            raise asyncio.CancelledError()


def keep_cancellations(connection: Any) -> None:
    """Make the connections of a bullmq connection (or redis client) `CancelSafeSend`."""
    client = getattr(connection, "conn", connection)
    pool = getattr(client, "connection_pool", None)
    if pool is None or issubclass(pool.connection_class, CancelSafeSend):
        return
    original = pool.connection_class
    safe = type(f"CancelSafe{original.__name__}", (CancelSafeSend, original), {"__slots__": ()})
    pool.connection_class = safe
    existing = [*getattr(pool, "_available_connections", []), *getattr(pool, "_in_use_connections", [])]
    existing.append(getattr(client, "connection", None))
    for conn in existing:
        if type(conn) is original:
            conn.__class__ = safe
