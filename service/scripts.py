"""The job store's Lua scripts (rq keeps its own in one module too): each opens with a header that names every
KEYS[i] and ARGV[i], and every key a script touches comes in KEYS, none is built inside.

Two rules hold for all of them:
- **Time is Redis' own** (`TIME`): leases, queue scores and admission progress are compared by processes on other
  hosts, whose clocks may disagree by seconds or minutes.
- **What drains the queue runs when Redis is full.** A transition finishes a job and deletes its image, a closed
  admission frees its reservations: both are flagged `allow-oom`, so that a Redis at its maxmemory can always
  drain (the flag needs Redis 7). Admission is refused there, as it should be.
- **A write sent twice does what it did once.** redis-py sends a command again after a connection error
  (service/connections.py), and the first may have been carried out with only its answer lost. Each write names
  itself (a transition its mover's token, an admission chunk its place in the batch, a new batch its id) and a
  repeat answers as the first did, changing nothing.

Redis Cluster: not adopted. Every script touches the global registries (queued, running, metrics) together with
one job's or batch's keys, so no hash tag such as `{batch_id}` could put them in one slot; clustering would need
per-slot registries. A single Redis (with replicas or Sentinel) holds far more than this service's load: the
budget is a few commands per image.
"""

ALLOW_OOM = "#!lua flags=allow-oom\n"
"""Runs even when Redis is at its maxmemory (the scripts that drain the queue)."""

NOW = """
-- now(): Redis' clock, in seconds.
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

_MARK_CALLBACK_DUE = NOW + """
-- A batch's callback (service/deliveries.py) is due when its last job finishes, whichever script finishes it: a
-- transition, an admission that stores a job failed, an admission cut short. A finished job never moves again, so
-- each finish adds exactly one to the finished count and only one step sees it reach the total; that one records the
-- delivery id (HSETNX: never twice) and puts the batch in the due registry. Returns the batch id if it did, else ''.
local function mark_callback_due(batch, due_registry, seed, finished_at)
  if redis.call('HEXISTS', batch, 'callback_url') == 0 then return '' end
  -- A batch that grows as its images arrive (GROW_BATCH) may have all it holds finished and still grow.
  if redis.call('HGET', batch, 'open_ended') == '1' and redis.call('HEXISTS', batch, 'admitting_at') == 1 then
    return ''
  end
  local b = redis.call('HMGET', batch, 'succeeded', 'failed', 'canceled', 'total')
  local finished = (tonumber(b[1]) or 0) + (tonumber(b[2]) or 0) + (tonumber(b[3]) or 0)
  if finished ~= tonumber(b[4]) then return '' end
  if redis.call('HSETNX', batch, 'callback_delivery', string.sub(redis.sha1hex(batch .. seed), 1, 32)) == 0 then
    return ''
  end
  local at = now()
  local batch_id = string.match(batch, '([^:]+)$')
  redis.call('HSET', batch, 'callback_due_at', at, 'finished_at', finished_at or '')
  redis.call('ZADD', due_registry, at, batch_id)
  return batch_id
end
"""

_MARK_REPORTS_DUE = """
-- A batch's reports (service/reports.py) are due when every job has finished and its admission is closed (no job
-- can join it any more): the one step that sees both, a transition or the admission's close, records it once per
-- channel (HSETNX of <channel>_due_at) and puts the batch in that channel's due registry. A batch none of whose
-- images succeeded has nothing to report: its channels are marked skipped, with why. `channels` and `registries`
-- go in step (service/channels.py, REPORT_CHANNELS). Returns the channels made due, comma-separated ('' none).
local function mark_reports_due(batch, channels, registries)
  if redis.call('HEXISTS', batch, 'admitting_at') == 1 then return '' end
  local b = redis.call('HMGET', batch, 'succeeded', 'failed', 'canceled', 'total')
  local finished = (tonumber(b[1]) or 0) + (tonumber(b[2]) or 0) + (tonumber(b[3]) or 0)
  if finished ~= tonumber(b[4]) then return '' end
  local t = redis.call('TIME')
  local at = tonumber(t[1]) + tonumber(t[2]) / 1000000
  local batch_id = string.match(batch, '([^:]+)$')
  local marked = {}
  for i, channel in ipairs(channels) do
    if redis.call('HGET', batch, channel .. '_state') == 'pending'
        and redis.call('HSETNX', batch, channel .. '_due_at', at) == 1 then
      if (tonumber(b[1]) or 0) == 0 then
        redis.call('HSET', batch, channel .. '_state', 'skipped', channel .. '_last_error',
                   'no image of the batch was classified: there is no report to send')
      else
        redis.call('HSET', batch, channel .. '_delivery', string.sub(redis.sha1hex(batch .. channel), 1, 32))
        redis.call('ZADD', registries[i], at, batch_id)
        table.insert(marked, channel)
      end
    end
  end
  return table.concat(marked, ',')
