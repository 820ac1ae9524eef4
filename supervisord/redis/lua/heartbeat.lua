-- A node's heartbeat and the search for dead nodes, in one round trip: every
-- node runs it several times per node_ttl, so it stays one SET, one SADD and
-- one EXISTS per registered node.  The SADD keeps a node that others gave up
-- on while it was alive (stalled, or cut off) registered, so it is watched
-- again.
-- ARGV: prefix, node, holder (this daemon's claim on the node id), ttl in ms
-- Returns the holder this beat replaced ('' if none), then every registered
-- node without a heartbeat.
local node, me, ttl = ARGV[2], ARGV[3], ARGV[4]
local was = redis.call('SET', k_node(node), me, 'PX', ttl, 'GET')
redis.call('SADD', K_NODES, node)
local out = { was or '' }
for _, other in ipairs(redis.call('SMEMBERS', K_NODES)) do
  if other ~= node and redis.call('EXISTS', k_node(other)) == 0 then
    out[#out + 1] = other
  end
end
return out
