"""Redis connections built from settings, and the check that Redis answers.

bullmq-py takes a dict of `redis.asyncio.Redis` keyword arguments and builds its own
clients from it (one main, one blocking per worker); `redis_options` makes that dict.
It also takes a client instance: `bullmq_connection` gives it one when Redis is found
through Sentinel, where every client must be a Sentinel-managed one (`redis_client`
builds those; see "Redis Sentinel" below for how connections follow a failover), and on a
Redis Cluster (REDIS_CLUSTER_NODES), where every client is a `RedisCluster` that follows
MOVED/ASK redirects and failovers itself (see "Redis Cluster" below).
"""

from __future__ import annotations

import asyncio
import ssl
import time
import weakref
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.connection import SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.backoff import ExponentialBackoff, ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import (
    AskError,
    AuthenticationError,
    BusyLoadingError,
    ClusterCrossSlotError,
    ClusterDownError,
    ClusterError,
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bullwait.engine.internals import add_connection_mixin, main_client, reset_cluster_connections, set_read_timeout
from bullwait.errors import RedisAccessDenied, RedisIsClusterNode, RedisNotCluster, RedisUnavailable
from bullwait.settings import Settings


def redis_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `redis.asyncio.Redis` (and bullmq's `connection` option).

    One node only: with Sentinel or a cluster there is no fixed address to give (use `bullmq_connection`)."""
    if settings.sentinel is not None:
        raise RuntimeError("redis_options() names one node; with REDIS_SENTINELS use bullmq_connection()")
    if settings.cluster is not None:
        raise RuntimeError("redis_options() names one node; with REDIS_CLUSTER_NODES use bullmq_connection()")
    return _node_options(settings, settings.redis_address.connect_kwargs())


def _node_options(settings: Settings, opts: dict[str, Any]) -> dict[str, Any]:
    """Credentials, TLS and socket options for a data node (the one Redis, or Sentinel's master)."""
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


def redis_client(settings: Settings, single_connection: bool = False, **extra: Any) -> Any:
    """An async client for bullwait's own commands (ops, store, metrics); Sentinel-managed
    when REDIS_SENTINELS is set, a `RedisCluster` with REDIS_CLUSTER_NODES. `single_connection`:
    one connection, as bullmq-py's own (a cluster client has a pool per node instead)."""
    if settings.cluster is not None:
        return cluster_client(settings, **extra)
    if settings.sentinel is not None:
        return sentinel_client(settings, single_connection, **extra)
    opts = redis_options(settings)
    opts.update(extra)
    return aioredis.Redis(decode_responses=True, single_connection_client=single_connection, **opts)


def bullmq_connection(settings: Settings) -> dict[str, Any] | aioredis.Redis | RedisCluster:
    """bullmq's `connection` option: kwargs for one node, a Sentinel-managed or cluster client otherwise.

    bullmq-py builds a single-connection `redis.asyncio.Redis` from kwargs and uses a client
    it is given as it is (bullmq/redis_connection.py, which takes a `RedisCluster` too); the
    Sentinel client is made the same way (one connection, bounded retries on connection errors)."""
    if settings.cluster is not None:
        return cluster_client(settings, retry=bounded_retry(settings.bullwait_redis_retry_timeout))
    if settings.sentinel is None:
        return redis_options(settings)
    client = sentinel_client(settings, single_connection=True)
    client.set_retry(bounded_retry(settings.bullwait_redis_retry_timeout))
    return client


def describe_redis(settings: Settings) -> str:
    """Where Redis is, for messages: scheme, host, port and db, any password masked."""
    if settings.cluster is not None:
        return settings.cluster.display()
    if settings.sentinel is not None:
        return settings.sentinel.display()
    return settings.redis_address.display()


def redis_hostname(settings: Settings) -> str | None:
    """The host Redis is reached at (None for a Unix socket; the first sentinel's with Sentinel,
    the first seed node's on a cluster)."""
    if settings.cluster is not None:
        return settings.cluster.nodes[0][0]
    if settings.sentinel is not None:
        return settings.sentinel.sentinels[0][0]
    return settings.redis_address.host


async def check_redis(settings: Settings, timeout: float | None = None) -> str:
    """Ping Redis once, fail fast. Returns the server version; raises `RedisUnavailable`, or
    `RedisIsClusterNode` when a one-node address names a cluster node."""
    limit = timeout if timeout is not None else settings.redis_connect_timeout
    # One try, no redis-py retries: refused credentials must not be retried until the timeout.
    client = redis_client(settings, socket_timeout=limit, retry_on_timeout=False, retry=bounded_retry(0))
    try:
        if settings.cluster is not None:
            info = await asyncio.wait_for(_cluster_version(client), timeout=limit + 1)
        else:
            info = await asyncio.wait_for(_ping_version(client, settings), timeout=limit + 1)
    except MasterNotFoundError as exc:
        raise _no_master(settings, exc) from None
    except AuthenticationError:
        raise RedisAccessDenied(credentials_refused(settings)) from None
    except ResponseError as exc:
        redirect = cluster_redirect(settings, exc)
        if redirect is not None:
            raise redirect from None
        raise RedisAccessDenied(f"Redis at {describe_redis(settings)} answered with an error: {exc}") from None
    except (TimeoutError, RedisError, RedisClusterException, OSError) as exc:
        if settings.cluster is not None and "Cluster mode is not enabled" in str(exc):
            raise not_a_cluster(settings) from None
        reason = short_reason(exc)
        advice = "start Redis or point REDIS_URL / --redis-url at it"
        if settings.sentinel is not None:
            advice = "start the master the sentinels name, or check REDIS_SENTINELS"
        if settings.cluster is not None:
            advice = "start the cluster's nodes, or check REDIS_CLUSTER_NODES"
        raise RedisUnavailable(f"cannot reach Redis at {describe_redis(settings)} ({reason}): {advice}") from None
    finally:
        await client.aclose()
    return info


def credentials_refused(settings: Settings, consequence: str = "") -> str:
    """The one line for credentials the data nodes refuse; `consequence` says what did not happen."""
    what = f" ({consequence})" if consequence else ""
    return (
        f"Redis at {describe_redis(settings)} refused the credentials{what}: "
        "check REDIS_USERNAME / REDIS_PASSWORD (or the URL)"
    )


def _no_master(settings: Settings, exc: MasterNotFoundError) -> RedisUnavailable:
    """One line for "no master found": no sentinel answered, they refused us, or they know none."""
    text = str(exc)
    where = describe_redis(settings)
    name = settings.redis_sentinel_master
    if any(word in text for word in ("AuthenticationError", "WRONGPASS", "NOAUTH", "invalid username")):
        return RedisAccessDenied(
            f"the sentinels at {where} refused the credentials: check REDIS_SENTINEL_USERNAME / REDIS_SENTINEL_PASSWORD"
        )
    if " - " in text:  # redis-py lists one error per sentinel that did not answer
        answered = len(settings.sentinel.sentinels) - text.count(" - ") if settings.sentinel else 0
        if answered <= 0:
            return RedisUnavailable(f"no sentinel at {where} answered: start them or check REDIS_SENTINELS")
    return RedisUnavailable(
        f"the sentinels at {where} name no reachable master {name!r} (down, failing over, "
        "or another name): check REDIS_SENTINEL_MASTER and that a master is up"
    )


def no_master_reason(settings: Settings, exc: MasterNotFoundError) -> str:
    """Why no master was found, in one line for health documents and logs."""
    return str(_no_master(settings, exc))


async def _ping_version(client: aioredis.Redis, settings: Settings) -> str:
    await client.ping()
    info = await client.info("server")
    if settings.cluster is None and (await client.info("cluster")).get("cluster_enabled") in (1, "1"):
        raise RedisIsClusterNode(is_cluster_node_message(settings))
    return str(info.get("redis_version", "unknown"))


def short_reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, RedisClusterException) and "reachable node: " in text:
        return "no seed node answers: " + short_reason(Exception(text.split("reachable node: ", 1)[1]))
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


# --- Redis Cluster ------------------------------------------------------------------
# With REDIS_CLUSTER_NODES every client is a redis-py `RedisCluster`: it reads the slot map
# from a seed node, sends each command to the master of its key's slot, follows MOVED and
# ASK, and reads the map again after a MOVED or a lost node (a failover). Key-less commands
# (PING, INFO, CLIENT LIST) go to nodes chosen by redis-py's command policies, or to the
# nodes passed as `target_nodes`. BullMQ's Lua needs every key of one call in one slot: the
# prefix's hash tag (settings.py) gives that.


# redis-py's cluster client retries a command on a lost node at once, reading the slot map
# again, a few times in a few milliseconds: a master that crashed is replaced only after the
# cluster's node timeout (seconds). `FollowingCluster` keeps trying, backing off, for as long
# as its retry allows (`BULLWAIT_REDIS_RETRY_TIMEOUT` for bullmq's and the producer's clients),
# as a one-node client does through a restart. A slot being migrated is waited out the same
# way: a script whose keys are split between the two nodes is refused (TRYAGAIN) until the last
# key has moved, longer than redis-py's few tries ("TTL exhausted").
CLUSTER_RETRYABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    ClusterDownError,
    TryAgainError,
    ClusterError,
    RedisClusterException,
)
DEFAULT_CLUSTER_RETRY_SECONDS = 5.0  # about what redis-py's default retry waits on one node


# redis-py also resets a client's topology by closing the client (`aclose()`) in the middle of
# a command: after every few MOVED replies (`reinitialize_steps`), after CLUSTERDOWN or a slot
# not covered, and before a pipeline's retry. Closing disconnects every connection of every
# node, those other tasks are sending or reading on too. After a failover, when a worker's
# slots, lock renewals and sweeps, sharing one client, all meet MOVED at once, their commands
# failed ("'NoneType' object has no attribute 'writelines'", not retried: a completion then
# failed its job, which was never completed) or lost their reply after they had run and were
# sent again (a completion then answered "Missing lock"). `FollowingCluster` resets without
# cutting them (`reset_cluster_connections`) when `aclose()` is called from one of its own
# commands or pipelines; an `aclose()` from anywhere else closes the client as before.
_IN_COMMAND: ContextVar[bool] = ContextVar("bullwait_cluster_in_command", default=False)


class FollowingCluster(RedisCluster):
    """A `RedisCluster` whose commands retry through a failover for `retry_timeout` seconds,
    and whose slot map resets leave the other commands in flight alone."""

    retry_timeout: float = DEFAULT_CLUSTER_RETRY_SECONDS

    def set_retry(self, retry: Retry) -> None:
        super().set_retry(retry)
        self.retry_timeout = float(getattr(retry, "timeout", 0.0))

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        token = _IN_COMMAND.set(True)
        try:
            return await self._execute_retrying(*args, **kwargs)
        finally:
            _IN_COMMAND.reset(token)

    async def _execute_retrying(self, *args: Any, **kwargs: Any) -> Any:
        delay = RETRY_BACKOFF_BASE
        deadline: float | None = None
        while True:
            try:
                return await super().execute_command(*args, **kwargs)
            except CLUSTER_RETRYABLE as exc:
                if not _cluster_retryable(exc):
                    raise
                now = asyncio.get_running_loop().time()
                deadline = now + self.retry_timeout if deadline is None else deadline
                if now + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_BACKOFF_CAP)

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> ClusterPipeline:
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # which refuses it, as redis-py does
        return FollowingPipeline(self, transaction)  # type: ignore[abstract]  # as redis-py builds its own

    async def aclose(self) -> None:
        if _IN_COMMAND.get():  # redis-py resetting the topology, not a caller closing the client
            await reset_cluster_connections(self)
            return
        await super().aclose()


