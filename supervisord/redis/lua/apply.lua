-- One loop pass of a node's state changes, in one atomic call.
-- ARGV: prefix, node, now, nops, ops, promote_limit, npools, pools, nroutes, routes
--   op:    kind id token n arg1..argn
--   pool:  name want ntypes (type has_breaker)...
--   route: type fallback fallback_pool fallback_timeout fallback_max_attempts
-- Returns { flags, promoted_types, reserved, next_due, circuit_changes }:
--   flags: one per op: '1' applied, '0' discarded (stale token or state),
--          '2' a retry turned final because the type's retry budget is spent,
--          'c' a requeue that ended the job cancelled (a cancel waited for it),
--          or the new job's id (a fallback)
--   Each op's arguments are a typed record in supervisord/redis/scripts.py.
--   reserved: 14 fields per job handed to this node (see store.Reserved)
--   circuit_changes: 'type=state' for every circuit that changed state
local node = ARGV[2]
local now = tonumber(ARGV[3])
local nops = tonumber(ARGV[4])
local flags, changes = {}, {}
local i = 5

local function live(id, token)
  local cur = redis.call('HMGET', k_job(id), 'lease', 'status', 'created_at', 'type',
    'priority', 'pool', 'attempt')
  if cur[1] ~= token then return nil end
  if cur[2] ~= 'running' and cur[2] ~= 'queued' then return nil end
  return cur
end

local function settle(id, cur, status, ttl, dead_letter, field, blob)
  if field then
    redis.call('HSET', k_job(id), 'status', status, 'finished_at', now, field, blob)
  else
    redis.call('HSET', k_job(id), 'status', status, 'finished_at', now)
  end
  redis.call('HDEL', k_owned(node), id)
  index_status(id, cur[2], status, cur[3])
  redis.call('ZADD', K_EXPIRY, now + tonumber(ttl), id)
  if status == 'failed' and dead_letter then redis.call('ZADD', K_DLQ, now, id) end
end