end
"""

REPORT_CHANNELS_LUA = "{'report_dicom', 'report_stow'}"
"""service/channels.py's REPORT_CHANNELS, as the scripts name them."""


TRANSITION = ALLOW_OOM + _MARK_CALLBACK_DUE + _MARK_REPORTS_DUE + """
-- Moves one job to a new status, if the state machine allows it from the status it is in and the job's lease allows
-- this mover. A running job is leased: its entry in the running registry is scored by the end of its lease, and its
-- `token` names the claim that holds it. Only the holder moves it, or anyone once the lease is over (its worker is
-- gone: the hard time limit stops a live one before), or whoever knows the process that ran it is dead. A repeat
-- of a move already made (the same target and token: a retry whose answer was lost) answers as the first did and
-- changes nothing.
-- KEYS[1] job hash          KEYS[2] job image        KEYS[3] bulk lane's queued registry
-- KEYS[4] running registry  KEYS[5] metrics hash     KEYS[6] the job's batch hash (it may have expired)
-- KEYS[7] interactive lane's queued registry          KEYS[8] callbacks' due registry
-- KEYS[9] the images the service wrote to the object store (location -> when it may be deleted)
-- KEYS[10], KEYS[11] the report channels' due registries (report_dicom, report_stow)
-- ARGV[1] job id            ARGV[2] allowed current statuses, as ",queued,running,"
-- ARGV[3] target status     ARGV[4] the mover's token: a claim's own (it becomes the holder), a request's own id
-- ARGV[5] the holder's token, when the holder makes the move: only a job it holds moves ('': not the holder)
-- ARGV[6] the name of a model process known to be dead ('': none): a job it was running moves whatever its lease
-- ARGV[7] the lease, in seconds, of a move to running
-- ARGV[8] job channel       ARGV[9] batch channel
-- ARGV[10..] field, value pairs to set on the job hash
-- Returns {1, status before, batch id if this move made the batch's callback due else ''} when moved, and when it
-- made reports due too {..., the batch id, the report channels made due, comma-separated}; {0, current status or
-- ''} when not moved (gone, not allowed, or leased to another).
local current = redis.call('HMGET', KEYS[1], 'status', 'token', 'worker')
local status, token, worker = current[1], current[2], current[3]
if not status then return {0, ''} end
local target = ARGV[3]
if status == target and token == ARGV[4] then return {1, status, ''} end
if not string.find(ARGV[2], ',' .. status .. ',', 1, true) then return {0, status} end
local at = now()
if ARGV[5] ~= '' then
  if token ~= ARGV[5] then return {0, status} end
elseif ARGV[6] ~= '' then
  if status ~= 'running' or worker ~= ARGV[6] then return {0, status} end
elseif status == 'running' and tonumber(redis.call('ZSCORE', KEYS[4], ARGV[1]) or 0) > at then
  return {0, status}
end
redis.call('HSET', KEYS[1], 'status', target, 'token', ARGV[4])
for i = 10, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
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
  redis.call('ZADD', KEYS[4], at + tonumber(ARGV[7]), ARGV[1])
  local submitted = tonumber(redis.call('HGET', KEYS[1], 'submitted'))
  if submitted then redis.call('HSET', KEYS[1], 'queue_wait', math.max(0, at - submitted)) end
elseif target == 'queued' then
  -- A holder handing its job back did not lose it: that delivery does not count towards MAX_DELIVERIES.
  if ARGV[5] ~= '' then redis.call('HINCRBY', KEYS[1], 'deliveries', -1) end
  local queued = KEYS[3]
  if redis.call('HGET', KEYS[1], 'lane') == 'interactive' then queued = KEYS[7] end
  redis.call('ZADD', queued, at, ARGV[1])
else
  redis.call('DEL', KEYS[2])
  local image = redis.call('HMGET', KEYS[1], 'image', 'image_owned')
  if image[2] == '1' then redis.call('ZADD', KEYS[9], 'XX', at, image[1]) end
  if batch_exists then redis.call('PUBLISH', ARGV[9], target) end
end
redis.call('HINCRBY', KEYS[5], 'jobs_' .. target, 1)
redis.call('PUBLISH', ARGV[8], target)
local due, reports_due = '', ''
if batch_exists and target ~= 'running' and target ~= 'queued' then
  due = mark_callback_due(KEYS[6], KEYS[8], ARGV[1], redis.call('HGET', KEYS[1], 'finished_at'))
  reports_due = mark_reports_due(KEYS[6], """ + REPORT_CHANNELS_LUA + """, {KEYS[10], KEYS[11]})
end
if reports_due ~= '' then return {1, status, due, string.match(KEYS[6], '([^:]+)$'), reports_due} end
return {1, status, due}
"""

