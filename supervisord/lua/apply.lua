-- One loop pass of a node's state changes, in one atomic call.
-- ARGV: prefix, node, now, nops, ops (8 fields each: kind id token a b c d e),
--       promote_limit, npools, (pool, want) pairs
-- Returns { flags, promoted_pools, reserved, next_due }:
--   flags: one char per op, '1' applied, '0' discarded (stale token or state)
--   promoted_pools: pools that got jobs whose run_at came
--   reserved: 13 fields per job handed to this node (see store.Reserved)
local node = ARGV[2]
local now = tonumber(ARGV[3])
local nops = tonumber(ARGV[4])
local flags = {}
local i = 5

local function live(id, token)
  local cur = redis.call('HMGET', k_job(id), 'lease', 'status', 'created_at', 'pool', 'priority')
  if cur[1] ~= token then return nil end
  if cur[2] ~= 'running' and cur[2] ~= 'queued' then return nil end
  return cur
end

local function settle(id, cur, status, ttl)
  redis.call('HSET', k_job(id), 'status', status, 'finished_at', now)
  redis.call('HDEL', k_owned(node), id)
  index_status(id, cur[2], status, cur[3])
  redis.call('ZADD', K_EXPIRY, now + tonumber(ttl), id)
  if status == 'failed' then redis.call('ZADD', K_DLQ, now, id) end
end

for _ = 1, nops do
  local kind, id, token = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local a, b, c, d, e = ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6], ARGV[i + 7]
  i = i + 8
  local cur = live(id, token)
  local ok = cur ~= nil
  if ok and kind == 'start' then
    if cur[2] ~= 'queued' then
      ok = false
    else
      redis.call('HSET', k_job(id), 'status', 'running', 'started_at', c, 'worker', a,
        'progress', 0, 'progress_message', '')
      index_status(id, cur[2], 'running', cur[3])
      push_history(id, b)
    end
  elseif ok and kind == 'finish' then
    redis.call('HSET', k_job(id), (a == 'succeeded') and 'result' or 'error', b)
    if a == 'succeeded' then redis.call('HSET', k_job(id), 'progress', 100) end
    settle(id, cur, a, d)
    push_history(id, c)
  elseif ok and kind == 'retry' then
    local run_at = tonumber(c)
    if string.find(d, 'a', 1, true) then redis.call('HINCRBY', k_job(id), 'attempt', 1) end
    if string.find(d, 'c', 1, true) then redis.call('HINCRBY', k_job(id), 'crashes', 1) end
    if string.find(d, 'r', 1, true) then redis.call('HINCRBY', k_job(id), 'rate_limited', 1) end
    if e ~= '' then redis.call('HSET', k_job(id), 'timeout', e) end
    redis.call('HSET', k_job(id), 'error', a, 'run_at', run_at)
    redis.call('HDEL', k_owned(node), id)
    if run_at > now then
      redis.call('HSET', k_job(id), 'status', 'scheduled')
      index_status(id, cur[2], 'scheduled', cur[3])
      redis.call('ZADD', K_SCHEDULED, run_at, id)
    else
      redis.call('HSET', k_job(id), 'status', 'queued')
      index_status(id, cur[2], 'queued', cur[3])
      enqueue(id, cur[4], cur[5])
    end
    push_history(id, b)
  elseif ok and kind == 'requeue' then
    redis.call('HSET', k_job(id), 'status', 'queued')
    redis.call('HDEL', k_owned(node), id)
    index_status(id, cur[2], 'queued', cur[3])
    enqueue(id, cur[4], cur[5])
    push_history(id, b)
  elseif ok and kind == 'progress' then
    if cur[2] == 'running' then
      redis.call('HSET', k_job(id), 'progress', a, 'progress_message', b)
    else
      ok = false
    end
  end
  flags[#flags + 1] = ok and '1' or '0'
end

-- Jobs whose time has come move from the schedule to their pool's queue.
local promote_limit = tonumber(ARGV[i])
i = i + 1
local promoted = {}
if promote_limit > 0 then
  local due = redis.call('ZRANGEBYSCORE', K_SCHEDULED, '-inf', now, 'LIMIT', 0, promote_limit)
  local seen = {}
  for _, id in ipairs(due) do
    redis.call('ZREM', K_SCHEDULED, id)
    local cur = redis.call('HMGET', k_job(id), 'status', 'pool', 'priority', 'created_at',
      'attempt')
    if cur[1] == 'scheduled' then
      redis.call('HSET', k_job(id), 'status', 'queued')
      index_status(id, 'scheduled', 'queued', cur[4])
      enqueue(id, cur[2], cur[3])
      push_history(id, cmsgpack.pack({t = now, status = 'queued', attempt = tonumber(cur[5]),
        node = node, reason = 'due'}))
      if not seen[cur[2]] then
        seen[cur[2]] = true
        promoted[#promoted + 1] = cur[2]
      end
    end
  end
end

-- Hand queued jobs to this node.
local npools = tonumber(ARGV[i])
i = i + 1
local reserved = {}
for _ = 1, npools do
  local pool, want = ARGV[i], tonumber(ARGV[i + 1])
  i = i + 2
  while want > 0 do
    local popped = redis.call('ZPOPMIN', k_queue(pool), want)
    if #popped == 0 then break end
    for j = 1, #popped, 2 do
      local id = popped[j]
      local f = redis.call('HMGET', k_job(id), 'type', 'payload', 'attempt', 'max_attempts',
        'timeout', 'crashes', 'priority', 'created_at', 'run_at', 'rate_limited', 'status')
      if f[11] == 'queued' then
        local token = node .. '|' .. redis.call('INCR', P .. ':leases')
        redis.call('HSET', k_job(id), 'lease', token)
        redis.call('HSET', k_owned(node), id, token)
        local r = reserved
        r[#r + 1] = pool; r[#r + 1] = id; r[#r + 1] = token
        for x = 1, 10 do r[#r + 1] = f[x] or '' end
        want = want - 1
      end
    end
  end
end

local nxt = redis.call('ZRANGE', K_SCHEDULED, 0, 0, 'WITHSCORES')
return { table.concat(flags), promoted, reserved, nxt[2] or '' }
