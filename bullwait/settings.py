"""Configuration from the environment (and an optional `.env`), with the NestJS module's names.

Every field is read from the upper-case environment variable of the same name, so
`redis_queue_db` is `REDIS_QUEUE_DB`. A bad value raises `SettingsError`, whose message
names the variable; the CLI turns it into one line on stderr and exit code 2.

Where Redis is (`REDIS_URL`, or `REDIS_HOST`/`REDIS_PORT`/`REDIS_QUEUE_DB`) is parsed once,
here, into a `RedisAddress` that every entry point connects with and shows (password
masked). urllib and redis-py raise tracebacks that quote the password on a malformed URL
(an unencoded `#` in it becomes the "port"), and silently read `/abc` as db 0: a URL is
therefore checked part by part, and every refusal is one line that never repeats it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from functools import cached_property
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bullwait.errors import SettingsError
from bullwait.logs import SECRET_KEYS, redact_text

LogLevel = Literal["debug", "info", "warning", "error", "critical"]


class QueueNaming(str, Enum):
    """Which queue names to use: colon-free (current), the NestJS module's (legacy, Node bullmq 4.x),
    or the current ones each in its own hash tag (tagged), so on a Redis Cluster each queue's
    keys hash by its name and the queues can sit on different shards under an untagged prefix."""

    CURRENT = "current"
    LEGACY = "legacy"
    TAGGED = "tagged"


URL_FORM = "redis://[user:password@]host:port/db"
_PERCENT_HINT = "percent-encode them (# as %23, / as %2F, ? as %3F, @ as %40, % as %25)"
MAX_DB = 2**31 - 1
# Query options handed to redis-py besides those its own URL parser types (db, socket_timeout,
# ...): any other name would reach redis.Redis() as an unknown keyword and raise there.
_TEXT_OPTIONS = frozenset({"username", "password", "ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile"})
# redis-py types `timeout` but redis.Redis() has no such argument.
_UNSUPPORTED_OPTIONS = frozenset({"timeout"})


# REDIS_SENTINELS and REDIS_CLUSTER_NODES are refused with the same words by node-compat/lib/config.js
# (tests/compat/test_compat_settings.py runs both on one table): keep the two in step.
SENTINELS_FORM = "host:port,host:port,... e.g. 10.0.0.1:26379,10.0.0.2:26379,10.0.0.3:26379"
CLUSTER_FORM = "host:port,host:port,... e.g. 10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7000"
# A host name or IPv4 address, or an IPv6 one (optionally with a zone) in brackets. Anything else
# ('?', '#', ';', white space, ...) is a typo or part of a URL, refused rather than looked up.
_NODE_HOST = re.compile(r"([A-Za-z0-9._-]+)|\[([0-9A-Fa-f.]*:[0-9A-Fa-f:.]*(?:%[A-Za-z0-9._-]+)?)\]")
# BullMQ's prefix on a cluster when BULLMQ_PREFIX is unset: the tag puts every queue's keys on one slot.
CLUSTER_DEFAULT_PREFIX = "{bull}"
# ... and with BULLWAIT_QUEUE_NAMES=tagged: untagged, so each queue's own tag places its keys.
CLUSTER_TAGGED_DEFAULT_PREFIX = "bull"


class BadRedisUrl(ValueError):
    """A REDIS_URL that cannot be used; the message is one line and never holds the URL."""


@dataclass(frozen=True)
class RedisAddress:
    """Where Redis is and how to log in: one parse of REDIS_URL (or REDIS_HOST/PORT/QUEUE_DB)."""

    scheme: str  # redis | rediss | unix
    host: str | None
    port: int | None
    socket_path: str | None
    db: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    options: dict[str, Any] = field(default_factory=dict, repr=False)  # typed query options

    def display(self) -> str:
        """The address for messages and logs, with the password masked, the db always shown."""
        if self.scheme == "unix":
            return f"unix://{self.socket_path}?db={self.db}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        if self.password is not None or self.options.get("password"):
            # A user name without a password is most often a password that lost its ':'.
            login = f"{self.username or ''}:***@"
        else:
            login = "***@" if self.username else ""
        return f"{self.scheme}://{login}{host}:{self.port}/{self.db}"

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `redis.asyncio.Redis` (TLS from `rediss://` included)."""
        kwargs: dict[str, Any] = dict(self.options)
        if self.scheme == "unix":
            kwargs["unix_socket_path"] = self.socket_path
        else:
            kwargs.update(host=self.host, port=self.port)
        kwargs["db"] = self.db
        if self.username:
            kwargs["username"] = self.username
        if self.password is not None:
            kwargs["password"] = self.password
        if self.scheme == "rediss":
            kwargs["ssl"] = True
        return kwargs


