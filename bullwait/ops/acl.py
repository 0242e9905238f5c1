"""The least-privilege Redis ACL for bullwait workers, producers, the ops CLI, Node bullmq and
Bull Board (docs/security.md, "Redis ACL").

    ACL SETUSER bullwait on >PASSWORD <rules>

where `<rules>` is `acl_rules(prefix, db=...)`. Rules apply left to right: start from nothing,
allow reading and writing keys, MULTI/EXEC/WATCH and Lua scripts (BullMQ's queue operations
are scripts, and Redis checks every command a script calls against these rules too), then
take back everything Redis flags `@dangerous` (FLUSHALL, CONFIG, KEYS, SORT, DEBUG, CLIENT
KILL, ...), script/function administration, and the data commands that name no key and so
escape the key patterns:

- SCAN, RANDOMKEY, DBSIZE list or count every key of the database, whatever its prefix;
- MOVE and COPY ... DB write keys into another database;
- CLIENT TRACKING (BCAST) pushes the names of every key other clients modify;

and give back only the connection commands the clients send (AUTH, HELLO, PING, QUIT, SELECT of
the configured database only, CLIENT SETNAME) and the server commands they read:
INFO (bullmq and Bull Board read the version), TIME (send claims run on Redis's clock) and
CLIENT LIST (Node's `getWorkers`, Bull Board's worker view, `bullwait stats`/`doctor`/health);
on a cluster also the cluster commands the clients send (`CLUSTER_RULES`).
Measured, not guessed: tests/test_security_acl.py runs every client under these rules and
asserts the ACL LOG holds no refusal.

`+select|N` is Redis's "first argument" rule (6.0+, deprecated in 7 but honoured): SELECT of
any other database is refused, so the user cannot reach another environment's `bull:*` keys.
"""

from __future__ import annotations

STORE_PREFIX = "bullwait:"  # BULLWAIT_STORE_PREFIX's default

DATA_RULES = (
    "-@all",
    "+@read",
    "+@write",
    "+@scripting",
    "+@transaction",
    "-@dangerous",
    "-scan",
    "-randomkey",
    "-dbsize",
    "-move",
    "-copy",
    "-script|flush",
    "-script|kill",
    "-script|debug",
    "-function",
    "-fcall",
    "-fcall_ro",
)
CONNECTION_RULES = (
    "+auth",
    "+hello",
    "+ping",
    "+quit",
    "+client|setname",
    "+wait",  # BULLWAIT_WAIT_REPLICAS (bullwait.engine.durable); names no key, returns a replica count
)
SERVER_RULES = ("+info", "+time", "+client|list")
# On a Redis Cluster (set on every node: ACLs are not shared between nodes): the slot map
# (redis-py and ioredis read CLUSTER SLOTS), COMMAND (redis-py's cluster client reads every
# command's key positions from it, to route), CLUSTER INFO and NODES (bullwait's check and
# doctor: the cluster's state and every node it knows, failed ones included),
# ASKING before a command redirected by ASK during a slot migration, and READONLY/READWRITE,
# which ioredis sends when a node it knows changes role (a failover).
CLUSTER_RULES = (
    "+cluster|slots",
    "+cluster|info",
    "+cluster|nodes",
    "+command",
    "+asking",
    "+readonly",
    "+readwrite",
)


def command_rules(db: int = 0, cluster: bool = False) -> tuple[str, ...]:
    rules = (*DATA_RULES, *CONNECTION_RULES, f"+select|{db}", *SERVER_RULES)
    return (*rules, *CLUSTER_RULES) if cluster else rules


def acl_rules(prefix: str = "bull", store_prefix: str = STORE_PREFIX, db: int = 0, cluster: bool = False) -> str:
    """Key patterns (the queues' prefix and bullwait's own keys), no pub/sub, the commands."""
    keys = ["resetkeys", f"~{prefix}:*", f"~{store_prefix}*", "resetchannels"]
    return " ".join([*keys, *command_rules(db, cluster)])
