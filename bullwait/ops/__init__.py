"""Operations on live queues: stats, jobs, cancel, clean, retry, pause, the doctor, migrating
legacy queue names, and the least-privilege ACL."""
