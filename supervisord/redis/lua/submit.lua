-- Write a batch of new jobs atomically.
-- ARGV: prefix, now, n, then per job 16 fields:
--   id type pool payload priority status run_at max_attempts timeout
--   created_at tags key key_ttl history_entry tagidx (newline-joined "k=v") lease
-- A job with a lease went straight to a worker of the node named in it: it is
-- stored as reserved by that node (status queued, lease set) instead of queued.
-- Returns per job: id, and '1' when it is new or '0' when an idempotency key
-- matched an existing job (then the id is the existing job's).
local now = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local out = {}
local i = 4
for _ = 1, n do
  local id, jtype, pool, payload = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local priority, status, run_at = ARGV[i + 4], ARGV[i + 5], ARGV[i + 6]
  local max_attempts, timeout, created = ARGV[i + 7], ARGV[i + 8], ARGV[i + 9]
  local tags, key, key_ttl, hist, tagidx = ARGV[i + 10], ARGV[i + 11], ARGV[i + 12],
    ARGV[i + 13], ARGV[i + 14]
  local lease = ARGV[i + 15]
  i = i + 16
  local existing = nil
  if key ~= '' then
    existing = redis.call('GET', P .. ':key:' .. key)
    if existing and redis.call('EXISTS', k_job(existing)) == 0 then existing = nil end
  end
  if existing then
    out[#out + 1] = existing
    out[#out + 1] = '0'
  else
    if key ~= '' then
      redis.call('SET', P .. ':key:' .. key, id, 'EX', math.max(1, math.floor(tonumber(key_ttl))))
    end
    redis.call('HSET', k_job(id),
      'id', id, 'type', jtype, 'pool', pool, 'payload', payload, 'priority', priority,
      'status', status, 'run_at', run_at, 'attempt', 1, 'max_attempts', max_attempts,
      'timeout', timeout, 'created_at', created, 'tags', tags, 'key', key,
      'crashes', 0, 'rate_limited', 0, 'progress', 0, 'tagidx', tagidx)
    push_history(id, hist)
    if lease ~= '' then
      redis.call('HSET', k_job(id), 'lease', lease)
      redis.call('HSET', k_owned(owner_of(lease)), id, lease)
    elseif status == 'scheduled' then
      redis.call('ZADD', K_SCHEDULED, run_at, id)
    else
      enqueue(id, jtype, priority)
    end
    redis.call('ZADD', P .. ':idx:all', created, id)
    redis.call('ZADD', P .. ':idx:type:' .. jtype, created, id)
    index_status(id, nil, status, created)
    if tagidx ~= '' then
      for tag in string.gmatch(tagidx, '([^\n]+)') do
        redis.call('ZADD', P .. ':idx:tag:' .. tag, created, id)
      end
    end
    out[#out + 1] = id
    out[#out + 1] = '1'
  end
end
return out
