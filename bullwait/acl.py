"""The least-privilege Redis ACL for bullwait workers and producers (README "Security").

    ACL SETUSER bullwait on >PASSWORD <rules>

where `<rules>` is `acl_rules(prefix)`. Rules apply left to right: start from nothing,
allow reading and writing keys, MULTI/EXEC/WATCH and Lua scripts (BullMQ's queue operations are
scripts), connection commands, then take back everything Redis flags `@dangerous`
(FLUSHALL, CONFIG, KEYS, DEBUG, CLIENT KILL, ...) and script/function administration, and
give back the read-only commands bullmq and bullwait need: INFO (server version), TIME
(send claims run on Redis's clock), CLIENT SETNAME and CLIENT LIST (worker names, as
Bull Board shows them).
"""

from __future__ import annotations

STORE_PREFIX = "bullwait:"  # BULLWAIT_STORE_PREFIX's default

COMMAND_RULES = (
    "-@all",
    "+@read",
    "+@write",
    "+@scripting",
    "+@transaction",
    "+@connection",
    "-@dangerous",
    "-script|flush",
    "-script|kill",
    "-function",
    "-fcall",
    "-fcall_ro",
    "+info",
    "+time",
    "+client|setname",
    "+client|getname",
    "+client|list",
)


def acl_rules(prefix: str = "bull", store_prefix: str = STORE_PREFIX) -> str:
    """Key patterns (the queues' prefix and bullwait's own keys), no pub/sub, the commands."""
    keys = ["resetkeys", f"~{prefix}:*", f"~{store_prefix}*", "resetchannels"]
    return " ".join([*keys, *COMMAND_RULES])


def setuser_command(username: str = "bullwait", prefix: str = "bull", password: str = "<password>") -> str:
    return f"ACL SETUSER {username} on >{password} {acl_rules(prefix)}"
