-- Delete jobs past their retention, with every index entry that names them.
-- ARGV: prefix, now, limit
local now, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
local due = redis.call('ZRANGEBYSCORE', K_EXPIRY, '-inf', now, 'LIMIT', 0, limit)
for _, id in ipairs(due) do
  local f = redis.call('HMGET', k_job(id), 'type', 'status', 'key', 'tagidx')
  if f[1] then
    redis.call('ZREM', P .. ':idx:type:' .. f[1], id)
    redis.call('ZREM', P .. ':idx:status:' .. f[2], id)
    if f[3] and f[3] ~= '' and redis.call('GET', P .. ':key:' .. f[3]) == id then
      redis.call('DEL', P .. ':key:' .. f[3])
    end
    if f[4] and f[4] ~= '' then
      for tag in string.gmatch(f[4], '([^\n]+)') do
        redis.call('ZREM', P .. ':idx:tag:' .. tag, id)
      end
    end
  end
  redis.call('ZREM', P .. ':idx:all', id)
  redis.call('ZREM', K_DLQ, id)
  redis.call('ZREM', K_EXPIRY, id)
  redis.call('DEL', k_job(id), k_hist(id), k_out(id))
end
return #due