class FollowingPipeline(ClusterPipeline):
    """A cluster pipeline whose retries reset the topology as `FollowingCluster` commands do."""

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        token = _IN_COMMAND.set(True)
        try:
            return await super().execute(raise_on_error, allow_redirections)
        finally:
            _IN_COMMAND.reset(token)


def _cluster_retryable(exc: BaseException) -> bool:
    """A lost node or a cluster between masters; not refused credentials, nor redis-py's own
    refusals (keys of several slots in one command), which no wait mends."""
    if isinstance(exc, AuthenticationError):
        return False
    if isinstance(exc, SlotNotCoveredError):
        return True  # a slot between a failed master and its replica
    if isinstance(exc, ClusterError) and not isinstance(exc, ResponseError):
        # Every try was refused (MOVED, ASK, TRYAGAIN), so the command never ran: safe to resend.
        return str(exc).startswith("TTL exhausted")
    if isinstance(exc, RedisClusterException):
        return "cannot be connected" in str(exc)  # no seed node answers (yet)
    return True


def cluster_client(settings: Settings, **extra: Any) -> RedisCluster:
    """A `RedisCluster` on the seed nodes, with the credentials, TLS and timeouts of one node.
    A `retry` given bounds how long a command keeps retrying (its `timeout`, 0 for another Retry)."""
    topology = settings.cluster
    assert topology is not None
    extra.pop("retry_on_timeout", None)  # a Redis() argument RedisCluster does not take
    extra.pop("single_connection_client", None)
    opts: dict[str, Any] = {}
    if settings.redis_username:
        opts["username"] = settings.redis_username
    if settings.redis_password:
        opts["password"] = settings.redis_password
    if settings.redis_tls_ca_file:
        opts.update(ssl=True, ssl_ca_certs=settings.redis_tls_ca_file, ssl_cert_reqs=ssl.CERT_REQUIRED)
    opts.update(
        socket_connect_timeout=settings.redis_connect_timeout,
        socket_keepalive=True,
        health_check_interval=15,
        decode_responses=True,
    )
    opts.update(extra)
    nodes = [ClusterNode(host, port) for host, port in topology.nodes]
    client = FollowingCluster(startup_nodes=nodes, **opts)
    if "retry" in extra:
        client.set_retry(extra["retry"])
    return client