_ROOM = """
-- refusal_of(places, bytes, bulk queued, interactive queued, admissions, admissions' bytes, MAX_QUEUE, budget):
-- nil when `places` more jobs fit in the queue (MAX_QUEUE -1: no limit) and `bytes` more in Redis' byte budget
-- (0: 90% of Redis' maxmemory, if any), counting what admissions still being stored have reserved; otherwise the
-- refusal to answer: {'full', jobs queued or reserved now} or {'store-full', bytes used or reserved now, the budget}.
local function refusal_of(places, bytes, bulk, interactive, admissions, admission_bytes, max_queue, budget)
  local taken = redis.call('ZCARD', bulk) + redis.call('ZCARD', interactive)
  for _, reserved in ipairs(redis.call('HVALS', admissions)) do taken = taken + tonumber(reserved) end
  if tonumber(max_queue) >= 0 and taken + places > tonumber(max_queue) then return {'full', tostring(taken)} end
  local memory = redis.call('INFO', 'memory')
  budget = tonumber(budget)
  if budget == 0 then budget = math.floor(0.9 * tonumber(string.match(memory, 'maxmemory:(%d+)'))) end
  if budget > 0 then
    local used = tonumber(string.match(memory, 'used_memory:(%d+)'))
    for _, reserved in ipairs(redis.call('HVALS', admission_bytes)) do used = used + tonumber(reserved) end
    if used + bytes > budget then return {'store-full', tostring(used), tostring(budget)} end
  end
  return nil
end
"""

OPEN_BATCH = NOW + _ROOM + """
-- Opens a batch whose jobs are stored as they are read: places for all of them are reserved at once, so the queue
-- never passes MAX_QUEUE whatever else is admitted meanwhile; or answers the batch an idempotent repeat names.
-- KEYS[1] batch hash   KEYS[2] idempotency key (unused without one)   KEYS[3] bulk lane's queued registry
-- KEYS[4] interactive lane's queued registry   KEYS[5] admissions hash (batch id -> places still reserved)
-- KEYS[6] admissions' bytes (batch id -> bytes of Redis still reserved)
-- ARGV[1] MAX_QUEUE (-1: no limit)   ARGV[2] TTL   ARGV[3] created_at   ARGV[4] owner   ARGV[5] explain ('1', '0')
-- ARGV[6] lane   ARGV[7] batch id   ARGV[8] its number of jobs   ARGV[9] the idempotency fingerprint ('' without
-- a key)   ARGV[10] callback URL ('' without one)   ARGV[11] the batch's URL   ARGV[12] its CSV's URL
-- ARGV[13] the bytes the batch will store in Redis   ARGV[14] the byte budget (0: 90% of Redis' maxmemory, if any)
-- KEYS[7] the batch's study header   ARGV[15] where its report goes by C-STORE ('' nowhere)   ARGV[16] by STOW-RS
-- ('' nowhere)   ARGV[17] the study header (DICOM bytes; '' without reports)
-- The idempotency key holds JSON {batch_id, fingerprint, state}: state `admitting` until the batch's admission
-- closes with every job stored, then `admitted` (CLOSE_ADMISSION).
-- Returns {'created'} (also to a repeat of this very call), {'repeat', what the idempotency key holds},
-- {'full', jobs queued or reserved now} or {'store-full', bytes used or reserved now, the budget}.
if redis.call('EXISTS', KEYS[1]) == 1 then return {'created'} end
if ARGV[9] ~= '' then
  local earlier = redis.call('GET', KEYS[2])
  if earlier then return {'repeat', earlier} end
end
local total = tonumber(ARGV[8])
local bytes = tonumber(ARGV[13])
local refusal = refusal_of(total, bytes, KEYS[3], KEYS[4], KEYS[5], KEYS[6], ARGV[1], ARGV[14])
if refusal then return refusal end
redis.call('HSET', KEYS[1], 'created_at', ARGV[3], 'total', total, 'owner', ARGV[4], 'lane', ARGV[6],
           'explain', ARGV[5], 'queued', total, 'admitted', 0, 'admitting_at', now())
if ARGV[10] ~= '' then
  redis.call('HSET', KEYS[1], 'callback_url', ARGV[10], 'callback_batch_url', ARGV[11], 'callback_csv_url', ARGV[12],
             'callback_state', 'pending', 'callback_attempts', 0)
end
for i, channel in ipairs(""" + REPORT_CHANNELS_LUA + """) do
  if ARGV[14 + i] ~= '' then
    redis.call('HSET', KEYS[1], channel .. '_to', ARGV[14 + i], channel .. '_state', 'pending',
               channel .. '_attempts', 0)
  end
end
if ARGV[17] ~= '' then redis.call('SET', KEYS[7], ARGV[17], 'EX', ARGV[2]) end
if ARGV[9] ~= '' then
  redis.call('HSET', KEYS[1], 'idempotency_key', KEYS[2])
  redis.call('SET', KEYS[2], cjson.encode({batch_id = ARGV[7], fingerprint = ARGV[9], state = 'admitting'}),
             'EX', ARGV[2])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
if total > 0 then redis.call('HSET', KEYS[5], ARGV[7], total) end
if bytes > 0 then redis.call('HSET', KEYS[6], ARGV[7], bytes) end
return {'created'}
"""

