"""The one rule for job ids: which ids a job can have, for the producer that writes a new one
and for the operator commands that look one up.

Every id: not empty, no surrounding white space, no control characters, at most
MAX_JOB_ID characters, and (`own_keys`) not the name of a key BullMQ keeps for the queue
itself or for a job (`meta`, `<id>:logs`...), because a job's hash is `<prefix>:<queue>:<id>`.
A new id (`new=True`) must also be one Node bullmq accepts as a custom id: not an integer
(those are the queue's own counter) and no `:` (except a job scheduler's three-part ids).
Looking up an existing job accepts integers: BullMQ gives them to jobs added without an id.
"""

from __future__ import annotations

import unicodedata

from bullwait.errors import BadArgument

MAX_JOB_ID = 512

# Keys BullMQ keeps for a queue itself (Node's QueueKeys, plus metrics): `jobs show Q meta`
# would read `<prefix>:<queue>:meta` and show the queue's meta hash as if it were a job.
QUEUE_OWN_KEYS = frozenset(
    {
        "active",
        "wait",
        "waiting-children",
        "paused",
        "id",
        "delayed",
        "prioritized",
        "stalled-check",
        "completed",
        "failed",
        "stalled",
        "repeat",
        "limiter",
        "meta",
        "events",
        "pc",
        "marker",
        "de",
        "metrics",
    }
)
# A job's own sub-keys: `<prefix>:<queue>:<id>:logs` and so on.
JOB_SUB_KEYS = frozenset({"logs", "lock", "dependencies", "processed", "failed", "unsuccessful"})


class BadJobId(BadArgument):
    """A job id no job can have. `kind` says which rule it broke (empty, padded, control,
    long, integer, colon, queue-key, job-key), `owner` the job whose sub-key it names, so a
    caller can add advice in its own terms (the CLI names its commands)."""

    def __init__(self, problem: str, kind: str, advice: str = "", owner: str | None = None) -> None:
        super().__init__(f"{problem}; {advice}" if advice else problem)
        self.problem = problem
        self.kind = kind
        self.owner = owner


def check_job_id(job_id: str, what: str = "job id", own_keys: bool = True, new: bool = False) -> str:
    """`job_id` if a job can have it; else BadJobId saying why.

    `new`: an id about to be written (the producer), held to Node bullmq's custom-id rules too."""
    if job_id is None or job_id == "" or not job_id.strip():
        raise BadJobId(f"{what} is empty", "empty", "pass the job's exact id")
    if job_id != job_id.strip():
        raise BadJobId(f"{what} {job_id!r} has leading or trailing white space", "padded", "quote the exact id")
    if any(unicodedata.category(ch).startswith("C") for ch in job_id):
        raise BadJobId(f"{what} {job_id!r} contains control characters", "control", "pass the exact id")
    if len(job_id) > MAX_JOB_ID:
        raise BadJobId(
            f"{what} is {len(job_id)} characters long", "long", f"ids longer than {MAX_JOB_ID} are not accepted"
        )
    if new:
        _refuse_node_custom_id(job_id, what)
    if own_keys:
        _refuse_own_key(job_id, what, "choose another id" if new else "")
    return job_id


def _refuse_node_custom_id(job_id: str, what: str) -> None:
    """An integer id collides with the queue's own counter (a later Node add without an id
    would be dropped as a duplicate), and `:` is reserved (Node throws "Custom Id cannot
    contain :")."""
    if job_id.lstrip("-").isdigit() and str(int(job_id)) == job_id:  # Node: `${parseInt(id)}` === id
        raise BadJobId(
            f"{what} {job_id!r} is an integer: BullMQ keeps those for its own counter", "integer", "add a prefix"
        )
    if ":" in job_id and len(job_id.split(":")) != 3:
        raise BadJobId(f"{what} {job_id!r} contains ':': Node bullmq refuses it", "colon", "use '_' or '-'")


def _refuse_own_key(job_id: str, what: str, advice: str) -> None:
    head, _, tail = job_id.rpartition(":")
    first = job_id.split(":", 1)[0]
    scheduler = first == "repeat" and job_id.count(":") == 1  # a job scheduler's hash; its jobs have 3 parts
    if job_id in QUEUE_OWN_KEYS or (first in ("metrics", "de") and ":" in job_id) or scheduler:
        raise BadJobId(
            f"{what} {job_id!r} names a key BullMQ keeps for the queue itself, not a job", "queue-key", advice
        )
    if head and tail in JOB_SUB_KEYS and head not in QUEUE_OWN_KEYS:
        raise BadJobId(
            f"{what} {job_id!r} names the {tail!r} key of job {head!r}, not a job", "job-key", advice, owner=head
        )
