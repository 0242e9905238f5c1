"""bullwait's own Lua: the read-only queue reader and the windowed clean driver.

Every script of a queue touches only that queue's keys (`<prefix>:<queue>:*`), so a
hash-tagged prefix such as `{bull}` keeps each one in a single Cluster slot. Where a script
changes a queue it reuses BullMQ's own Lua (shipped in bullmq-py), so jobs are selected and
removed exactly as BullMQ does it.
"""

from __future__ import annotations

import hashlib

from bullwait.engine.internals import script_source

# The one queue reader (bullwait.ops.snapshot): one call per queue gives the counts exactly
# as Node bullmq's getJobCounts computes them (getCounts-1.lua: `waiting` is LLEN of the wait
# list, less a legacy "0:" marker at its tail, `paused` the same of the legacy paused list;
# sets are ZCARD), without getCounts' RPOP of that marker; the paused flag as Node's
# isPaused reads it (the `paused` field of `meta` exists, whatever its value); plus what
# stats, doctor, /metrics and /health need: meta version, oldest waiting job, next delayed
# due time, overdue delayed jobs, active jobs without a lock (stalled), and the worker
# metrics totals. Times are Redis's clock (TIME), so every reader ages jobs alike.
INSPECT_LUA = """
local rcall = redis.call
local prefix = ARGV[1]
local cap = tonumber(ARGV[2])
local grace = tonumber(ARGV[3])
local t = rcall("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function isMarker(id) return id and string.sub(id, 1, 2) == "0:" end
local function listCount(key)
  local n = rcall("LLEN", key)
  if n > 0 and isMarker(rcall("LINDEX", key, -1)) then n = n - 1 end
  return n
end
local function waitingSince(id)
  if not id then return nil end
  local f = rcall("HMGET", prefix .. id, "timestamp", "delay")
  local ts = tonumber(f[1])
  if not ts then return nil end
  return ts + (tonumber(f[2]) or 0)
end

local oldest = nil
local function older(ts) if ts and (not oldest or ts < oldest) then oldest = ts end end
for _, listKey in ipairs({KEYS[1], KEYS[8]}) do
  local tail = rcall("LINDEX", listKey, -1)
  if isMarker(tail) then tail = rcall("LINDEX", listKey, -2) end
  older(waitingSince(tail))
end
-- prioritized scores are priority * 2^32 + insertion counter: the oldest has the lowest counter
local items = rcall("ZRANGE", KEYS[4], 0, cap - 1, "WITHSCORES")
local bestId, bestCounter = nil, nil
for i = 1, #items, 2 do
  local c = math.fmod(tonumber(items[i + 1]), 4294967296)
  if not bestCounter or c < bestCounter then bestCounter = c; bestId = items[i] end
end
older(waitingSince(bestId))

local first = rcall("ZRANGE", KEYS[3], 0, 0, "WITHSCORES")
local nextDue = -1
if #first == 2 then nextDue = math.floor(tonumber(first[2]) / 4096) end
local overdue = rcall("ZCOUNT", KEYS[3], 0, (now - grace) * 4096 - 1)

local active = rcall("LRANGE", KEYS[2], 0, cap - 1)
local stalled = 0
for _, id in ipairs(active) do
  if rcall("EXISTS", prefix .. id .. ":lock") == 0 then stalled = stalled + 1 end
end

return {
  now, listCount(KEYS[1]), rcall("LLEN", KEYS[2]), rcall("ZCARD", KEYS[3]), rcall("ZCARD", KEYS[4]),
  rcall("ZCARD", KEYS[5]), rcall("ZCARD", KEYS[6]), rcall("ZCARD", KEYS[7]), listCount(KEYS[8]),
  rcall("HEXISTS", KEYS[9], "paused"), rcall("HGET", KEYS[9], "version") or "", oldest or -1, nextDue, overdue,
  stalled, #active, rcall("HGET", KEYS[10], "count") or "0", rcall("HGET", KEYS[11], "count") or "0"
}
"""
INSPECT_KEYS = (
    "wait",
    "active",
    "delayed",
    "prioritized",
    "completed",
    "failed",
    "waiting-children",
    "paused",
    "meta",
    "metrics:completed",
    "metrics:failed",
)
INSPECT_SHA = hashlib.sha1(INSPECT_LUA.encode()).hexdigest()