ADD_JOBS = _MARK_CALLBACK_DUE + """
-- Stores the next jobs of a batch still being admitted, queued in its lane; a job whose image is known bad already
-- is stored failed, with its problem, and never queued. The images of the jobs to queue were stored just before,
-- apart. The jobs name their place in the batch (ARGV[5]): a repeat of this call stores nothing again.
-- KEYS[1] batch hash   KEYS[2] batch's job list   KEYS[3] the lane's queued registry   KEYS[4] metrics hash
-- KEYS[5] admissions hash   KEYS[6] callbacks' due registry   KEYS[7] admissions' bytes
-- KEYS[8..] per job: its hash, its image (in Redis)
-- ARGV[1] TTL   ARGV[2] now (ISO 8601)   ARGV[3] batch channel   ARGV[4] batch id
-- ARGV[5] how many of the batch's jobs were stored before these (-1 in a batch that grows as its images arrive, whose
-- writers store in no set order: GROW_BATCH)   ARGV[6] the bytes these take in Redis
-- ARGV[7..] per job: id, filename, problem (JSON; '' for a job to queue), where its image is ('' in Redis; an
-- s3:// location), whether the service wrote it there ('1', '0')
-- Returns 'added', 'repeat' (these very jobs are stored already), or, removing the images: 'gone' (the batch has
-- expired), 'closed' (its admission was closed: the reconciler took its API for dead), 'out-of-order' (another
-- writer's jobs stand at that place).
local count = (#ARGV - 6) / 5
local function drop_images()
  for i = 0, count - 1 do redis.call('DEL', KEYS[9 + 2 * i]) end
end
if redis.call('EXISTS', KEYS[1]) == 0 then drop_images() return 'gone' end
local batch = redis.call('HMGET', KEYS[1], 'created_at', 'owner', 'explain', 'lane', 'admitted', 'admitting_at')
local admitted, offset = tonumber(batch[5]), tonumber(ARGV[5])
if (offset < 0 or admitted == offset + count) and count > 0 and redis.call('HGET', KEYS[8], 'batch_id') == ARGV[4] then
  return 'repeat'
end
if not batch[6] then drop_images() return 'closed' end
if offset >= 0 and admitted ~= offset then drop_images() return 'out-of-order' end
local at = now()
for i = 0, count - 1 do
  local id, filename, problem, image, owned = ARGV[7 + 5 * i], ARGV[8 + 5 * i], ARGV[9 + 5 * i], ARGV[10 + 5 * i],
                                              ARGV[11 + 5 * i]
  local record = KEYS[8 + 2 * i]
  redis.call('RPUSH', KEYS[2], id)
  redis.call('HSET', record, 'id', id, 'batch_id', ARGV[4], 'filename', filename, 'created_at', batch[1],
             'deliveries', '0', 'owner', batch[2], 'explain', batch[3], 'lane', batch[4], 'submitted', at)
  if image ~= '' then redis.call('HSET', record, 'image', image, 'image_owned', owned) end
  if problem == '' then
    redis.call('HSET', record, 'status', 'queued')
    redis.call('ZADD', KEYS[3], at, id)
  else
    redis.call('HSET', record, 'status', 'failed', 'error', problem, 'finished_at', ARGV[2])
    redis.call('HINCRBY', KEYS[1], 'queued', -1)
    redis.call('HINCRBY', KEYS[1], 'failed', 1)
    redis.call('HINCRBY', KEYS[4], 'jobs_failed', 1)
    redis.call('PUBLISH', ARGV[3], 'failed')
  end
  redis.call('EXPIRE', record, ARGV[1])
end
if count > 0 then redis.call('EXPIRE', KEYS[2], ARGV[1]) end
redis.call('HINCRBY', KEYS[1], 'admitted', count)
redis.call('HSET', KEYS[1], 'admitting_at', at)
if redis.call('HINCRBY', KEYS[5], ARGV[4], 0 - count) <= 0 then redis.call('HDEL', KEYS[5], ARGV[4]) end
local bytes = 0 - tonumber(ARGV[6])  -- 0 - x: never -0, which HINCRBY refuses
if redis.call('HEXISTS', KEYS[7], ARGV[4]) == 1 and redis.call('HINCRBY', KEYS[7], ARGV[4], bytes) <= 0 then
  redis.call('HDEL', KEYS[7], ARGV[4])
end
redis.call('HINCRBY', KEYS[4], 'jobs_submitted', count)
mark_callback_due(KEYS[1], KEYS[6], ARGV[4], ARGV[2])  -- every job of the batch may have been stored failed
return 'added'
"""

