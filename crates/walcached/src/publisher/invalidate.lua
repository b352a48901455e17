#!lua flags=allow-oom
-- walcached's one invalidation script: deletes, bumps, markers and the announcement, atomically.
--
-- allow-oom: a Redis at maxmemory under noeviction refuses scripts that write unless they carry
-- this flag, and the stream would stall on the first flush; the deletes that free memory must
-- always run (Redis 7.0 or later).
--
-- ARGV[1] channel, ARGV[2] message ('' = publish nothing), ARGV[3] key prefix, ARGV[4] kind,
-- ARGV[5] floor of a namespace generation (µs since the Unix epoch), ARGV[6] this call's
-- marker token, ARGV[7] server, ARGV[8] now (ms since the Unix epoch, for people), ARGV[9] the
-- longest fill lease a library may hold (ms, MAX_LEASE_TTL), ARGV[10] n, then n marker entries
-- of five: marker key, expected token, alternative tokens (calls whose
-- reply was lost, comma-separated; '' = none), rule hash, lsn; then the items:
--   keys:  namespace, key, namespace, key, ...   (markers compared: a loss is reported)
--   tags:  namespace, tag, namespace, tag, ...   (markers compared: a loss is reported)
--   flush: namespace, namespace, ...             (markers repaired)
--   check: nothing                               (markers compared; publishes only if all hold)
--
-- Tags: each namespace keeps one hash `prefix:{ns}:tags` (no TTL) from tag to the time of its
-- last invalidation, µs on this server's clock (TIME: scripts replicate their effects, so a
-- replica stores the same numbers). Fields starting with a space are the library's bookkeeping
-- (no tag contains one): ' now' is the namespace's tag clock, which tagged leases move forward
-- too; ' ttl' the longest time-to-live (ms) of a tagged value of the namespace; ' cursor' where
-- pruning goes on. A bump sets the tag and the clock to max(TIME, clock + 1, tag + 1): past
-- every stamp taken before it, and never back, even if the server's clock steps back. A value
-- carrying the tag is current only if it was stamped after its tag's time. As the library's
-- invalidation does, each call then examines a few fields of each namespace it bumped from the
-- cursor and deletes tags older than TIME - (' ttl' + the longest lease): every value they
-- could make stale has expired. A flush leaves the hash alone: a process that has not heard of
-- the flush yet still reads the old generation, whose values the versions must keep judging.
--
-- Returns {published (PUBLISH's reply, or -1 when nothing was published), marker keys that did
-- not hold what the daemon last wrote (now owing a flush), namespaces whose items could not be
-- applied one by one (keys: their generation or schema set is unreadable; tags: their tags
-- hash was not a hash of numbers and was deleted, losing its versions): the caller flushes
-- them}.
local channel, message, prefix, kind = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local floor, token, server, now = tonumber(ARGV[5]), ARGV[6], ARGV[7], ARGV[8]
local max_lease_ms = tonumber(ARGV[9])
local n = tonumber(ARGV[10])
local first = 11 + 5 * n
local compare = (kind == 'keys' or kind == 'tags' or kind == 'check')

-- Move a counter (a generation) past its value and to at least `floor`: never
-- back, whatever the key held (a missing key, a wrong type or a non-number is replaced).
local function bump(key)
  local cur = redis.pcall('GET', key)
  local value = 0
  if type(cur) == 'string' then value = tonumber(cur) or 0 end
  redis.call('SET', key, string.format('%.0f', math.max(value + 1, floor)))
end

-- Delete `key` unless it is of type `want` (or absent): a key of the wrong type would make
-- every later command on it fail.
local function keep_only(key, want)
  local t = redis.call('TYPE', key)
  t = t.ok or t
  if t ~= want and t ~= 'none' then redis.call('DEL', key) end
end

local failed = {}
if kind == 'keys' then
  local gens, schemas = {}, {}
  for i = first, #ARGV, 2 do
    local ns, key = ARGV[i], ARGV[i + 1]
    if gens[ns] == nil then
      local g = redis.pcall('GET', prefix .. ':{' .. ns .. '}:gen')
      local s = redis.pcall('SMEMBERS', prefix .. ':{' .. ns .. '}:schemas')
      if type(g) == 'table' or s.err then
        gens[ns] = false
        failed[#failed + 1] = ns
      else
        gens[ns] = g or '0'
        schemas[ns] = s
      end
    end
    if gens[ns] then
      for _, sc in ipairs(schemas[ns]) do
        redis.call('DEL', prefix .. ':{' .. ns .. '}:g' .. gens[ns] .. ':s' .. sc .. ':' .. key)
      end
    end
  end
elseif kind == 'tags' then
  local t = redis.call('TIME')
  local time = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local hashes = {}
  for i = first, #ARGV, 2 do
    local ns, tag = ARGV[i], ARGV[i + 1]
    local hk = prefix .. ':{' .. ns .. '}:tags'
    if hashes[ns] == nil then
      -- A key of the wrong type would make every later bump (and every tagged read) fail.
      -- Deleting it loses the namespace's versions: reported, and the caller flushes it.
      local ty = redis.call('TYPE', hk)
      ty = ty.ok or ty
      if ty ~= 'hash' and ty ~= 'none' then
        redis.call('DEL', hk)
        failed[#failed + 1] = ns
      end
      hashes[ns] = true
    end
    local cur = redis.call('HMGET', hk, ' now', tag)
    local clock, version = tonumber(cur[1] or '0'), tonumber(cur[2] or '0')
    if clock == nil or version == nil then
      -- Not a number: the versions cannot be trusted to move forward. Same as above.
      redis.call('DEL', hk)
      failed[#failed + 1] = ns
      clock, version = 0, 0
    end
    local v = string.format('%.0f', math.max(time, clock + 1, version + 1))
    redis.call('HSET', hk, tag, v, ' now', v)
  end
  for ns in pairs(hashes) do
    local hk = prefix .. ':{' .. ns .. '}:tags'
    local h = redis.call('HMGET', hk, ' ttl', ' cursor')
    local horizon = time - ((tonumber(h[1]) or 0) + max_lease_ms) * 1000
    local page = redis.call('HSCAN', hk, h[2] or '0', 'COUNT', 16)
    for i = 1, #page[2], 2 do
      local f = page[2][i]
      if string.byte(f, 1) ~= 32 and (tonumber(page[2][i + 1]) or 0) < horizon then
        redis.call('HDEL', hk, f)
      end
    end
    redis.call('HSET', hk, ' cursor', page[1])
  end
elseif kind == 'flush' then
  for i = first, #ARGV do
    bump(prefix .. ':{' .. ARGV[i] .. '}:gen')
    keep_only(prefix .. ':{' .. ARGV[i] .. '}:schemas', 'set')
  end
end

-- Markers last: a script that failed above left them as they were.
local lost = {}
for i = 0, n - 1 do
  local b = 11 + 5 * i
  local mk, expected, alt, rule, lsn = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4]
  local holds = true
  if compare then
    local cur = redis.pcall('HMGET', mk, 'w', 'owed')
    holds = type(cur) == 'table' and not cur.err and cur[2] ~= '1'
      and (cur[1] == expected
        or (alt ~= '' and cur[1] and string.find(',' .. alt .. ',', ',' .. cur[1] .. ',', 1, true)))
  end
  keep_only(mk, 'hash')
  if holds then
    redis.call('HSET', mk, 'w', token, 'lsn', lsn, 'rule', rule, 'server', server, 'at', now)
    if not compare then redis.call('HSET', mk, 'owed', '0') end
  else
    redis.call('HSET', mk, 'owed', '1')
    lost[#lost + 1] = mk
  end
end

if message == '' or (kind == 'check' and #lost > 0) then
  return {-1, lost, failed}
end
return {redis.call('PUBLISH', channel, message), lost, failed}