# `bullwait clean`, one bounded window per call. BullMQ's cleanJobsInSet-3.lua handles a whole
# set in one call (1.65 s for 100,000 delayed timers: Redis answers no one meanwhile). This
# driver reuses that script's own functions (everything before its `local result`: removeJob,
# isJobSchedulerJob, getTimestamp), so each job is selected and removed exactly as BullMQ
# does it (same timestamp fields, lock check for active, scheduler jobs kept, parent and
# deduplication keys, `cleaned` event), but it looks at no more than ARGV[5] jobs per call
# and returns a cursor for the next call:
#   lists (wait, active, paused): walked from the tail (oldest) towards the head; the cursor
#     is the innermost job kept, found again with LPOS, else the count of jobs kept;
#   delayed, prioritized: walked in set order; the cursor is the last job kept (ZRANK),
#     else its score;
#   completed, failed: every job scored up to the cutoff goes, the first ARGV[5] each call.
# ARGV[1] job key prefix, ARGV[2] cutoff (ms), ARGV[3] jobs still to remove (0: no limit),
# ARGV[4] state, ARGV[5] window, ARGV[6] jobs kept so far, ARGV[7] cursor job, ARGV[8] its
# score, ARGV[9] "1" to only report. Returns {ids, done, kept, cursor, score}.
# Jobs that move while a clean runs may be left for the next one (it is no snapshot).
CLEAN_DRIVER_LUA = """
local setKey, state = KEYS[1], ARGV[4]
local window, kept, cursor, cursorScore = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7], ARGV[8]
local dry = ARGV[9] == "1"
local deleted = {}
local done = false
local function full() return limit > 0 and #deleted >= limit end
local function removable(job, attrs, checkLock)
  local jobKey = ARGV[1] .. job
  if checkLock and rcall("EXISTS", jobKey .. ":lock") == 1 then return false end
  if isJobSchedulerJob(job, jobKey, repeatKey) then return false end
  local jobTS = getTimestamp(jobKey, attrs)
  return (not jobTS or jobTS <= ARGV[2])
end
local function visit(job, score, attrs, checkLock, onRemove)
  local ok = removable(job, attrs, checkLock)
  if ok then
    if not dry then onRemove(); removeJob(job, true, ARGV[1], true) end
    deleted[#deleted + 1] = job
  end
  if dry or not ok then kept = kept + 1; cursor = job; cursorScore = score end
end
local function nothing() end

if state == "completed" or state == "failed" then
  local n = window
  if limit > 0 then n = math.min(limit, window) end
  local jobs = rcall("ZRANGEBYSCORE", setKey, 0, ARGV[2], "LIMIT", 0, n)
  for _, job in ipairs(jobs) do
    if not dry then removeJob(job, true, ARGV[1], true) end
    deleted[#deleted + 1] = job
  end
  if not dry and #deleted > 0 then rcall("ZREM", setKey, unpack(deleted)) end
  done = dry or #jobs < n or full()
elseif state == "delayed" or state == "prioritized" then
  local attrs = {"timestamp"}
  if state == "delayed" then attrs = {"processedOn", "timestamp"} end
  local rank = cursor ~= "" and rcall("ZRANK", setKey, cursor)
  local jobs
  if rank then
    jobs = rcall("ZRANGE", setKey, rank + 1, rank + window, "WITHSCORES")
  elseif cursorScore ~= "" then
    jobs = rcall("ZRANGEBYSCORE", setKey, "(" .. cursorScore, "+inf", "WITHSCORES", "LIMIT", 0, window)
  else
    jobs = rcall("ZRANGE", setKey, 0, window - 1, "WITHSCORES")
  end
  for i = 1, #jobs, 2 do
    if full() then break end
    visit(jobs[i], jobs[i + 1], attrs, false, nothing)
  end
  if not dry and #deleted > 0 then rcall("ZREM", setKey, unpack(deleted)) end
  done = #jobs < 2 * window or full()
else
  local len = rcall("LLEN", setKey)
  if cursor ~= "" then
    local pos = rcall("LPOS", setKey, cursor, "RANK", -1)
    if pos then kept = len - pos end
  end
  local stop = len - kept - 1
  if stop < 0 then
    done = true
  else
    local start = math.max(0, stop - window + 1)
    local jobs = rcall("LRANGE", setKey, start, stop)
    local attrs = {"finishedOn", "processedOn", "timestamp"}
    for i = #jobs, 1, -1 do
      if full() then break end
      -- counted from the tail, where the window is: a positive index walks the list from its head
      visit(jobs[i], "", attrs, state == "active", function() rcall("LSET", setKey, start + i - 1 - len, "") end)
    end
    -- the deletion markers are the first ones from the tail: only the kept jobs lie behind them
    if not dry and #deleted > 0 then rcall("LREM", setKey, -#deleted, "") end
    done = start == 0 or full()
  end
end
if not dry and (#deleted > 0 or done) then
  rcall("XADD", KEYS[2], "*", "event", "cleaned", "count", #deleted)
end
return {deleted, done and 1 or 0, kept, cursor, cursorScore}
"""


def clean_batch_script() -> str:
    """BullMQ's clean functions followed by the windowed driver (see CLEAN_DRIVER_LUA)."""
    bullmq = script_source("cleanJobsInSet")
    head, found, _ = bullmq.partition("\nlocal result\n")
    if not found or "local function removeJob(" not in head or "local limit = tonumber(ARGV[3])" not in head:
        raise RuntimeError("bullmq-py's cleanJobsInSet script changed shape: update bullwait.ops.scripts's clean")
    return head + "\n" + CLEAN_DRIVER_LUA


CLEAN_BATCH_LUA = clean_batch_script()
