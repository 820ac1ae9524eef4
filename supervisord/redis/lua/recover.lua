-- Give back every job a node holds: on its own restart (reason 'interrupted'),
-- when another node finds it dead (reason 'lost'), or after a lost Redis
-- reply (reason 'resync', keeping the ids the node still knows).  No attempt
-- is burned.
-- ARGV: prefix, node (whose jobs), now, reason, by (the node doing it), ids to keep...
local node, now, reason, by = ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local keep = {}
for k = 6, #ARGV do keep[ARGV[k]] = true end
if reason == 'lost' then
  -- Judged dead from its heartbeat: unless it came back meanwhile (restarted
  -- under the same id), it leaves the registry with its jobs, in this one step.
  if redis.call('EXISTS', k_node(node)) == 1 then return 0 end
  redis.call('SREM', K_NODES, node)
end
local owned = redis.call('HGETALL', k_owned(node))
local n = 0
for j = 1, #owned, 2 do
  local id, token = owned[j], owned[j + 1]
  if not keep[id] then
    local cur = redis.call('HMGET', k_job(id), 'lease', 'status', 'created_at', 'type',
      'priority', 'attempt')
    if cur[1] == token and (cur[2] == 'queued' or cur[2] == 'running') and
        cancel_if_asked(id, cur[2], cur[3], cur[6], 604800, by, now) then
      n = n + 1
    elseif cur[1] == token and (cur[2] == 'queued' or cur[2] == 'running') then
      redis.call('HSET', k_job(id), 'status', 'queued', 'lease', '')
      index_status(id, cur[2], 'queued', cur[3])
      enqueue(id, cur[4], cur[5])
      push_history(id, cmsgpack.pack({t = now, status = 'queued', attempt = tonumber(cur[6]),
        node = by, reason = reason, kind = (reason == 'lost') and 'lost' or nil,
        message = (cur[2] == 'running') and ('was running on ' .. node) or
          ('was held by ' .. node)}))
      n = n + 1
    end
    redis.call('HDEL', k_owned(node), id)
  end
end
return n
