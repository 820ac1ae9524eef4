-- Cancel one job.  Queued and scheduled jobs end at once; for a running one, or
-- a queued one a node holds (reserved, or handed straight to a worker whose
-- start is not written yet), the flag is set and the holding node stops it:
-- the record becomes cancelled only once its handler has stopped (returns
-- 'running' or 'held', and the lease token).
-- ARGV: prefix, id, now, error_blob, ttl, by (node)
local id, now, err, ttl, by = ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6]
local cur = redis.call('HMGET', k_job(id), 'status', 'type', 'created_at', 'lease', 'attempt')
local status = cur[1]
if not status then return { 'missing' } end
if status == 'running' then
  redis.call('HSET', k_job(id), 'cancel_requested', 1)
  return { 'running', cur[4] or '' }
end
if status == 'queued' and cur[4] and cur[4] ~= '' then
  redis.call('HSET', k_job(id), 'cancel_requested', 1)
  return { 'held', cur[4] }
end
if status ~= 'queued' and status ~= 'scheduled' then return { status } end
if status == 'scheduled' then redis.call('ZREM', K_SCHEDULED, id) end
redis.call('ZREM', k_queue(cur[2]), id)
local owner = owner_of(cur[4])
if owner then redis.call('HDEL', k_owned(owner), id) end
redis.call('HSET', k_job(id), 'status', 'cancelled', 'finished_at', now, 'error', err,
  'lease', '')
index_status(id, status, 'cancelled', cur[3])
redis.call('ZADD', K_EXPIRY, now + tonumber(ttl), id)
push_history(id, cmsgpack.pack({t = now, status = 'cancelled', attempt = tonumber(cur[5]),
  node = by, reason = 'cancel requested', kind = 'cancelled'}))
return { 'cancelled', owner or '' }
