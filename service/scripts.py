"""The job store's Lua scripts (rq keeps its own in one module too): each opens with a header that names every
KEYS[i] and ARGV[i], and every key a script touches comes in KEYS, none is built inside.

Redis Cluster: not adopted. Every script touches the global registries (queued, running, metrics) together with
one job's or batch's keys, so no hash tag such as `{batch_id}` could put them in one slot; clustering would need
per-slot registries. A single Redis (with replicas or Sentinel) holds far more than this service's load: the
budget is a few commands per image.
"""

_MARK_CALLBACK_DUE = """
-- A batch's callback (service/deliveries.py) is due when its last job finishes, whichever script finishes it: a
-- transition, an admission that stores a job failed, an admission cut short. A finished job never moves again, so
-- each finish adds exactly one to the finished count and only one step sees it reach the total; that one records the
-- delivery id (HSETNX: never twice) and puts the batch in the due registry. Returns the batch id if it did, else ''.
local function mark_callback_due(batch, due_registry, seed, finished_at)
  if redis.call('HEXISTS', batch, 'callback_url') == 0 then return '' end
  local b = redis.call('HMGET', batch, 'succeeded', 'failed', 'canceled', 'total')
  local finished = (tonumber(b[1]) or 0) + (tonumber(b[2]) or 0) + (tonumber(b[3]) or 0)
  if finished ~= tonumber(b[4]) then return '' end
  if redis.call('HSETNX', batch, 'callback_delivery', string.sub(redis.sha1hex(batch .. seed), 1, 32)) == 0 then
    return ''
  end
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  local batch_id = string.match(batch, '([^:]+)$')
  redis.call('HSET', batch, 'callback_due_at', now, 'finished_at', finished_at or '')
  redis.call('ZADD', due_registry, now, batch_id)
  return batch_id
end
"""


TRANSITION = _MARK_CALLBACK_DUE + """
-- Moves one job to a new status, if the state machine allows it from the status it is in.
-- KEYS[1] job hash          KEYS[2] job image        KEYS[3] bulk lane's queued registry
-- KEYS[4] running registry
-- KEYS[5] metrics hash      KEYS[6] the job's batch hash (it may have expired)
-- KEYS[7] interactive lane's queued registry     KEYS[8] callbacks' due registry
-- ARGV[1] job id            ARGV[2] allowed current statuses, as ",queued,running,"
-- ARGV[3] target status     ARGV[4] score in the registry the target puts the job in: its deadline when running,
--                           now when queued again
-- ARGV[5] job channel       ARGV[6] batch channel
-- ARGV[7..] field, value pairs to set on the job hash
-- Returns {1, status before, batch id if this move made the batch's callback due, else ''} when moved,
-- {0, current status or ''} when not (gone, or not allowed).
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {0, ''} end
if not string.find(ARGV[2], ',' .. status .. ',', 1, true) then return {0, status} end
local target = ARGV[3]
redis.call('HSET', KEYS[1], 'status', target)
for i = 7, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[7], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
local batch_exists = redis.call('EXISTS', KEYS[6]) == 1
if batch_exists then
  redis.call('HINCRBY', KEYS[6], status, -1)
  redis.call('HINCRBY', KEYS[6], target, 1)
end
if target == 'running' then
  redis.call('HINCRBY', KEYS[1], 'deliveries', 1)
  redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
elseif target == 'queued' then
  local queued = KEYS[3]
  if redis.call('HGET', KEYS[1], 'lane') == 'interactive' then queued = KEYS[7] end
  redis.call('ZADD', queued, ARGV[4], ARGV[1])
else
  redis.call('DEL', KEYS[2])
  if batch_exists then redis.call('PUBLISH', ARGV[6], target) end
end
redis.call('HINCRBY', KEYS[5], 'jobs_' .. target, 1)
redis.call('PUBLISH', ARGV[5], target)
local due = ''
if batch_exists and target ~= 'running' and target ~= 'queued' then
  due = mark_callback_due(KEYS[6], KEYS[8], ARGV[1], redis.call('HGET', KEYS[1], 'finished_at'))
end
return {1, status, due}
"""

