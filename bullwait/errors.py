"""Exceptions of bullwait, each named for what went wrong and worded as what to do next."""

from __future__ import annotations


class BullwaitError(Exception):
    """Base of every error bullwait raises on purpose. `str()` is one line for operators."""

    exit_code = 1


class SettingsError(BullwaitError):
    """An environment variable or option has a bad value; the message names it."""

    exit_code = 2


class RedisIsClusterNode(SettingsError):
    """A one-node address (REDIS_URL, REDIS_HOST/PORT) names a Redis Cluster node: every key
    command would be redirected (MOVED), so nothing works until REDIS_CLUSTER_NODES is set."""


class RedisNotCluster(SettingsError):
    """REDIS_CLUSTER_NODES names a Redis that does not run in cluster mode."""


class RedisUnavailable(BullwaitError):
    """Redis did not answer (refused, timed out, bad credentials)."""

    exit_code = 3


class RedisAccessDenied(RedisUnavailable):
    """Redis answered but refused: bad credentials, or an ACL that denies a command.
    Retrying does not help, so the worker stops instead of waiting."""


class UnknownQueue(BullwaitError):
    """A queue name that is not in the catalog."""

    exit_code = 2


class InvalidJobData(BullwaitError):
    """Job data that does not match its payload model. Never retried."""


class JobNotFound(BullwaitError):
    """No job with that id in that queue."""


class MonitoringUnavailable(BullwaitError):
    """The metrics and health server cannot start (address in use, not allowed)."""

    exit_code = 2


class BadArgument(BullwaitError):
    """A command argument with a bad value (negative limit, unknown status, odd job id)."""

    exit_code = 2


class WaitlistError(BullwaitError):
    """A waitlist operation got bad input (phone, ids); the message says what to fix."""


class RedisOutOfMemory(BullwaitError):
    """Redis refused a write: `maxmemory` is reached and the policy is `noeviction`."""

    exit_code = 3


class PluginError(SettingsError):
    """`BULLWAIT_PROCESSORS` names something that cannot be imported or called."""


class WriteNotDurable(RedisUnavailable):
    """`BULLWAIT_WAIT_REPLICAS` replicas did not confirm a write in time (bullwait.engine.durable):
    the master holds it, a failover could lose it, so it is not reported done."""


class UnsupportedClientVersion(BullwaitError):
    """The installed bullmq-py or redis-py is not a version bullwait was tested with; bullwait
    relies on parts of them that change between releases (bullwait.engine.internals)."""

    exit_code = 2