CLOSE_ADMISSION = ALLOW_OOM + _MARK_CALLBACK_DUE + _MARK_REPORTS_DUE + """
-- Ends a batch's admission: its remaining reserved places are freed, and no job is added to it afterwards. A batch
-- whose admission was cut short (its API died, or gave up) keeps the jobs it has: its total becomes what was
-- admitted, so it can finish, and it says so; its idempotency key is freed, so that the client's retry is admitted
-- anew rather than answered with part of its upload. A batch admitted whole marks its idempotency key so, unless it
-- is withdrawn (its API failed to enqueue it and cancels it): its key is freed in this same step, so that no repeat
-- is ever answered with a batch being withdrawn.
-- KEYS[1] batch hash   KEYS[2] admissions hash   KEYS[3] callbacks' due registry
-- KEYS[4] the batch's idempotency key (the batch hash again when it has none)   KEYS[5] admissions' bytes
-- KEYS[6], KEYS[7] the report channels' due registries (report_dicom, report_stow)
-- ARGV[1] batch id   ARGV[2] now (ISO 8601)   ARGV[3] '1' if the batch is withdrawn, else '0'
-- Returns the number of jobs that were never admitted.
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local total = tonumber(redis.call('HGET', KEYS[1], 'total'))
local missing = total - tonumber(redis.call('HGET', KEYS[1], 'admitted') or 0)
if missing > 0 then
  redis.call('HINCRBY', KEYS[1], 'queued', -missing)
  redis.call('HSET', KEYS[1], 'total', total - missing, 'interrupted', missing)
  mark_callback_due(KEYS[1], KEYS[3], ARGV[1], ARGV[2])  -- what it kept may all have finished already
end
redis.call('HDEL', KEYS[1], 'admitting_at')
if redis.call('HGET', KEYS[1], 'open_ended') == '1' then
  mark_callback_due(KEYS[1], KEYS[3], ARGV[1], ARGV[2])  -- a batch that grew as it arrived ends only now
end
mark_reports_due(KEYS[1], """ + REPORT_CHANNELS_LUA + """, {KEYS[6], KEYS[7]})  -- its jobs may all have finished
if KEYS[4] ~= KEYS[1] then
  local remembered = redis.call('GET', KEYS[4])
  if remembered then
    local entry = cjson.decode(remembered)
    if entry['batch_id'] == ARGV[1] then
      if missing > 0 or ARGV[3] == '1' then
        redis.call('DEL', KEYS[4])
      else
        entry['state'] = 'admitted'
        redis.call('SET', KEYS[4], cjson.encode(entry), 'KEEPTTL')
      end
    end
  end
end
return missing
"""

