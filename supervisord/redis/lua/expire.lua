-- Expiry of jobs waiting in their queues (policies/expiry.py): a queued job of a
-- type with a max_age that nobody holds, that never started, and was submitted
-- more than max_age seconds ago ends failed, kind 'expired', as a dead letter.
-- Run when a master recovers its queue at start and from the janitor tick, so a
-- job past its age does not wait for a free worker to be found out.
-- ARGV: prefix, now, node, limit, ntypes, (type max_age label ttl)...
-- Returns the expired jobs as a flat list: id, type, attempt, message, ...
local now, node, limit = tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local out = {}
local i = 6
for _ = 1, tonumber(ARGV[5]) do
  local jtype, max_age, label, ttl = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], ARGV[i + 3]
  i = i + 4
  for _, id in ipairs(redis.call('ZRANGE', k_queue(jtype), 0, limit - 1)) do
    local f = redis.call('HMGET', k_job(id), 'status', 'lease', 'created_at', 'attempt',
      'started_at')
    local created = tonumber(f[3] or '')
    -- (a field that is not there reads as false)
    if f[1] == 'queued' and (not f[2] or f[2] == '') and created and
        now - created > max_age and f[4] == '1' and (not f[5] or tonumber(f[5]) == 0) then
      local msg = string.format('not started within max_age of %ss (waited %.1fs since submit)',
        label, now - created)
      redis.call('ZREM', k_queue(jtype), id)
      redis.call('HSET', k_job(id), 'status', 'failed', 'finished_at', now, 'error',
        cmsgpack.pack({kind = 'expired', message = msg, attempt = 1}))
      index_status(id, 'queued', 'failed', created)
      redis.call('ZADD', K_EXPIRY, now + tonumber(ttl), id)
      redis.call('ZADD', K_DLQ, now, id)
      push_history(id, cmsgpack.pack({t = now, status = 'failed', attempt = 1, node = node,
        reason = 'expired before it started', kind = 'expired', message = msg}))
      out[#out + 1] = id
      out[#out + 1] = jtype
      out[#out + 1] = msg
    end
  end
end
return out
