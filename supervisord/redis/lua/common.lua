-- Shared by every jobsup script; ARGV[1] is always the keys' base, '{prefix}'
-- (the braces make the prefix every key's hash tag: one Redis Cluster slot),
-- and KEYS[1] is the prefix's nodes set, declared so that Redis routes the call
-- to that slot.  Key names must match supervisord/redis/keys.py.
local P = ARGV[1]
local function k_job(id) return P .. ':job:' .. id end
local function k_hist(id) return P .. ':hist:' .. id end
local function k_out(id) return P .. ':out:' .. id end
local function k_queue(jtype) return P .. ':queue:' .. jtype end
local function k_owned(node) return P .. ':owned:' .. node end
local function k_node(node) return P .. ':node:' .. node end
local K_SCHEDULED = P .. ':scheduled'
local K_EXPIRY = P .. ':expiry'
local K_DLQ = P .. ':dlq'
local K_NODES = P .. ':nodes'

-- Move a job between status indexes; the score is its creation time so that
-- listings come newest first.
local function index_status(id, old, new, created)
  if old and old ~= '' and old ~= new then
    redis.call('ZREM', P .. ':idx:status:' .. old, id)
  end
  redis.call('ZADD', P .. ':idx:status:' .. new, created, id)
end

-- Put a job at its place in its type's queue: higher priority first, then
-- older ids (ids sort by submission time).  One queue per job type, so that a
-- type held back (open circuit) never stands in front of the others.
local function enqueue(id, jtype, priority)
  redis.call('ZADD', k_queue(jtype), -tonumber(priority), id)
end

local function push_history(id, entry)
  if entry and entry ~= '' then
    redis.call('RPUSH', k_hist(id), entry)
  end
end

local function owner_of(token)
  if not token then return nil end
  local sep = string.find(token, '|', 1, true)
  if not sep then return nil end
  return string.sub(token, 1, sep - 1)
end

-- A job given back to its queue while a cancel of it waits for its node (the
-- node had it held, unstarted, or stopped before it saw the flag) ends
-- cancelled instead of running again.  Returns true if it did.
local function cancel_if_asked(id, old_status, created, attempt, ttl, by, now)
  if redis.call('HGET', k_job(id), 'cancel_requested') ~= '1' then return false end
  redis.call('HSET', k_job(id), 'status', 'cancelled', 'finished_at', now, 'lease', '',
    'error', cmsgpack.pack({kind = 'cancelled', message = 'cancelled on request',
      attempt = tonumber(attempt)}))
  index_status(id, old_status, 'cancelled', created)
  redis.call('ZADD', K_EXPIRY, now + tonumber(ttl), id)
  push_history(id, cmsgpack.pack({t = now, status = 'cancelled', attempt = tonumber(attempt),
    node = by, reason = 'cancel requested', kind = 'cancelled'}))
  return true
end