@dataclass
class ClusterView:
    """What the cluster's nodes say, for `check_redis`, doctor and stats."""

    nodes: list[tuple[str, str, bool, str]]  # (address, role, answering, error)
    state: str  # cluster_state from a node that answers ("unknown" if none)
    slots_ok: int
    version: str = "unknown"

    @property
    def answering(self) -> int:
        return sum(answering for _, _, answering, _ in self.nodes)

    def masters(self) -> list[str]:
        return [address for address, role, _, _ in self.nodes if role == "master"]

    def replicas(self) -> list[str]:
        return [address for address, role, _, _ in self.nodes if role != "master"]

    def summary(self) -> str:
        """One line: nodes answering, masters/replicas, cluster_state and slots."""
        down = [f"{address} ({error})" for address, _, answering, error in self.nodes if not answering]
        tail = f"; not answering: {', '.join(down)}" if down else ""
        return (
            f"Redis Cluster: {self.answering}/{len(self.nodes)} nodes answering "
            f"({len(self.masters())} masters, {len(self.replicas())} replicas), "
            f"cluster_state {self.state}, slots ok {self.slots_ok}/16384{tail}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "slotsOk": self.slots_ok,
            "version": self.version,
            "nodes": [{"address": a, "role": r, "answering": ok, "error": e} for a, r, ok, e in self.nodes],
        }


async def read_cluster(client: RedisCluster) -> ClusterView:
    """Every node the cluster knows (CLUSTER NODES, failed ones included), each asked for its
    version where the client can reach it; cluster_state and slots from the node that answered."""
    await client.initialize()
    known: dict[str, Any] | None = None
    state, slots_ok, version = "unknown", 0, "unknown"
    unreachable: dict[str, str] = {}
    for node in client.get_nodes():
        try:
            cluster = await client.execute_command("CLUSTER INFO", target_nodes=node)
            known = await _cluster_nodes(client, node)
        except (RedisError, OSError) as exc:
            unreachable[node.name] = short_reason(exc)
            continue
        state = str(cluster.get("cluster_state", "unknown"))
        slots_ok = int(cluster.get("cluster_slots_ok", 0))
        break
    views: list[tuple[str, str, bool, str]] = []
    for address, entry in (known or {}).items():
        flags = str(entry.get("flags", "")).split(",")
        role = "master" if "master" in flags else "replica"
        failed = {"fail", "fail?", "noaddr", "handshake"} & set(flags)
        answering, error = not failed, f"the cluster marks it {','.join(sorted(failed))}" if failed else ""
        reachable = client.get_node(node_name=address)
        if reachable is not None and answering:
            try:
                info = await client.info("server", target_nodes=reachable)
                version = str(info.get("redis_version", version))
            except (RedisError, OSError) as exc:
                answering, error = False, short_reason(exc)
        views.append((address, role, answering, error))
    if known is None:
        views = [(address, "unknown", False, error) for address, error in unreachable.items()]
    views.sort(key=lambda view: (view[1] != "master", view[0]))
    return ClusterView(views, state, slots_ok, version)


async def _cluster_nodes(client: RedisCluster, node: ClusterNode) -> dict[str, Any]:
    """CLUSTER NODES as redis-py parses it; where an ACL refuses it, the nodes of the slot map."""
    try:
        return dict(await client.execute_command("CLUSTER NODES", target_nodes=node))
    except ResponseError:
        roles = {"primary": "master"}
        return {n.name: {"flags": roles.get(str(n.server_type), "slave")} for n in client.get_nodes()}