@dataclass(frozen=True)
class ClusterTopology:
    """A Redis Cluster found from seed nodes: REDIS_CLUSTER_NODES (database 0 only)."""

    nodes: tuple[tuple[str, int], ...]

    def display(self) -> str:
        """For messages and logs: the seed nodes (no credentials)."""
        nodes = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.nodes)
        return f"cluster://{nodes}"


@dataclass(frozen=True)
class SentinelTopology:
    """A master found through Redis Sentinel: REDIS_SENTINELS and REDIS_SENTINEL_MASTER."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int

    def display(self) -> str:
        """For messages and logs: the sentinels, the master's name and the db (no credentials)."""
        nodes = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.sentinels)
        return f"sentinel://{nodes}/{self.master}/{self.db}"


def parse_sentinels(value: str) -> tuple[tuple[str, int], ...]:
    """`host:port,host:port,...` (IPv6 as `[::1]:26379`); raise ValueError saying what to change."""
    return _parse_nodes(
        value, SENTINELS_FORM, 26379, "sentinel credentials go in REDIS_SENTINEL_USERNAME/REDIS_SENTINEL_PASSWORD"
    )


def parse_cluster_nodes(value: str) -> tuple[tuple[str, int], ...]:
    """REDIS_CLUSTER_NODES, read as REDIS_SENTINELS is; raise ValueError saying what to change."""
    return _parse_nodes(value, CLUSTER_FORM, 7000, "credentials go in REDIS_USERNAME/REDIS_PASSWORD")


def _parse_nodes(value: str, form: str, port: int, login_hint: str) -> tuple[tuple[str, int], ...]:
    nodes = [_parse_node(entry.strip(), n, form, port, login_hint) for n, entry in enumerate(value.split(","), 1)]
    return tuple(dict.fromkeys(nodes))


def _parse_node(entry: str, n: int, form: str, example_port: int, login_hint: str) -> tuple[str, int]:
    if not entry:
        raise ValueError(f"entry {n} is empty (a stray comma?); write {form}")
    if "://" in entry or "@" in entry:  # may hold a password: never repeated
        raise ValueError(f"entry {n} is a URL or holds a login, not host:port; write {form} ({login_hint})")
    shown = f"entry {n} {_quoted(entry[:60])}"
    host, sep, port = entry.rpartition(":")
    if ":" in host and not host.startswith("["):
        # `::1:7000` could be [::1]:7000 or [::1:7000] with the port left out: not guessed.
        raise ValueError(f"{shown} has more than one ':'; put an IPv6 address in brackets, e.g. [::1]:{example_port}")
    match = _NODE_HOST.fullmatch(host) if sep else None
    if match is None:
        raise ValueError(f"{shown} is not host:port (a host is letters, digits, '.', '-', '_'); write {form}")
    if not port.isascii() or not port.isdigit() or len(port) > 5 or not 1 <= int(port) <= 65535:
        raise ValueError(f"{shown}: the port must be a number from 1 to 65535; write {form}")
    return match.group(1) or match.group(2), int(port)


def _quoted(text: str) -> str:
    """A value in a message, quoted as node-compat/lib/config.js quotes it (JSON), so that the two
    sides' messages are the same text."""
    return json.dumps(text, ensure_ascii=False)


def has_hash_tag(prefix: str) -> bool:
    """True when keys starting with `prefix` hash by a tag in it (`{...}` with something inside),
    as Redis Cluster reads one: from the first '{' to the next '}'."""
    start = prefix.find("{")
    end = prefix.find("}", start + 1) if start >= 0 else -1
    return start >= 0 and end > start + 1