-- spec: '' (no breaker), 'S' (an attempt succeeded), 'F|failures|open_for'.
local function circuit(jtype, spec)
  if spec == nil or spec == '' then return end
  local key = P .. ':circuit:' .. jtype
  local c = redis.call('HMGET', key, 'state', 'failures')
  local state = c[1] or 'closed'
  if spec == 'S' then
    -- the common case (closed, no failures) reads only: no write, no AOF entry
    if c[2] and c[2] ~= '0' then redis.call('HSET', key, 'failures', 0) end
    if state ~= 'closed' then
      redis.call('HSET', key, 'state', 'closed', 'changed_at', now, 'trial', '')
      changes[#changes + 1] = jtype .. '=closed'
    end
    return
  end
  local _, _, threshold, open_for = string.find(spec, '^F|([%d.]+)|([%d.]+)$')
  local failures = redis.call('HINCRBY', key, 'failures', 1)
  if state == 'half_open' or (state == 'closed' and failures >= tonumber(threshold)) then
    redis.call('HSET', key, 'state', 'open', 'open_until', now + tonumber(open_for),
      'changed_at', now, 'trial', '')
    changes[#changes + 1] = jtype .. '=open'
  end
end

-- True while the type may retry: at most `budget` retries a minute, cluster-wide.
local function within_budget(jtype, budget)
  budget = tonumber(budget)
  if not budget or budget < 0 then return true end
  local key = P .. ':budget:' .. jtype .. ':' .. math.floor(now / 60)
  local used = redis.call('INCR', key)
  if used == 1 then redis.call('EXPIRE', key, 120) end
  return used <= budget
end

for _ = 1, nops do
  local kind, id, token, n = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  local a = {}
  for x = 1, n do a[x] = ARGV[i + 3 + x] end
  i = i + 4 + n
  local cur = live(id, token)
  local flag = cur and '1' or '0'
  if cur and kind == 'start' then
    if cur[2] ~= 'queued' then
      flag = '0'
    else
      redis.call('HSET', k_job(id), 'status', 'running', 'started_at', a[3], 'worker', a[1],
        'progress', 0, 'progress_message', '', 'progressed', '')
      index_status(id, cur[2], 'running', cur[3])
      push_history(id, a[2])
    end
  elseif cur and kind == 'ran' then
    -- a short attempt's start and success in one: worker, running history, started_at,
    -- result, final history, ttl, circuit
    if cur[2] ~= 'queued' then
      flag = '0'
    else
      redis.call('HSET', k_job(id), 'status', 'succeeded', 'started_at', a[3],
        'finished_at', now, 'worker', a[1], 'result', a[4], 'progress', 100,
        'progress_message', '')
      redis.call('HDEL', k_owned(node), id)
      index_status(id, cur[2], 'succeeded', cur[3])
      redis.call('ZADD', K_EXPIRY, now + tonumber(a[6]), id)
      redis.call('RPUSH', k_hist(id), a[2], a[5])
      circuit(cur[4], a[7])
    end
  elseif cur and kind == 'finish' then
    -- status, blob, history, ttl, circuit
    if a[1] == 'succeeded' then
      redis.call('HSET', k_job(id), 'progress', 100)
      settle(id, cur, a[1], a[4], true, 'result', a[2])
    else
      settle(id, cur, a[1], a[4], true, 'error', a[2])
    end
    push_history(id, a[3])
    circuit(cur[4], a[5])
  elseif cur and kind == 'retry' then
    -- error, history, run_at, flags, timeout, circuit, budget, final_history, final_ttl
    circuit(cur[4], a[6])
    redis.call('HDEL', k_owned(node), id)
    if not within_budget(cur[4], a[7]) then
      settle(id, cur, 'failed', a[9], true, 'error', a[1])
      push_history(id, a[8])
      flag = '2'
    else
      local run_at = tonumber(a[3])
      if string.find(a[4], 'a', 1, true) then redis.call('HINCRBY', k_job(id), 'attempt', 1) end
      if string.find(a[4], 'c', 1, true) then redis.call('HINCRBY', k_job(id), 'crashes', 1) end
      if string.find(a[4], 'r', 1, true) then
        redis.call('HINCRBY', k_job(id), 'rate_limited', 1)
      end
      if a[5] ~= '' then redis.call('HSET', k_job(id), 'timeout', a[5]) end
      -- the attempt is over: its token must not change this job any more
      redis.call('HSET', k_job(id), 'error', a[1], 'run_at', run_at, 'lease', '')
      if run_at > now then
        redis.call('HSET', k_job(id), 'status', 'scheduled')
        index_status(id, cur[2], 'scheduled', cur[3])
        redis.call('ZADD', K_SCHEDULED, run_at, id)
      else
        redis.call('HSET', k_job(id), 'status', 'queued')
        index_status(id, cur[2], 'queued', cur[3])
        enqueue(id, cur[4], cur[5])
      end
      push_history(id, a[2])
    end
  elseif cur and kind == 'fallback' then
    -- error, history, ttl, fallback type, its pool, max_attempts, timeout, new history,
    -- circuit.  The job ends failed (not a dead letter: its fallback carries on) and a
    -- new job of the fallback type, linked both ways, takes its payload.
    local src = redis.call('HMGET', k_job(id), 'payload', 'tags', 'tagidx')
    local new_id = id .. 'f' .. redis.call('HINCRBY', k_job(id), 'fallbacks', 1)
    redis.call('HSET', k_job(new_id), 'id', new_id, 'type', a[4], 'pool', a[5],
      'payload', src[1], 'priority', cur[5], 'status', 'queued', 'run_at', now,
      'attempt', 1, 'max_attempts', a[6], 'timeout', a[7], 'created_at', now,
      'tags', src[2] or '', 'tagidx', src[3] or '', 'key', '', 'crashes', 0,
      'rate_limited', 0, 'progress', 0, 'fallback_of', id)
    push_history(new_id, a[8])
    enqueue(new_id, a[4], cur[5])
    redis.call('ZADD', P .. ':idx:all', now, new_id)
    redis.call('ZADD', P .. ':idx:type:' .. a[4], now, new_id)
    index_status(new_id, nil, 'queued', now)
    if src[3] and src[3] ~= '' then
      for tag in string.gmatch(src[3], '([^\n]+)') do
        redis.call('ZADD', P .. ':idx:tag:' .. tag, now, new_id)
      end
    end
    redis.call('HSET', k_job(id), 'error', a[1], 'fallback_job', new_id)
    settle(id, cur, 'failed', a[3], false)
    push_history(id, a[2])
    circuit(cur[4], a[9])
    flag = new_id
  elseif cur and kind == 'requeue' then
    -- history, ttl of a cancelled record
    redis.call('HDEL', k_owned(node), id)
    if cancel_if_asked(id, cur[2], cur[3], cur[7], a[2], node, now) then
      flag = 'c'
    else
      redis.call('HSET', k_job(id), 'status', 'queued', 'lease', '')
      index_status(id, cur[2], 'queued', cur[3])
      enqueue(id, cur[4], cur[5])
      push_history(id, a[1])
    end
  elseif cur and kind == 'output' then
    -- data, limit, at, header: keep the last `limit` bytes; note which attempt wrote
    -- how much; an attempt's output after an earlier one's starts with its header
    local last = redis.call('HGET', k_job(id), 'output_run')
    if last and last ~= token and a[4] ~= '' then redis.call('APPEND', k_out(id), a[4]) end
    local len = redis.call('APPEND', k_out(id), a[1])
    local limit = tonumber(a[2])
    if len > limit then
      redis.call('SET', k_out(id), redis.call('GETRANGE', k_out(id), -limit, -1))
    end
    redis.call('HSET', k_job(id), 'output_run', token, 'output_at', a[3])
  elseif cur and kind == 'progress' then
    if cur[2] == 'running' then
      -- 'progressed' tells a handler that reported progress from one that never did
      -- (whose record still reads 100 once it succeeds)
      redis.call('HSET', k_job(id), 'progress', a[1], 'progress_message', a[2], 'progressed', 1)
    else
      flag = '0'
    end
  end
  flags[#flags + 1] = flag
end

-- Jobs whose time has come move from the schedule to their type's queue.
local promote_limit = tonumber(ARGV[i])
i = i + 1
local promoted = {}
if promote_limit > 0 then
  local due = redis.call('ZRANGEBYSCORE', K_SCHEDULED, '-inf', now, 'LIMIT', 0, promote_limit)
  local seen = {}
  for _, id in ipairs(due) do
    redis.call('ZREM', K_SCHEDULED, id)
    local cur = redis.call('HMGET', k_job(id), 'status', 'type', 'priority', 'created_at',
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

-- Which types a reservation may draw from, given their circuits.
local npools = tonumber(ARGV[i])
local pools_at = i + 1
local skip = 0
for _ = 1, npools do
  local ntypes = tonumber(ARGV[pools_at + skip + 2])
  skip = skip + 3 + 2 * ntypes
end
local routes = {}
local r = pools_at + skip
for _ = 1, tonumber(ARGV[r]) do
  routes[ARGV[r + 1]] = { ARGV[r + 2], ARGV[r + 3], ARGV[r + 4], ARGV[r + 5] }
  r = r + 5
end

-- Move up to `limit` queued jobs of a type whose circuit is open to its fallback type.
local function reroute(jtype, route, limit)
  local ids = redis.call('ZRANGE', k_queue(jtype), 0, limit - 1)
  for _, id in ipairs(ids) do
    redis.call('ZREM', k_queue(jtype), id)
    local f = redis.call('HMGET', k_job(id), 'priority', 'created_at', 'attempt', 'status')
    if f[4] == 'queued' then
      redis.call('HSET', k_job(id), 'type', route[1], 'pool', route[2], 'timeout', route[3],
        'max_attempts', route[4], 'rerouted_from', jtype)
      redis.call('ZREM', P .. ':idx:type:' .. jtype, id)
      redis.call('ZADD', P .. ':idx:type:' .. route[1], f[2], id)
      enqueue(id, route[1], f[1])
      push_history(id, cmsgpack.pack({t = now, status = 'queued', attempt = tonumber(f[3]),
        node = node, reason = 'circuit of ' .. jtype .. ' open: re-routed to ' .. route[1]}))
    end
  end
end

-- 'go', 'wait', or 'trial' (exactly one job may pass a circuit that is due a test).
local function gate(jtype)
  local key = P .. ':circuit:' .. jtype
  local c = redis.call('HMGET', key, 'state', 'open_until', 'trial')
  local state = c[1] or 'closed'
  if state == 'closed' then return 'go' end
  if state == 'open' and now < tonumber(c[2] or '0') then
    if routes[jtype] then reroute(jtype, routes[jtype], 100) end
    return 'wait'
  end
  if state == 'half_open' and c[3] and c[3] ~= '' then
    local trial = redis.call('HMGET', k_job(c[3]), 'status', 'type')
    if (trial[1] == 'running' or trial[1] == 'queued') and trial[2] == jtype then
      return 'wait'
    end
  end
  return 'trial'
end

local reserved = {}
local function hand_over(pool, jtype, id)
  redis.call('ZREM', k_queue(jtype), id)
  local f = redis.call('HMGET', k_job(id), 'type', 'payload', 'attempt', 'max_attempts',
    'timeout', 'crashes', 'priority', 'created_at', 'run_at', 'rate_limited', 'status',
    'started_at')
  if f[11] ~= 'queued' then return false end
  local token = node .. '|' .. redis.call('INCR', P .. ':leases')
  redis.call('HSET', k_job(id), 'lease', token)
  redis.call('HSET', k_owned(node), id, token)
  reserved[#reserved + 1] = pool
  reserved[#reserved + 1] = id
  reserved[#reserved + 1] = token
  for x = 1, 10 do reserved[#reserved + 1] = f[x] or '' end
  reserved[#reserved + 1] = f[12] or ''
  return true
end

-- Hand queued jobs to this node: merge the pool's type queues by (priority, id).
i = pools_at
for _ = 1, npools do
  local pool, want, ntypes = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local heads = {}
  for t = 1, ntypes do
    local jtype = ARGV[i + 1 + 2 * t]
    local g = 'go'
    if ARGV[i + 2 + 2 * t] == '1' then g = gate(jtype) end
    if g == 'trial' and want > 0 then
      local first = redis.call('ZRANGE', k_queue(jtype), 0, 0)
      if first[1] and hand_over(pool, jtype, first[1]) then
        redis.call('HSET', P .. ':circuit:' .. jtype, 'state', 'half_open', 'trial', first[1],
          'changed_at', now)
        changes[#changes + 1] = jtype .. '=half_open'
        want = want - 1
      end
    elseif g == 'go' then
      local rows = redis.call('ZRANGE', k_queue(jtype), 0, want - 1, 'WITHSCORES')
      if #rows > 0 then heads[#heads + 1] = { jtype = jtype, rows = rows, at = 1 } end
    end
  end
  i = i + 3 + 2 * ntypes
  while want > 0 do
    local best = nil
    for _, h in ipairs(heads) do
      if h.at < #h.rows then
        if not best then
          best = h
        else
          local s, bs = tonumber(h.rows[h.at + 1]), tonumber(best.rows[best.at + 1])
          if s < bs or (s == bs and h.rows[h.at] < best.rows[best.at]) then best = h end
        end
      end
    end
    if not best then break end
    local id = best.rows[best.at]
    best.at = best.at + 2
    if hand_over(pool, best.jtype, id) then want = want - 1 end
  end
end

local nxt = redis.call('ZRANGE', K_SCHEDULED, 0, 0, 'WITHSCORES')
return { table.concat(flags, ','), promoted, reserved, nxt[2] or '', changes }