async def _cluster_version(client: RedisCluster) -> str:
    """The version when the cluster serves every slot; `RedisUnavailable` in one line otherwise."""
    view = await read_cluster(client)
    if view.state != "ok" or view.answering == 0:
        raise RedisUnavailable(f"{view.summary()}: wait for the cluster to recover, or check REDIS_CLUSTER_NODES")
    return view.version


async def client_list(client: Any) -> list[dict[str, Any]]:
    """CLIENT LIST of one node, or of every master of a cluster (where workers connect) as one
    list whose entries carry their master's address as `node`."""
    if not isinstance(client, RedisCluster):
        return list(await client.client_list())
    replies = await client.client_list(target_nodes=RedisCluster.PRIMARIES)
    if not isinstance(replies, dict):  # one master
        return list(replies)
    # Each entry names its node: a worker may be named on several (snapshot.count_queue_workers).
    return [dict(entry, node=node) for node, node_list in replies.items() for entry in node_list]


async def load_scripts(client: Any, *scripts: Any) -> None:
    """On a cluster, load registered scripts on every master up front: a cluster pipeline
    sends EVALSHA as it is (`queue_script`) and cannot load a script that is missing."""
    if isinstance(client, RedisCluster):
        for script in scripts:
            await client.script_load(script.script)


async def queue_script(pipe: Any, script: Any, keys: list[Any], args: list[Any]) -> None:
    """Queue a registered script's call in `pipe`. redis-py refuses its `evalsha` method in a
    cluster pipeline, but sends an EVALSHA given as a plain command to its keys' slot: the
    script must then be loaded already (`load_scripts`)."""
    if isinstance(pipe, ClusterPipeline):
        pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
    else:
        await script(keys=keys, args=args, client=pipe)


# A cluster's replies to a client that does not follow the cluster (redis-py raises them as
# ResponseErrors whose text is the bare reply, e.g. "9263 127.0.0.1:7201" for a MOVED).
CLUSTER_REPLIES = (AskError, ClusterDownError, TryAgainError, ClusterCrossSlotError)


def is_cluster_node_message(settings: Settings, node: str | None = None) -> str:
    """The one line for a one-node address that names a cluster node."""
    address = settings.redis_address
    seed = node or (f"{address.host}:{address.port}" if address.host else "host:port,...")
    where = "REDIS_URL" if settings.redis_url else "REDIS_HOST/REDIS_PORT"
    return (
        f"this Redis ({address.display()}) is a cluster node: set REDIS_CLUSTER_NODES={seed} "
        f"(any of its nodes) instead of {where}"
    )


def not_a_cluster(settings: Settings) -> RedisNotCluster:
    """The one line for REDIS_CLUSTER_NODES naming a Redis that is not in cluster mode."""
    assert settings.cluster is not None
    host, port = settings.cluster.nodes[0]
    return RedisNotCluster(
        f"REDIS_CLUSTER_NODES names a Redis that is not in cluster mode ({settings.cluster.display()}): "
        f"for one Redis set REDIS_URL=redis://{host}:{port}/<db> and unset REDIS_CLUSTER_NODES"
    )


def cluster_redirect(settings: Settings, exc: BaseException) -> RedisIsClusterNode | None:
    """`RedisIsClusterNode` when `exc` is a cluster's reply (MOVED, ASK, CLUSTERDOWN, ...) to a
    one-node client; None otherwise (on a configured cluster those are redis-py's to follow)."""
    if settings.cluster is not None or settings.sentinel is not None:
        return None
    message = cluster_reply_message(exc, settings)
    return RedisIsClusterNode(message) if message is not None else None


def cluster_reply_message(exc: BaseException, settings: Settings | None = None) -> str | None:
    """The one line for a cluster's reply to a client that does not follow a cluster, or None
    when `exc` is not one. Without settings the node named by a MOVED/ASK stands in as the seed node."""
    text = str(exc)
    if not isinstance(exc, CLUSTER_REPLIES) and not (
        isinstance(exc, ResponseError) and text.startswith(("MOVED ", "ASK ", "CLUSTERDOWN", "CROSSSLOT"))
    ):
        return None
    if settings is not None:
        return is_cluster_node_message(settings)
    # A MOVED/ASK reads "<slot> <host>:<port>" (redis-py drops the word).
    parts = text.removeprefix("MOVED ").removeprefix("ASK ").split()
    node = parts[1] if len(parts) == 2 and parts[0].isdigit() else "host:port,..."
    return (
        f"this Redis is a cluster node: set REDIS_CLUSTER_NODES={node} (any of its nodes) "
        "instead of REDIS_URL or REDIS_HOST/REDIS_PORT"
    )


# --- Bounded retries ---------------------------------------------------------
# bullmq-py gives every client `Retry(ExponentialBackoff(cap=20, base=1), 20)`: one command
# keeps retrying through a lost connection for about six minutes. bullwait bounds that by
# `BULLWAIT_REDIS_RETRY_TIMEOUT` so a producer fails with a clear error instead of hanging.

RETRY_BACKOFF_BASE = 0.05
RETRY_BACKOFF_CAP = 1.0
RETRYABLE_ERRORS = (RedisConnectionError, RedisTimeoutError, BusyLoadingError)


class BoundedRetry(Retry):
    """Retries lost connections, never refused credentials (redis-py counts those as
    connection errors, so bad credentials would otherwise be retried for the whole wait)."""

    timeout: float = 0.0

    async def call_with_retry(
        self, do: Any, fail: Any, is_retryable: Any = None, with_failure_count: bool = False
    ) -> Any:
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
    retry = BoundedRetry(ExponentialBackoff(cap=RETRY_BACKOFF_CAP, base=RETRY_BACKOFF_BASE), retries, RETRYABLE_ERRORS)
    retry.timeout = timeout  # what a cluster client retries for (FollowingCluster)
    return retry


