#!lua flags=allow-oom
-- walcached's one invalidation script: deletes, bumps, markers and the announcement, atomically.
--
-- allow-oom: a Redis at maxmemory under noeviction refuses scripts that write unless they carry
-- this flag, and the stream would stall on the first flush; the deletes that free memory must
-- always run (Redis 7.0 or later).
--
-- ARGV[1] channel, ARGV[2] message ('' = publish nothing), ARGV[3] key prefix,
-- ARGV[4] tag version ttl (ms), ARGV[5] kind, ARGV[6] floor (µs since the Unix epoch),
-- ARGV[7] this call's marker token, ARGV[8] server, ARGV[9] now (ms since the Unix epoch),
-- ARGV[10] n, then n marker entries of five: marker key, expected token, alternative tokens
-- (calls whose reply was lost, comma-separated; '' = none), rule hash, lsn; then the items:
--   keys:  namespace, key, namespace, key, ...   (markers compared: a loss is reported)
--   tags:  tag, tag, ...                         (markers repaired)
--   flush: namespace, namespace, ...             (markers repaired)
--   check: nothing                               (markers compared; publishes only if all hold)
--
-- Returns {published (PUBLISH's reply, or -1 when nothing was published), marker keys that did
-- not hold what the daemon last wrote (now owing a flush), namespaces whose keys could not be
-- deleted one by one (their generation or schema set is unreadable)}.
local channel, message, prefix, tag_ttl, kind = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local floor, token, server, now = tonumber(ARGV[6]), ARGV[7], ARGV[8], ARGV[9]
local n = tonumber(ARGV[10])
local first = 11 + 5 * n
local compare = (kind == 'keys' or kind == 'check')

-- Move a counter (a generation, a tag version) past its value and to at least `floor`: never
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
  for i = first, #ARGV do
    local vk = prefix .. ':tag:{' .. ARGV[i] .. '}:v'
    local mk = prefix .. ':tag:{' .. ARGV[i] .. '}:m'
    bump(vk)
    redis.call('PEXPIRE', vk, tag_ttl)
    local members = redis.pcall('SMEMBERS', mk)
    if not members.err then
      for j = 1, #members, 500 do
        redis.call('DEL', unpack(members, j, math.min(j + 499, #members)))
      end
    end
    redis.call('DEL', mk)
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
