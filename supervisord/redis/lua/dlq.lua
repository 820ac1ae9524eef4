-- The dead-letter set: run failed jobs again, or purge them.
-- ARGV: prefix, now, action ('retry' | 'purge'), by (node), ids... (none = all)
local now, action, by = tonumber(ARGV[2]), ARGV[3], ARGV[4]
local ids = {}
if #ARGV >= 5 then
  for k = 5, #ARGV do ids[#ids + 1] = ARGV[k] end
else
  ids = redis.call('ZRANGE', K_DLQ, 0, -1)
end
local done = {}
for _, id in ipairs(ids) do
  local cur = redis.call('HMGET', k_job(id), 'status', 'type', 'priority', 'created_at')
  if cur[1] == 'failed' and redis.call('ZSCORE', K_DLQ, id) then
    if action == 'retry' then
      redis.call('ZREM', K_DLQ, id)
      redis.call('ZREM', K_EXPIRY, id)
      redis.call('HSET', k_job(id), 'status', 'queued', 'attempt', 1, 'crashes', 0,
        'rate_limited', 0, 'lease', '', 'finished_at', '', 'run_at', now)
      redis.call('HDEL', k_job(id), 'cancel_requested')
      index_status(id, 'failed', 'queued', cur[4])
      enqueue(id, cur[2], cur[3])
      push_history(id, cmsgpack.pack({t = now, status = 'queued', attempt = 1, node = by,
        reason = 'retried from the dead-letter set'}))
    else
      redis.call('ZADD', K_EXPIRY, 0, id)
    end
    done[#done + 1] = id
  end
end
return done