def bound_retries(settings: Settings, *connections: Any) -> None:
    """Give bullmq `RedisConnection`s (or redis clients) bullwait's bounded retry."""
    retry = bounded_retry(settings.bullwait_redis_retry_timeout)
    for conn in connections:
        client = getattr(conn, "conn", conn)
        if client is not None and hasattr(client, "set_retry"):
            client.set_retry(retry)


# --- Blocking reads ------------------------------------------------------------
# redis-py 8 gives every connection a 5 s read timeout, and bullmq's marker wait (BZPOPMIN)
# blocks for up to 5 s when idle (drainDelay) and 10 s at most. The read timed out just as
# Redis answered, and the retry sent the same wait again, never reaching the fetch that
# follows a wait: a job whose wake-up marker was lost (its BZPOPMIN answer died with a
# restarting Redis) then sat in `wait` for minutes while its queue looked idle.
BLOCKING_READ_MARGIN = 10.0


def bound_blocking_reads(connection: Any, max_block_seconds: float) -> None:
    """Give a bullmq blocking connection a read timeout well above its longest wait."""
    set_read_timeout(connection, max_block_seconds + BLOCKING_READ_MARGIN)


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
    add_connection_mixin(connection, CancelSafeSend)


# --- Redis Sentinel ---------------------------------------------------------------
# With REDIS_SENTINELS every client is a redis-py Sentinel-managed one: each new connection
# asks the sentinels where the master is. redis-py moves a connection only after an error on
# it (READONLY becomes a ConnectionError in SentinelManagedConnection, and connection errors
# are retried): after a graceful failover the old master stays writable until the sentinels
# reconfigure it (~11 s here), and the worker's BZPOPMIN waits there. So, as ioredis's
# failoverDetector does, one task per process and event loop subscribes to `+switch-master`
# on every sentinel and disconnects every connection not on the new master; the commands in
# flight on them fail with a ConnectionError and redis-py's retry sends them again on a
# new connection, which asks the sentinels again (the BZPOPMIN included).
#
# Reliance on redis-py internals (redis/asyncio/sentinel.py, 8.1):
# - `SentinelConnectionPool.get_master_address()` is called for every new master connection:
#   the hook that starts the watcher and records whether a master was found.
# - A connection's `connection_pool` kwarg (a weak proxy to its pool) is how a connection
#   made outside the pool's lists (the autopipeline's, autopipeline.py) finds its pool; each
#   registers itself there so a switch reaches it too.
# - A dropped connection reconnects through `connect_check_health()` when the next command is
#   sent, not through `connect()`, which is all SentinelManagedConnection overrides: it went
#   back to the old master. `SentinelConnection` asks the sentinels there too.
# - `Sentinel.discover_master()` is replaced to believe the newest sentinel (`NewestSentinel`).
# - `Connection.disconnect()` from another task ends a read in progress with a ConnectionError
#   (checked on redis-py 8.1 with hiredis), which the command's retry turns into a resend.
#   One dropped between `send_packed_command`'s connected check and its write fails with an
#   AttributeError on the writer redis-py set to None; `SentinelConnection` makes that a
#   ConnectionError too.

SWITCH_CHANNEL = "+switch-master"
WATCH_RETRY_CAP = 5.0
# How much longer the other sentinels get once one has said where the master is.
SENTINEL_GRACE_S = 0.5
# How long a sentinel that missed the grace is not waited for.
LATE_FORGET_S = 30.0
UNREACHABLE_LOG_SECONDS = 1.0  # connections retry together: one line a second says it all


