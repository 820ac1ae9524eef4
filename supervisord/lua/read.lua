-- Read many jobs in one call: whole records (hash + history) or just statuses.
-- ARGV: prefix, mode ('records' | 'status'), ids...
local mode = ARGV[2]
local out = {}
for k = 3, #ARGV do
  local id = ARGV[k]
  if mode == 'status' then
    out[#out + 1] = redis.call('HGET', k_job(id), 'status') or ''
  else
    out[#out + 1] = redis.call('HGETALL', k_job(id))
    out[#out + 1] = redis.call('LRANGE', k_hist(id), 0, -1)
  end
end
return out
