"""Operations on live queues, one concept a module:

- queues: `Ops`, the operator actions (stats, jobs, cancel, clean, retry, promote, pause);
- snapshot: the one queue reader behind `stats`, `doctor`, `/metrics` and `/health/queues`;
- doctor: the checks of `bullwait doctor`;
- scripts: bullwait's own Lua; results: what the actions return; checks: argument checks;
  jobs: a job hash read into a `JobInfo`; presence: is this the right Redis db?;
- migrate: legacy queue names; acl: the least-privilege ACL; durations: `24h` and friends.

Nothing here prints: bullwait.cli renders what these return."""