OPEN_BATCH = """
-- Opens a batch whose jobs are stored as they are read: places for all of them are reserved at once, so the queue
-- never passes MAX_QUEUE whatever else is admitted meanwhile; or answers the batch an idempotent repeat names.
-- KEYS[1] batch hash   KEYS[2] idempotency key (unused without one)   KEYS[3] bulk lane's queued registry
-- KEYS[4] interactive lane's queued registry   KEYS[5] admissions hash (batch id -> places still reserved)
-- ARGV[1] MAX_QUEUE (-1: no limit)   ARGV[2] TTL   ARGV[3] created_at   ARGV[4] owner   ARGV[5] explain ('1', '0')
-- ARGV[6] lane   ARGV[7] batch id   ARGV[8] its number of jobs   ARGV[9] what the idempotency key is to hold
-- (JSON), '' without one   ARGV[10] now (seconds)
-- ARGV[11] callback URL ('' without one)   ARGV[12] the batch's URL   ARGV[13] its CSV's URL (service/deliveries.py)
-- Returns {'repeat', what the idempotency key holds}, {'full', jobs queued or reserved now} or {'created'}.
if ARGV[9] ~= '' then
  local earlier = redis.call('GET', KEYS[2])
  if earlier then return {'repeat', earlier} end
end
local total = tonumber(ARGV[8])
local taken = redis.call('ZCARD', KEYS[3]) + redis.call('ZCARD', KEYS[4])
for _, places in ipairs(redis.call('HVALS', KEYS[5])) do taken = taken + tonumber(places) end
if tonumber(ARGV[1]) >= 0 and taken + total > tonumber(ARGV[1]) then return {'full', tostring(taken)} end
redis.call('HSET', KEYS[1], 'created_at', ARGV[3], 'total', total, 'owner', ARGV[4], 'lane', ARGV[6],
           'explain', ARGV[5], 'queued', total, 'admitted', 0, 'admitting_at', ARGV[10])
if ARGV[11] ~= '' then
  redis.call('HSET', KEYS[1], 'callback_url', ARGV[11], 'callback_batch_url', ARGV[12], 'callback_csv_url', ARGV[13],
             'callback_state', 'pending', 'callback_attempts', 0)
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
if total > 0 then redis.call('HSET', KEYS[5], ARGV[7], total) end
if ARGV[9] ~= '' then redis.call('SET', KEYS[2], ARGV[9], 'EX', ARGV[2]) end
return {'created'}
"""

ADD_JOBS = _MARK_CALLBACK_DUE + """
-- Stores the next jobs of an open batch, queued in its lane; a job whose image is known bad already is stored
-- failed, with its problem, and never queued. The images of the jobs to queue were stored just before, apart.
-- KEYS[1] batch hash   KEYS[2] batch's job list   KEYS[3] the lane's queued registry   KEYS[4] metrics hash
-- KEYS[5] admissions hash   KEYS[6] callbacks' due registry   KEYS[7..] per job: its hash, its image
-- ARGV[1] TTL   ARGV[2] queued score (now)   ARGV[3] now (ISO 8601)   ARGV[4] batch channel   ARGV[5] batch id
-- ARGV[6..] per job: id, filename, problem (JSON; '' for a job to queue)
-- Returns 0 if the batch is gone (expired), and removes the images, else 1.
local count = (#ARGV - 5) / 3
if redis.call('EXISTS', KEYS[1]) == 0 then
  for i = 0, count - 1 do redis.call('DEL', KEYS[8 + 2 * i]) end
  return 0
end
local batch = redis.call('HMGET', KEYS[1], 'created_at', 'owner', 'explain', 'lane')
for i = 0, count - 1 do
  local id, filename, problem = ARGV[6 + 3 * i], ARGV[7 + 3 * i], ARGV[8 + 3 * i]
  local record = KEYS[7 + 2 * i]
  redis.call('RPUSH', KEYS[2], id)
  redis.call('HSET', record, 'id', id, 'batch_id', ARGV[5], 'filename', filename, 'created_at', batch[1],
             'deliveries', '0', 'owner', batch[2], 'explain', batch[3], 'lane', batch[4])
  if problem == '' then
    redis.call('HSET', record, 'status', 'queued')
    redis.call('ZADD', KEYS[3], ARGV[2], id)
  else
    redis.call('HSET', record, 'status', 'failed', 'error', problem, 'finished_at', ARGV[3])
    redis.call('HINCRBY', KEYS[1], 'queued', -1)
    redis.call('HINCRBY', KEYS[1], 'failed', 1)
    redis.call('HINCRBY', KEYS[4], 'jobs_failed', 1)
    redis.call('PUBLISH', ARGV[4], 'failed')
  end
  redis.call('EXPIRE', record, ARGV[1])
end
if count > 0 then redis.call('EXPIRE', KEYS[2], ARGV[1]) end
redis.call('HINCRBY', KEYS[1], 'admitted', count)
redis.call('HSET', KEYS[1], 'admitting_at', ARGV[2])
if redis.call('HINCRBY', KEYS[5], ARGV[5], 0 - count) <= 0 then redis.call('HDEL', KEYS[5], ARGV[5]) end
redis.call('HINCRBY', KEYS[4], 'jobs_submitted', count)
mark_callback_due(KEYS[1], KEYS[6], ARGV[5], ARGV[3])  -- every job of the batch may have been stored failed
return 1
"""

CLOSE_ADMISSION = _MARK_CALLBACK_DUE + """
-- Ends a batch's admission: its remaining reserved places are freed. A batch whose admission was cut short (its
-- API died) keeps the jobs it has: its total becomes what was admitted, so it can finish, and it says so.
-- KEYS[1] batch hash   KEYS[2] admissions hash   KEYS[3] callbacks' due registry
-- ARGV[1] batch id   ARGV[2] now (ISO 8601)
-- Returns the number of jobs that were never admitted.
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local total = tonumber(redis.call('HGET', KEYS[1], 'total'))
local missing = total - tonumber(redis.call('HGET', KEYS[1], 'admitted') or 0)
if missing > 0 then
  redis.call('HINCRBY', KEYS[1], 'queued', -missing)
  redis.call('HSET', KEYS[1], 'total', total - missing, 'interrupted', missing)
  mark_callback_due(KEYS[1], KEYS[3], ARGV[1], ARGV[2])  -- what it kept may all have finished already
end
redis.call('HDEL', KEYS[1], 'admitting_at')
return missing
"""
