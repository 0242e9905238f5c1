"""Jobs a worker fetched but never received: given back to the queue within seconds.

A fetch (`moveToActive`, or `moveToFinished` fetching the next job) moves a job to
`active` under the slot's lock token. When its reply is lost (a connection cut
mid-reply, a stall past the read timeout), redis-py sends the same call again, and the
second run fetches *another* job: the first one sits in `active`, locked by a token no
slot is working on, until its lock expires and the stalled check returns it (about
`lockDuration` + `stalledInterval`, a minute by default) and counts it as stalled.
Under a flaky link that delayed timers and offers by a minute each.

A worker knows its own tokens (`<worker id>:<n>`), the fetches under way and the jobs
its slots hold (from the fetch's reply until the slot is done with the job). Tokens are
not one per slot: bullmq-py's run loop hands every fetch it starts in one turn the last
token it made (a closure over the loop variable), so two jobs may share one. Every few
seconds `OrphanSweeper` reads the head of `active` (where fetches put jobs) and the
locks of those jobs; a job locked by one of this worker's tokens, held by no slot, with
no fetch under that token in flight, was fetched by a call whose reply never came. It
goes back to `wait` (or `prioritized`) through bullmq's own `moveJobFromActiveToWait`,
which checks the lock token, so a job that any slot holds is never touched. The job
keeps its attempts and stalled count.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from bullwait.engine.internals import FROM_ACTIVE_TO_WAIT_KEYS, main_client, script_source, scripts_of

# Fetches push to the head of `active`; jobs further down are long-running ones (or other
# workers'), whose locks are renewed and which the stalled check covers.
SCAN_DEPTH = 1000
# Seconds between sweeps: well inside the default 30 s lock, so an orphan goes back
# before it would count as stalled.
MAX_INTERVAL = 5.0
# A job left behind again and again is not a lost reply but a job the worker cannot
# finish or fail (a hash bullmq's own scripts choke on): after this many give-backs it is
# left to the stalled check, which fails it after `maxStalledCount`.
MAX_GIVE_BACKS = 3


class OrphanSweeper:
    """Tracks a worker's fetches and held jobs, and gives back jobs locked by it that nobody holds."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        # (job id, token) -> slots holding it: a job that stalled can be fetched again by
        # this worker while its stale run is still going, under another token.
        # Plain dicts, not Counters, for these two: they change three times per job, and a
        # Counter's missing key and `del` are Python calls. A count that reaches 0 is removed.
        self.held: dict[tuple[str, str], int] = {}
        self.fetching: dict[str, int] = {}  # token -> fetches under way
        self.given_back: Counter[str] = Counter()  # job id -> times given back
        self.returned = 0
        self._script: Any = None
        self._task: asyncio.Task[None] | None = None

    def fetch_started(self, token: str) -> None:
        fetching = self.fetching
        fetching[token] = fetching.get(token, 0) + 1

    def fetch_ended(self, token: str, job_id: str | None) -> None:
        """A fetch answered (`job_id` None: it brought no job, or failed)."""
        if job_id is not None:
            _add(self.held, (job_id, token), 1)
        _add(self.fetching, token, -1)

    def released(self, job_id: str, token: str) -> None:
        """The slot is done with the job (completed, failed, delayed, or given up)."""
        _add(self.held, (job_id, token), -1)

    def interval(self) -> float:
        lock_ms = float(self.worker.opts.get("lockDuration") or 30_000)
        return min(MAX_INTERVAL, lock_ms / 1000 / 3)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._loop())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _loop(self) -> None:
        worker = self.worker
        while not (worker.closing or worker.closed):
            await asyncio.sleep(self.interval())
            if worker.closing or worker.closed:
                return
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: the next sweep tries again
                worker.emit("error", exc)

    async def sweep(self) -> list[str]:
        """Give back the orphans found now; returns their ids."""
        worker = self.worker
        client = main_client(worker)
        scripts = scripts_of(worker)
        ids = await client.lrange(scripts.key("active"), 0, SCAN_DEPTH - 1)
        if not ids:
            return []
        async with client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.get(f"{scripts.to_key(job_id)}:lock")
            locks = await pipe.execute()
        mine = f"{worker.id}:"
        # Decided after the reads, against the state as it is now: a fetch that was under
        # way when the locks were read has either registered its job or is still counted.
        orphans = [
            (job_id, lock)
            for job_id, lock in zip(ids, locks)
            if isinstance(lock, str)
            and lock.startswith(mine)
            and (job_id, lock) not in self.held
            and lock not in self.fetching
            and self.given_back[job_id] < MAX_GIVE_BACKS
        ]
        returned = []
        if len(self.given_back) > 10_000:
            self.given_back.clear()
        for job_id, token in orphans:
            if await self._give_back(job_id, token) >= 0:
                self.given_back[job_id] += 1
                returned.append(job_id)
        self.returned += len(returned)
        if returned:
            worker.emit("orphans", returned)
        return returned

    async def _give_back(self, job_id: str, token: str) -> int:
        scripts = scripts_of(self.worker)
        if self._script is None:
            self._script = main_client(self.worker).register_script(script_source("moveJobFromActiveToWait"))
        keys = scripts.keys(FROM_ACTIVE_TO_WAIT_KEYS)
        return int(await self._script(keys=keys, args=[job_id, token, scripts.to_key(job_id)]))


def _add(counts: dict[Any, int], key: Any, amount: int) -> None:
    count = counts.get(key, 0) + amount
    if count > 0:
        counts[key] = count
    else:
        counts.pop(key, None)