class SentinelConnection(SentinelManagedConnection):
    """A master connection its pool can find and move, wherever it was made."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.connection_pool.track(self)

    async def connect(self) -> None:
        await self.retry.call_with_retry(
            lambda: self.connect_check_health(
                check_health=self.connection_pool.check_connection, retry_socket_connect=False
            ),
            lambda error: asyncio.sleep(0),
        )

    async def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        # redis-py 8.1 asks the sentinels only in `connect()`, but a command sent on a dropped
        # connection reconnects through this method, to the address it had: the old master.
        if self.is_connected:
            return
        watcher = FailoverWatcher.current(self.connection_pool.watch)
        try:
            if self.connection_pool.is_master:
                self.host, self.port = await self.connection_pool.get_master_address()
            await super().connect_check_health(check_health=check_health, retry_socket_connect=retry_socket_connect)
        except (RedisError, OSError) as exc:
            if watcher is not None and not isinstance(exc, AuthenticationError):
                watcher.note_unreachable(exc, f"{self.host}:{self.port}")
            raise
        if watcher is not None:
            watcher.note_reachable(f"{self.host}:{self.port}")

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        try:
            await super().send_packed_command(command, check_health)
        except AttributeError as exc:
            # `FollowingPool.follow` dropped this connection after redis-py checked it was
            # connected and before it wrote (its writer is then None): nothing left, so say
            # so as a lost connection, which the command's retry sends again on the new master.
            if self.is_connected or "NoneType" not in str(exc):
                raise
            raise RedisConnectionError("connection moved to the new master before the command was sent") from None


class SentinelSSLConnection(SentinelConnection, SSLConnection):
    pass


class NewestSentinel(Sentinel):
    """Asks every sentinel and believes the one with the newest configuration.

    redis-py takes the first sentinel that answers; right after `+switch-master` the others
    may still name the old master for a second or two (they learn it from the leader's
    hellos), and a connection moved by the switch went straight back to the old master,
    still writable. The `config-epoch` of SENTINEL MASTERS orders their views."""

    # Sentinels ("host:port") that missed the grace when a client last asked them, and when.
    late: ClassVar[dict[str, float]] = {}

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        replies = await self._ask_all()
        errors = []
        best: tuple[int, tuple[str, int]] | None = None
        for sentinel, reply in zip(self.sentinels, replies):
            if isinstance(reply, BaseException):
                if not isinstance(reply, (RedisError, OSError)):
                    raise reply
                errors.append(f"{sentinel} - {reply!r}")
                continue
            state = cast(dict[str, dict[str, Any]], reply).get(service_name)
            if state and self.check_master_state(state, service_name):
                epoch = int(state.get("config-epoch", 0) or 0)
                if best is None or epoch > best[0]:
                    best = (epoch, (str(state["ip"]), int(state["port"])))
        if best is None:
            detail = f" : {', '.join(errors)}" if errors else ""
            raise MasterNotFoundError(f"No master found for {service_name!r}{detail}")
        return best[1]

    async def _ask_all(self) -> list[Any]:
        """Each sentinel's SENTINEL MASTERS (or its error). Once one has answered, the others get
        SENTINEL_GRACE_S more, and one that missed it in the last LATE_FORGET_S none: a frozen
        or cut-off sentinel would otherwise hold up every connection to the master for the
        whole socket timeout. It is still asked, and counts again once it answers in time."""
        tasks = [asyncio.ensure_future(s.sentinel_masters()) for s in self.sentinels]
        pending = set(tasks)
        while pending and not any(t.done() and t.exception() is None for t in tasks):
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        names = [_address(s) for s in self.sentinels]
        now = time.monotonic()
        awaited = {t for t, name in zip(tasks, names) if t in pending and not self._is_late(name, now)}
        if awaited:
            await asyncio.wait(awaited, timeout=SENTINEL_GRACE_S)
        for task, name in zip(tasks, names):
            if task.done():
                self.late.pop(name, None)
            else:
                if task in awaited:  # given the grace and missed it: not waited for a while
                    self.late[name] = now
                task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return [_outcome(task) for task in tasks]

    def _is_late(self, name: str, now: float) -> bool:
        return name in self.late and now - self.late[name] < LATE_FORGET_S


def _address(client: aioredis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"{kwargs.get('host')}:{kwargs.get('port')}"


def _outcome(task: asyncio.Future[Any]) -> Any:
    if task.cancelled():
        return RedisTimeoutError(f"no answer within {SENTINEL_GRACE_S} s of the first sentinel's")
    return task.exception() or task.result()


class FollowingPool(SentinelConnectionPool):
    """A Sentinel pool whose connections follow `+switch-master` (see `FailoverWatcher`)."""

    def __init__(self, service_name: str, sentinel_manager: Sentinel, watch: WatchConfig, **kwargs: Any) -> None:
        kwargs.setdefault("connection_class", SentinelSSLConnection if kwargs.pop("ssl", False) else SentinelConnection)
        # Until the sentinels name the master a connection has no address: never redis-py's
        # default localhost:6379, which may be another Redis (port 0 refuses at once).
        kwargs.setdefault("host", "127.0.0.1")
        kwargs.setdefault("port", 0)
        super().__init__(service_name, sentinel_manager, **kwargs)
        self.watch = watch
        self.tracked: weakref.WeakSet[Any] = weakref.WeakSet()

    def track(self, conn: Any) -> None:
        self.tracked.add(conn)

    async def get_master_address(self) -> Any:
        watcher = FailoverWatcher.ensure(self.watch)
        watcher.pools.add(self)
        return await super().get_master_address()

    async def follow(self, address: tuple[str, int]) -> int:
        """Disconnect every connection that is not on `address`; returns how many were."""
        self.master_address = address
        moved = 0
        for conn in list(self.tracked):
            if conn.is_connected and (conn.host, int(conn.port)) != address:
                moved += 1
                # nowait: the old master may be gone; the read in progress ends at once.
                await conn.disconnect(nowait=True)
        return moved

    async def aclose(self) -> None:
        watcher = FailoverWatcher.current(self.watch)
        if watcher is not None:
            watcher.pools.discard(self)
        try:
            await super().aclose()
        finally:
            await self.sentinel_manager.aclose()


@dataclass(frozen=True)
class WatchConfig:
    """Where to hear about failovers: the sentinels, how to log in to them, the master's name."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    kwargs: tuple[tuple[str, Any], ...]  # sentinel client kwargs, hashable

    def client(self, host: str, port: int) -> aioredis.Redis:
        return aioredis.Redis(host=host, port=port, decode_responses=True, **dict(self.kwargs))


def _sentinel_kwargs(settings: Settings) -> dict[str, Any]:
    """Sentinel clients: their own credentials, TLS as for the data nodes, no retries (the next
    sentinel is asked instead), timeouts of a connect."""
    kwargs: dict[str, Any] = {
        "socket_timeout": settings.redis_connect_timeout,
        "socket_connect_timeout": settings.redis_connect_timeout,
        "socket_keepalive": True,
        "retry": Retry(NoBackoff(), 0),
    }
    if settings.redis_sentinel_username:
        kwargs["username"] = settings.redis_sentinel_username
    if settings.redis_sentinel_password:
        kwargs["password"] = settings.redis_sentinel_password
    if settings.redis_tls_ca_file:
        kwargs.update(ssl=True, ssl_ca_certs=settings.redis_tls_ca_file, ssl_cert_reqs=ssl.CERT_REQUIRED)
    return kwargs


def watch_config(settings: Settings) -> WatchConfig:
    topology = settings.sentinel
    assert topology is not None
    return WatchConfig(topology.sentinels, topology.master, tuple(sorted(_sentinel_kwargs(settings).items(), key=str)))