GROW_BATCH = NOW + _ROOM + """
-- Reserves one more job in a batch whose size is not known when it opens (a DICOM study: its instances arrive one
-- by one, over any number of associations): its place in the queue and its bytes in Redis, refused as OPEN_BATCH
-- refuses a whole batch; its total grows by one. The batch stays `open_ended`: it is not done, and its callback not
-- due, before its admission closes. The reservation names the job it is for (a repeat answers the same place).
-- KEYS[1] batch hash   KEYS[2] bulk lane's queued registry   KEYS[3] interactive lane's queued registry
-- KEYS[4] admissions hash   KEYS[5] admissions' bytes   KEYS[6] the job's hash (not stored yet)
-- KEYS[7] a key that must hold the batch id for the batch to grow (the batch hash again: no such condition)
-- ARGV[1] batch id   ARGV[2] MAX_QUEUE (-1: no limit)   ARGV[3] the bytes the job will take in Redis
-- ARGV[4] the byte budget (0: 90% of Redis' maxmemory, if any)   ARGV[5] TTL
-- Returns {'reserved', a number never given to another job of the batch}, {'closed'} (the admission is closed, or
-- KEYS[7] names another batch), {'full', ...} or {'store-full', ...} (as OPEN_BATCH).
local earlier = redis.call('HGET', KEYS[6], 'place')
if earlier then return {'reserved', earlier} end
if redis.call('HEXISTS', KEYS[1], 'admitting_at') == 0 then return {'closed'} end
if KEYS[7] ~= KEYS[1] and redis.call('GET', KEYS[7]) ~= ARGV[1] then return {'closed'} end
local bytes = tonumber(ARGV[3])
local refusal = refusal_of(1, bytes, KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[2], ARGV[4])
if refusal then return refusal end
local place = redis.call('HINCRBY', KEYS[1], 'places', 1) - 1
redis.call('HINCRBY', KEYS[1], 'total', 1)
redis.call('HINCRBY', KEYS[1], 'queued', 1)
redis.call('HSET', KEYS[1], 'open_ended', '1', 'admitting_at', now())
redis.call('HINCRBY', KEYS[4], ARGV[1], 1)
if bytes > 0 then redis.call('HINCRBY', KEYS[5], ARGV[1], bytes) end
redis.call('HSET', KEYS[6], 'place', place)
redis.call('EXPIRE', KEYS[6], ARGV[5])
return {'reserved', tostring(place)}
"""

SHRINK_BATCH = ALLOW_OOM + """
-- Gives back a place GROW_BATCH reserved whose job will not be stored (its image could not be written): the batch's
-- total, its reserved place and bytes shrink by one job again. A repeat, or a job stored meanwhile, changes nothing.
-- KEYS[1] batch hash   KEYS[2] admissions hash   KEYS[3] admissions' bytes   KEYS[4] the job's hash
-- ARGV[1] batch id   ARGV[2] the bytes reserved for the job in Redis
-- Returns 1 if the place was given back, else 0.
if redis.call('HEXISTS', KEYS[4], 'id') == 1 or redis.call('DEL', KEYS[4]) == 0 then return 0 end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'total', -1)
  redis.call('HINCRBY', KEYS[1], 'queued', -1)
end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 and redis.call('HINCRBY', KEYS[2], ARGV[1], -1) <= 0 then
  redis.call('HDEL', KEYS[2], ARGV[1])
end
local bytes = 0 - tonumber(ARGV[2])
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 and redis.call('HINCRBY', KEYS[3], ARGV[1], bytes) <= 0 then
  redis.call('HDEL', KEYS[3], ARGV[1])
end
return 1
"""

KEEP_ADMITTING = NOW + """
-- Tells the reconciler a batch still being admitted is alive though it stores nothing now (a DICOM study waiting,
-- within its quiet time, for more instances): its admission's last sign of life becomes now.
-- KEYS[1] batch hash
-- Returns 1, or 0 if its admission is closed.
if redis.call('HEXISTS', KEYS[1], 'admitting_at') == 0 then return 0 end
redis.call('HSET', KEYS[1], 'admitting_at', now())
return 1
"""