def parse_redis_url(url: str) -> RedisAddress:
    """Check a Redis URL part by part; raise `BadRedisUrl` saying what to change.

    The URL is never repeated in a message: it may hold a password.
    """
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise BadRedisUrl("contains white space or a control character (a newline from a secret file?); remove it")
    scheme, sep, rest = url.partition("://")
    if sep and "sentinel" in scheme.lower():
        raise BadRedisUrl(
            "a Sentinel URL is not read here: unset REDIS_URL and set REDIS_SENTINELS=host:port,... "
            "and REDIS_SENTINEL_MASTER (docs/sentinel.md)"
        )
    if not sep or scheme.lower() not in ("redis", "rediss", "unix"):
        raise BadRedisUrl(f"must start with redis://, rediss:// or unix://, as in {URL_FORM}")
    scheme = scheme.lower()
    # A query (after a path) may hold '@' (`?password=a@b`), and so may a socket path.
    query_at = rest.find("?")
    tail = rest[:query_at] if query_at >= 0 and "/" in rest[:query_at] else rest
    login, at, _ = tail.rpartition("@")
    if scheme != "unix" and at and any(ch in login for ch in "/?#"):
        raise BadRedisUrl(
            f"the user name or password holds '/', '?' or '#', which end a URL's login part: {_PERCENT_HINT}"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise BadRedisUrl(_host_port_problem(_netloc(rest))) from None
    if parts.fragment:
        raise BadRedisUrl("has a '#' (a URL fragment); if it belongs to the password, write it as %23")
    options, query_db = _query_options(parts.query)
    username = unquote(parts.username) if parts.username else options.pop("username", None)
    password = unquote(parts.password) if parts.password is not None else options.pop("password", None)
    if scheme == "unix":
        if not parts.path or parts.path == "/":
            raise BadRedisUrl("unix:// needs the socket's path, e.g. unix:///run/redis/redis.sock?db=1")
        return RedisAddress(scheme, None, None, unquote(parts.path), query_db or 0, username, password, options)
    if not parts.hostname:
        raise BadRedisUrl(f"names no host; use {URL_FORM}, e.g. redis://localhost:6379/1")
    if port == 0:
        raise BadRedisUrl("port must be a number from 1 to 65535 (got 0)")
    db = _path_db(parts.path)
    if query_db is not None and db is not None and query_db != db:
        raise BadRedisUrl(f"names two databases ({db} in the path, {query_db} in ?db=); give it once, e.g. {URL_FORM}")
    db = query_db if query_db is not None else db
    return RedisAddress(scheme, parts.hostname, port or 6379, None, db or 0, username, password, options)


def _netloc(rest: str) -> str:
    """The host:port part after `scheme://` (login removed), for messages about it."""
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    return netloc.rpartition("@")[2]


def _host_port_problem(hostport: str) -> str:
    if hostport.count("[") != hostport.count("]"):
        return f"an IPv6 address needs both brackets, e.g. redis://[::1]:6379/1 ({URL_FORM})"
    if "[" not in hostport and hostport.count(":") > 1:
        return f"an IPv6 address goes in brackets, e.g. redis://[::1]:6379/1 ({URL_FORM})"
    port = hostport.rpartition("]")[2].rpartition(":")[2] if "]" in hostport else hostport.rpartition(":")[2]
    if port.isdigit():
        return f"port must be a number from 1 to 65535 (got {int(port)})"
    return f"the port is not a number; use {URL_FORM} (if ':' belongs to a password, add the '@' before the host)"


def _path_db(path: str) -> int | None:
    """The database number after the host: None when there is no path."""
    text = path[1:] if path.startswith("/") else path
    if not text:
        return None
    if not text.isdigit() or not text.isascii() or int(text) > MAX_DB:
        shown = _quoted(unquote(text)[:40])
        raise BadRedisUrl(
            f"the path {shown} is not a database number; end the URL with /<db>, e.g. redis://localhost:6379/1"
        )
    return int(text)


def redis_url_options() -> frozenset[str]:
    """The option names a REDIS_URL may carry after '?' (node-compat/lib/config.js accepts the same)."""
    from redis.asyncio.connection import URL_QUERY_ARGUMENT_PARSERS

    return frozenset(URL_QUERY_ARGUMENT_PARSERS).union(_TEXT_OPTIONS) - _UNSUPPORTED_OPTIONS


def _query_options(query: str) -> tuple[dict[str, Any], int | None]:
    """Query options typed as redis-py types them; unknown names refused by name."""
    from redis.asyncio.connection import URL_QUERY_ARGUMENT_PARSERS

    options: dict[str, Any] = {}
    db = None
    known = redis_url_options()
    for name, values in parse_qs(query, keep_blank_values=True).items():
        parser = URL_QUERY_ARGUMENT_PARSERS.get(name)
        if name not in known:
            raise BadRedisUrl(
                f"unknown option {_quoted(name[:40])} after '?'; only redis-py's URL options work "
                "(db, socket_timeout, socket_connect_timeout, ssl_cert_reqs, ...)"
            )
        value = values[-1]
        if parser is None:
            options[name] = value
            continue
        try:
            options[name] = parser(value)
        except (TypeError, ValueError):
            raise BadRedisUrl(f"option {name!r} after '?' has a value of the wrong type") from None
    if "db" in options:
        db = options.pop("db")
        if not 0 <= db <= MAX_DB:
            raise BadRedisUrl(f"?db= must be a database number from 0 to {MAX_DB} (got {db})")
    return options, db


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        case_sensitive=False,
        extra="ignore",
        frozen=True,
        # "inf" and "nan" parse as floats: refused, as every number must be one a timer can hold.
        allow_inf_nan=False,
    )

    # --- Redis (the NestJS module's names, plus URL and credentials) ---
    redis_url: str | None = None
    redis_host: str = "localhost"
    redis_port: int = Field(6379, ge=1, le=65535)
    redis_queue_db: int = Field(1, ge=0, le=MAX_DB)
    redis_username: str | None = None
    redis_password: str | None = None
    redis_tls_ca_file: str | None = None
    redis_connect_timeout: float = Field(3.0, gt=0)
    # Redis Sentinel: the sentinels to ask where the master is, instead of one address.
    # REDIS_USERNAME/REDIS_PASSWORD/REDIS_QUEUE_DB/REDIS_TLS_CA_FILE apply to the master and replicas.
    redis_sentinels: str | None = None
    redis_sentinel_master: str = Field("mymaster", min_length=1)
    redis_sentinel_username: str | None = None
    redis_sentinel_password: str | None = None
    # Redis Cluster: seed nodes (any of its nodes); the rest are found from them. ACL and TLS
    # (REDIS_USERNAME/PASSWORD/REDIS_TLS_CA_FILE) apply to every node; the db is 0.
    redis_cluster_nodes: str | None = None
    bullmq_prefix: str = Field("bull", min_length=1)
    bullwait_queue_names: QueueNaming = QueueNaming.CURRENT

    # --- Concurrency and limits (seed defaults) ---
    waitlist_expiry_concurrency: int = Field(5, ge=1, le=10_000)
    # 80 msg/s at 150 ms API latency needs >= 16 in flight (docs/waitlist.md, Rate limits); the NestJS module had 10.
    waitlist_notification_concurrency: int = Field(20, ge=1, le=10_000)
    preference_calculation_concurrency: int = Field(2, ge=1, le=10_000)
    waitlist_notification_rate_limit: int = Field(10, ge=1)
    waitlist_notification_rate_window_ms: int = Field(60_000, ge=1)

    # --- Monitoring and logs ---
    queue_monitoring_enabled: bool = True
    queue_log_level: LogLevel = "info"
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(9090, ge=0, le=65535)
    health_max_failed: int = Field(100, ge=1)

    # --- Worker process ---
    bullwait_worker_name: str | None = None
    bullwait_shutdown_timeout: float = Field(30.0, ge=0)

    # --- Waitlist domain: store, offers, WhatsApp Cloud API ---
    # Keys of bullwait's own waitlist store; each salon's/customer's keys share a hash tag.
    bullwait_store_prefix: str = Field("bullwait:", min_length=1)
    # How long a customer has to take an offered slot (the expiry timer).
    waitlist_offer_minutes: float = Field(15.0, gt=0, le=7 * 24 * 60)
    whatsapp_api_base_url: str = "https://graph.facebook.com"
    whatsapp_api_version: str = Field("v21.0", pattern=r"^v\d+\.\d+$")
    whatsapp_phone_number_id: str | None = None
    # Secret: never logged, never shown in errors. Unset -> console sender (logs, sends nothing).
    whatsapp_access_token: SecretStr | None = None
    whatsapp_template_name: str = Field("slot_available", min_length=1)
    whatsapp_template_language: str = Field("en_US", min_length=2)
    whatsapp_timeout_seconds: float = Field(10.0, gt=0, le=300)
    # Cloud API default throughput: at most this many sends in any sliding second, across
    # all workers (bullwait.waitlist.ratelimit, on Redis's clock).
    whatsapp_max_messages_per_second: int = Field(80, ge=1, le=10_000)
    # Both send windows (global 1 s, per salon) are kept this much longer than nominal, for
    # the hop between taking a place and the request reaching the API (bullwait.waitlist.ratelimit).
    whatsapp_rate_window_margin_ms: int = Field(25, ge=0, le=1000)

    # --- Monitoring server and BullMQ metrics (QUEUE_MONITORING_ENABLED, METRICS_HOST,
    # METRICS_PORT and HEALTH_MAX_FAILED are above) ---
    # Per-minute data points BullMQ keeps in `<prefix>:<queue>:metrics:completed|failed`
    # (10080 = one week, Node's MetricsTime.ONE_WEEK); 0 = workers record no BullMQ metrics.
    bullmq_metrics_max_data_points: int = Field(10080, ge=0, le=1_000_000)
    # Seconds a scrape or health check waits for Redis before answering 503 / redis_up 0.
    health_redis_timeout: float = Field(2.0, gt=0, le=60)
    # Seconds a worker loop may keep failing (every fetch and completion, any cause) before
    # /health/live answers 503, so a supervisor restarts or replaces the process.
    health_live_failing_seconds: float = Field(30.0, gt=0, le=3600)

    # --- Reliability: stalled-job recovery, Redis retries, extra processors ---
    # A job whose worker died is taken back after its lock expires (lockDuration) by the
    # next stalled check (stalledInterval); the BullMQ defaults are 30 s each.
    bullwait_lock_duration_ms: int = Field(30_000, ge=100)
    bullwait_stalled_interval_ms: int = Field(30_000, ge=100)
    # How often one job may be recovered as stalled before it is failed instead.
    bullwait_max_stalled_count: int = Field(1, ge=0)
    # How long one Redis command keeps retrying through a lost connection before
    # bullwait gives up on it (the producer then raises RedisUnavailable; a worker logs
    # and tries again). bullmq-py alone retries for about six minutes.
    bullwait_redis_retry_timeout: float = Field(20.0, ge=0)
    # Extra processors for `bullwait worker`: `module:function[,module:function]`; each
    # function gets the Registry and registers into it (or returns a Registry).
    bullwait_processors: str | None = None

    # --- Durable writes: adds, send claims and store transitions wait for this
    # many replicas (`WAIT`); 0 = no WAIT. The timeout is per try (bullwait.engine.durable).
    bullwait_wait_replicas: int = Field(0, ge=0, le=100)
    bullwait_wait_timeout_ms: int = Field(1000, ge=1, le=60_000)

    @field_validator("queue_log_level", mode="before")
    @classmethod
    def _lower_case(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("bullwait_queue_names", mode="before")
    @classmethod
    def _check_naming(cls, value: object) -> object:
        if isinstance(value, str):
            if value.lower() not in {n.value for n in QueueNaming}:
                raise ValueError("must be current, legacy or tagged")
            return value.lower()
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is not None:
            parse_redis_url(value)
        return value

    @field_validator("redis_sentinels")
    @classmethod
    def _check_sentinels(cls, value: str | None) -> str | None:
        if value is not None:
            parse_sentinels(value)
        return value

    @field_validator("redis_cluster_nodes")
    @classmethod
    def _check_cluster_nodes(cls, value: str | None) -> str | None:
        if value is not None:
            parse_cluster_nodes(value)
        return value

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        """A blank value (empty or white space only) is unset, as in node-compat/lib/config.js: a
        `KEY=` line or an empty `${VAR}` in a deployment gets the default rather than an error on
        one side and a default on the other.

        On a cluster an unset REDIS_QUEUE_DB is 0 (the only one) and an unset BULLMQ_PREFIX
        is `{bull}` (`bull` with tagged queue names); values that were set are checked in `_check_cluster`."""
        if not isinstance(data, dict):
            return data
        data = {k: v for k, v in data.items() if not (isinstance(v, str) and not v.strip())}
        keys = {str(k).lower(): k for k in data}
        if not isinstance(data.get(keys.get("redis_cluster_nodes", "")), str):
            return data
        if data.get(keys.get("redis_queue_db", "")) is None:
            data.pop(keys.get("redis_queue_db", ""), None)
            data["redis_queue_db"] = 0
        if data.get(keys.get("bullmq_prefix", "")) is None:
            data.pop(keys.get("bullmq_prefix", ""), None)
            naming = data.get(keys.get("bullwait_queue_names", ""))
            tagged = str(getattr(naming, "value", naming)).strip().lower() == QueueNaming.TAGGED.value
            data["bullmq_prefix"] = CLUSTER_TAGGED_DEFAULT_PREFIX if tagged else CLUSTER_DEFAULT_PREFIX
        return data

    @field_validator("redis_port", "redis_queue_db", mode="before")
    @classmethod
    def _check_whole_number(cls, value: object, info: ValidationInfo) -> object:
        """Decimal digits only, as node-compat/lib/config.js reads them (pydantic alone takes
        `+7000`, `7000.0` and `1_0`, where Node's Number() takes `0x1F` and `1e3`)."""
        if isinstance(value, str):
            low, high = (1, 65535) if info.field_name == "redis_port" else (0, MAX_DB)
            text = value.strip()
            if not text.isascii() or not text.isdigit() or not low <= int(text) <= high:
                raise ValueError(f"must be a whole number from {low} to {high}")
        return value

    @field_validator("redis_sentinel_master")
    @classmethod
    def _check_master_name(cls, value: str) -> str:
        if any(ch.isspace() for ch in value):
            raise ValueError(
                "must be the master's name as the sentinels know it (`sentinel monitor <name> ...`), "
                "without white space"
            )
        return value

    @field_validator("redis_host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        if not value.strip() or any(ch.isspace() or ch in "/@?#" for ch in value):
            raise ValueError("must be a host name or address only; put a URL in REDIS_URL")
        return value

    @field_validator("bullmq_prefix", "bullwait_store_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if any(ch.isspace() for ch in value):
            raise ValueError("must not contain white space")
        return value

    @field_validator("whatsapp_api_base_url")
    @classmethod
    def _check_api_base(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must start with https:// (or http:// for a local test server)")
        return value.rstrip("/")

    @field_validator("whatsapp_access_token", "whatsapp_phone_number_id", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _check_topology(self) -> Settings:
        if self.redis_cluster_nodes and (self.redis_url or self.redis_sentinels):
            other = "REDIS_URL" if self.redis_url else "REDIS_SENTINELS"
            raise ValueError(
                f"{other} and REDIS_CLUSTER_NODES are both set, naming two Redis topologies: "
                f"keep REDIS_CLUSTER_NODES for a cluster, or {other} and unset REDIS_CLUSTER_NODES"
            )
        if self.redis_url and self.redis_sentinels:
            raise ValueError(
                "REDIS_URL and REDIS_SENTINELS are both set, naming two Redis topologies: "
                "keep REDIS_SENTINELS (with REDIS_QUEUE_DB) for Sentinel, or REDIS_URL and unset REDIS_SENTINELS"
            )
        return self

    @model_validator(mode="after")
    def _check_cluster(self) -> Settings:
        if not self.redis_cluster_nodes:
            return self
        if self.redis_queue_db != 0:
            raise ValueError(
                f"REDIS_QUEUE_DB: a Redis Cluster has database 0 only (got {self.redis_queue_db}); "
                "set REDIS_QUEUE_DB=0 or unset it"
            )
        if not has_hash_tag(self.bullmq_prefix) and self.bullwait_queue_names is not QueueNaming.TAGGED:
            raise ValueError(
                f"BULLMQ_PREFIX: on a Redis Cluster each queue's keys must share one slot, as BullMQ's scripts "
                f"need, and neither the prefix ({_quoted(self.bullmq_prefix)}) nor the queue names carry a hash tag; "
                f"write the prefix in braces, e.g. {{{self.bullmq_prefix.strip('{}') or 'bull'}}} (or unset it for "
                f"{CLUSTER_DEFAULT_PREFIX}), or set BULLWAIT_QUEUE_NAMES=tagged to give each queue its own tag"
            )
        return self

    @model_validator(mode="after")
    def _check_tls_file(self) -> Settings:
        if self.redis_tls_ca_file and not os.path.isfile(self.redis_tls_ca_file):
            raise ValueError(f"REDIS_TLS_CA_FILE: no such file {_quoted(self.redis_tls_ca_file)}")
        return self

    @model_validator(mode="after")
    def _check_whatsapp_sender(self) -> Settings:
        if self.whatsapp_access_token is not None and not self.whatsapp_phone_number_id:
            raise ValueError("WHATSAPP_PHONE_NUMBER_ID: required when WHATSAPP_ACCESS_TOKEN is set")
        return self

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """repr()/str() never show secrets: credentials in URLs and secret fields are masked."""
        for name, value in super().__repr_args__():
            if isinstance(value, str) and name and _is_secret(name.upper()):
                yield name, redact_text(value) if name.upper().endswith("URL") else "***"
            else:
                yield name, value

    @cached_property
    def redis_address(self) -> RedisAddress:
        """Where Redis is: REDIS_URL when set, else REDIS_HOST/REDIS_PORT/REDIS_QUEUE_DB."""
        if self.redis_url:
            return parse_redis_url(self.redis_url)
        return RedisAddress("redis", self.redis_host, self.redis_port, None, self.redis_queue_db)

    @cached_property
    def sentinel(self) -> SentinelTopology | None:
        """The Sentinel topology when REDIS_SENTINELS is set (REDIS_HOST/REDIS_PORT are then unused)."""
        if not self.redis_sentinels:
            return None
        return SentinelTopology(parse_sentinels(self.redis_sentinels), self.redis_sentinel_master, self.redis_queue_db)

    @cached_property
    def cluster(self) -> ClusterTopology | None:
        """The Redis Cluster when REDIS_CLUSTER_NODES is set (REDIS_HOST/REDIS_PORT are then unused)."""
        if not self.redis_cluster_nodes:
            return None
        return ClusterTopology(parse_cluster_nodes(self.redis_cluster_nodes))

    @cached_property
    def redis_configured(self) -> bool:
        """True when the environment or `.env` names a Redis (so no embedded one may be started)."""
        names = ("REDIS_URL", "REDIS_HOST", "REDIS_PORT", "REDIS_SENTINELS", "REDIS_CLUSTER_NODES")
        from_file: dict[str, str | None] = {}
        if os.path.isfile(".env"):
            from dotenv import dotenv_values  # pydantic-settings' own .env reader

            from_file = {k.upper(): v for k, v in dotenv_values(".env").items()}
        return any((os.environ.get(n) or "").strip() or (from_file.get(n) or "").strip() for n in names) or bool(
            self.redis_url or self.redis_sentinels or self.redis_cluster_nodes
        )

    def with_overrides(self, **values: object) -> Settings:
        """A copy with some fields replaced (validated), e.g. from `--redis-url`."""
        clean = {k: v for k, v in values.items() if v is not None}
        if not clean:
            return self
        # Only what was configured, so `model_fields_set` still tells a chosen value from a
        # default (an explicit METRICS_PORT is held to; the default one may move).
        data = {name: getattr(self, name) for name in self.model_fields_set}
        data.update(clean)
        try:
            return Settings.model_validate(data)
        except ValidationError as exc:
            raise _settings_error(exc) from None


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; raise `SettingsError` naming the bad variable."""
    try:
        settings = Settings()
    except ValidationError as exc:
        raise _settings_error(exc) from None
    return settings.with_overrides(**overrides)


def _settings_error(exc: ValidationError) -> SettingsError:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()))
        name = loc.upper() if loc else _name_from_message(err.get("msg", ""))
        value = err.get("input")
        # A value with a login or a scheme may hold a password (`?password=` needs no '@').
        hidden = (
            _is_secret(name) or isinstance(value, dict) or (isinstance(value, str) and ("@" in value or "://" in value))
        )
        shown = "" if hidden else f" (got {_quoted(value) if isinstance(value, str) else repr(value)})"
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        parts.append(f"{name}: {msg}{shown}" if name and not msg.startswith(name) else msg)
    return SettingsError("invalid setting " + "; ".join(parts))


def _name_from_message(message: str) -> str:
    head = message.removeprefix("Value error, ").split(":", 1)[0]
    return head if head.isupper() else ""


def _is_secret(name: str) -> bool:
    """A setting whose value is never shown: a name the logs hide (`SECRET_KEYS`), or a URL
    (it may hold a password)."""
    lowered = name.lower()
    return "url" in lowered or any(word in lowered for word in SECRET_KEYS)