def sentinel_client(settings: Settings, single_connection: bool = False, **extra: Any) -> aioredis.Redis:
    """A client of the master the sentinels name, following failovers (see above)."""
    topology = settings.sentinel
    assert topology is not None
    extra.pop("retry_on_timeout", None)  # a client argument redis-py ignores with a pool given
    opts = _node_options(settings, {"db": topology.db})
    opts.update(extra)
    opts.setdefault("decode_responses", True)
    # What redis.asyncio.Redis() gives its own pool: with a pool given it reads these from the pool.
    opts.setdefault("retry", Retry(ExponentialWithJitterBackoff(base=1, cap=10), 3))
    watch = watch_config(settings)
    manager = NewestSentinel(list(topology.sentinels), sentinel_kwargs=dict(watch.kwargs))
    pool = FollowingPool(topology.master, manager, watch, **opts)
    client = aioredis.Redis(connection_pool=pool, single_connection_client=single_connection)
    client.auto_close_connection_pool = True  # as `Redis.from_pool`: closing the client closes the pool
    return client


class FailoverWatcher:
    """Subscribes to `+switch-master` on every sentinel, as ioredis's failoverDetector does, so
    one sentinel down, frozen or cut off does not blind it; on a switch of our master, moves
    every connection of this event loop's pools (`FollowingPool.follow`).

    Every sentinel announces a switch (the leader at once, the others as they learn it), so
    one switch arrives up to once per sentinel: an announcement of the master already
    followed is dropped. The announced address only decides which connections to drop; where
    each reconnects is asked of the sentinels again (`NewestSentinel`: the newest epoch wins)."""

    _running: ClassVar[dict[tuple[int, WatchConfig], FailoverWatcher]] = {}

    def __init__(self, config: WatchConfig) -> None:
        self.config = config
        self.pools: weakref.WeakSet[FollowingPool] = weakref.WeakSet()
        self.master: tuple[str, int] | None = None
        self.unreachable: str | None = None
        self.switches = 0
        self.listening: set[tuple[str, int]] = set()  # sentinels subscribed right now
        self.stopping = False  # set, with no await between, when the last pool is gone
        self._last_line = float("-inf")
        self._suppressed = 0
        self._silent_since: float | None = None
        self._lock = asyncio.Lock()
        self.loop = asyncio.get_running_loop()
        self.task = self.loop.create_task(self._run(), name="bullwait-sentinel-watcher")

    @classmethod
    def current(cls, config: WatchConfig) -> FailoverWatcher | None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        watcher = cls._running.get((id(loop), config))
        return watcher if watcher is not None and watcher.loop is loop else None

    @classmethod
    def ensure(cls, config: WatchConfig) -> FailoverWatcher:
        watcher = cls.current(config)
        if watcher is None or watcher.stopping or watcher.task.done():
            for key, old in list(cls._running.items()):  # drop watchers of closed loops
                if old.loop.is_closed():
                    del cls._running[key]
            watcher = cls(config)
            cls._running[(id(watcher.loop), config)] = watcher
        return watcher

    def note_unreachable(self, exc: BaseException, address: str) -> None:
        """One line per attempt to reach the master, however many connections try at once."""
        if isinstance(exc, MasterNotFoundError):
            reason = "no sentinel names a master that is up (down, failing over, or every sentinel silent)"
        else:
            reason = f"master {address}: {short_reason(exc)}"
        self.unreachable = reason
        now = self.loop.time()
        self._suppressed += 1
        if now - self._last_line >= UNREACHABLE_LOG_SECONDS:
            _log().warning(
                "redis master unreachable, retrying", master=self.config.master, error=reason, attempts=self._suppressed
            )
            self._last_line = now
            self._suppressed = 0

    def note_reachable(self, address: str) -> None:
        if self.unreachable is not None:
            self.unreachable = None
            self._suppressed = 0
            _log().info("redis master reachable again", master=self.config.master, at=address)

    async def switch(self, address: tuple[str, int], announced: bool, via: str = "") -> None:
        # One at a time: the same switch announced by several sentinels moves connections once.
        async with self._lock:
            if announced and address == self.master:
                return
            moved = 0
            for pool in list(self.pools):
                moved += await pool.follow(address)
            if announced or moved:
                self.switches += 1
                source = SWITCH_CHANNEL if announced else "sentinel"
                _log().warning(
                    "redis master switched, connections moved",
                    master=self.config.master,
                    to=f"{address[0]}:{address[1]}",
                    moved=moved,
                    source=source,
                    via=via,
                )
            self.master = address

    async def _run(self) -> None:
        listeners = [
            self.loop.create_task(self._keep_listening(host, port), name=f"bullwait-sentinel-{host}:{port}")
            for host, port in self.config.sentinels
        ]
        try:
            while self.pools and not all(task.done() for task in listeners):
                await asyncio.sleep(1.0)
        finally:
            # A pool that asks for a master from here on gets a new watcher (`ensure`).
            self.stopping = True
            for task in listeners:
                task.cancel()
            await asyncio.gather(*listeners, return_exceptions=True)
            FailoverWatcher._running.pop((id(self.loop), self.config), None)

    async def _keep_listening(self, host: str, port: int) -> None:
        """Listen on one sentinel until every client is closed, reconnecting with back-off."""
        delay = 0.2
        while not self.stopping:
            try:
                await self._listen(host, port)
                delay = 0.2
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self.listening.discard((host, port))
                self._note_silent(host, port, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, WATCH_RETRY_CAP)
        self.listening.discard((host, port))

    def _note_silent(self, host: str, port: int, exc: BaseException, delay: float) -> None:
        """A line when no sentinel is listened to, then at most one per WATCH_RETRY_CAP."""
        if self.listening:
            self._silent_since = None
            return
        now = self.loop.time()
        if self._silent_since is not None and now - self._silent_since < WATCH_RETRY_CAP:
            return
        self._silent_since = now
        _log().warning(
            "no sentinel answers for failover notices, retrying",
            sentinels=len(self.config.sentinels),
            last=f"{host}:{port}",
            error=short_reason(exc),
            retry_in=f"{delay:.1f}s",
        )

    async def _listen(self, host: str, port: int) -> None:
        client = self.config.client(host, port)
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(SWITCH_CHANNEL)
            self.listening.add((host, port))
            # A switch may have happened before we listened (start-up, this sentinel back).
            manager = NewestSentinel(list(self.config.sentinels), sentinel_kwargs=dict(self.config.kwargs))
            try:
                current = await manager.discover_master(self.config.master)
            except MasterNotFoundError:
                pass  # the connections that need a master say so (note_unreachable)
            else:
                await self.switch(current, announced=False)
            finally:
                await manager.aclose()
            while not self.stopping:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is None:
                    await pubsub.ping()  # a sentinel that went away is noticed here, not never
                    continue
                parts = str(message.get("data", "")).split()
                if len(parts) == 5 and parts[0] == self.config.master:
                    await self.switch((parts[3], int(parts[4])), announced=True, via=f"{host}:{port}")
        finally:
            self.listening.discard((host, port))
            await pubsub.aclose()
            await client.aclose()


def _log() -> Any:
    from bullwait.logs import get_logger

    return get_logger()


# --- What the sentinels say (doctor, stats) ----------------------------------------------------


@dataclass
class SentinelView:
    address: str
    answering: bool
    error: str = ""


@dataclass
class ReplicaView:
    address: str
    link: str  # the sentinels' master-link-status: ok | err
    lag_seconds: int | None  # since the replica's last ack, from the master's INFO replication
    behind_bytes: int | None  # master_repl_offset minus the replica's offset

    def describe(self) -> str:
        lag = "lag unknown" if self.lag_seconds is None else f"lag {self.lag_seconds} s"
        behind = "" if self.behind_bytes is None else f", {self.behind_bytes} bytes behind"
        return f"{self.address} (link {self.link}, {lag}{behind})"


@dataclass
class Topology:
    master_name: str
    sentinels: list[SentinelView]
    master: str | None = None
    replicas: list[ReplicaView] | None = None

    @property
    def answering(self) -> int:
        return sum(s.answering for s in self.sentinels)

    def summary(self) -> str:
        """One line: the master, its replicas and their lag, how many sentinels answer."""
        replicas = ", ".join(r.describe() for r in self.replicas or []) or "none"
        return (
            f"Redis Sentinel {self.master_name!r}: master {self.master or 'unknown'}; replicas {replicas}; "
            f"sentinels answering {self.answering}/{len(self.sentinels)}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "masterName": self.master_name,
            "master": self.master,
            "sentinels": [vars(s) for s in self.sentinels],
            "replicas": [vars(r) for r in self.replicas or []],
        }


async def read_topology(settings: Settings, master_client: aioredis.Redis | None = None) -> Topology | None:
    """The Sentinel topology (None without Sentinel): each sentinel asked, the newest one believed,
    replica lag from the master's INFO replication when `master_client` is given."""
    topology = settings.sentinel
    if topology is None:
        return None
    config = watch_config(settings)
    views: list[SentinelView] = []
    best: tuple[int, dict[str, Any], list[dict[str, Any]]] | None = None
    for host, port in topology.sentinels:
        client = config.client(host, port)
        address = f"{host}:{port}"
        try:
            master = await client.sentinel_master(topology.master)
            replicas = await client.sentinel_slaves(topology.master)
        except (RedisError, OSError) as exc:
            views.append(SentinelView(address, False, short_reason(exc)))
            continue
        finally:
            await client.aclose()
        views.append(SentinelView(address, True))
        master = cast(dict[str, Any], master)
        epoch = int(master.get("config-epoch", 0) or 0)
        if best is None or epoch > best[0]:
            best = (epoch, master, replicas)
    view = Topology(topology.master, views)
    if best is None:
        return view
    _, master, replicas = best
    view.master = f"{master['ip']}:{master['port']}"
    acks = await _replica_acks(master_client)
    offset = acks.pop("", None)
    view.replicas = []
    for replica in replicas:
        address = f"{replica['ip']}:{replica['port']}"
        lag, replica_offset = acks.get(address, (None, None))
        behind = offset - replica_offset if offset is not None and replica_offset is not None else None
        link = str(replica.get("master-link-status", "unknown"))
        if replica.get("is_sdown") or replica.get("is_odown"):
            link = "down"
        view.replicas.append(ReplicaView(address, link, lag, behind))
    return view


async def _replica_acks(client: aioredis.Redis | None) -> dict[str, Any]:
    """`ip:port` -> (seconds since its last ack, its offset), and "" -> the master's offset."""
    if client is None:
        return {}
    try:
        info = await client.info("replication")
    except (RedisError, OSError):
        return {}
    acks: dict[str, Any] = {"": int(info.get("master_repl_offset", 0))}
    for key, value in info.items():
        if key.startswith("slave") and isinstance(value, dict):
            acks[f"{value.get('ip')}:{value.get('port')}"] = (int(value.get("lag", 0)), int(value.get("offset", 0)))
    return acks


# --- A cluster client ready before concurrent use ---------------------------------------------
# redis-py's RedisCluster reads the slot map on its first command. Commands started together
# on a fresh client (a worker's first burst of jobs) raced that first read: some ran on a
# connection another task had just disconnected ("'NoneType' object has no attribute
# 'writelines'", seen on 3 of 300 calls). Reading the map once, first, avoids it.


async def cluster_ready(*clients: Any) -> None:
    """Read the slot map of each cluster client (or bullmq Queue/Worker on one) now; others: no-op."""
    for client in clients:
        target = main_client(client) if hasattr(client, "backend") else client
        if isinstance(target, RedisCluster):
            await target.initialize()
