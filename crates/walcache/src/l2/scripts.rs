//! The Lua scripts of the read path (one per L2 operation that must be atomic): each checks
//! and writes in one round trip, on keys of one namespace (one Redis Cluster slot).

use redis::Script;

pub(super) struct Scripts {
    pub(super) read: Script,
    pub(super) lease: Script,
    pub(super) fill: Script,
    pub(super) release: Script,
    pub(super) insert: Script,
    pub(super) invalidate_keys: Script,
    pub(super) invalidate_tag: Script,
    pub(super) flush: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Scripts {
            // KEYS: generation, tags. ARGV: value prefix, key suffix, the generation if known
            // ('' = read it), then tags whose versions to return with the value.
            read: Script::new(
                r"local g = ARGV[3]
if g == '' then g = redis.call('GET', KEYS[1]) or '0' end
local out = {g, redis.call('GET', ARGV[1] .. g .. ARGV[2])}
if #ARGV > 3 then
  local v = redis.call('HMGET', KEYS[2], unpack(ARGV, 4))
  for i = 1, #v do out[2 + i] = v[i] or '0' end
end
return out",
            ),
            // The miss path's one round trip. KEYS: generation, schemas, tags. ARGV: value
            // prefix, key suffix, lease, lease ttl (ms), bytes it may replace ('' = none),
            // schema, the value's ttl (ms) if it will carry tags ('0': untagged; a tagged stamp
            // comes from the namespace's tag clock, and the ttl is recorded first), then tags
            // whose versions to return with a value found. At the namespace's generation now:
            // {2, generation, what the key holds, versions...}, or the lease is taken and
            // {1, generation, stamp}.
            lease: Script::new(
                r"local g = redis.call('GET', KEYS[1]) or '0'
local k = ARGV[1] .. g .. ARGV[2]
local cur = redis.call('GET', k)
if cur and not (ARGV[5] ~= '' and cur == ARGV[5]) then
  local out = {2, g, cur}
  if #ARGV > 7 then
    local v = redis.call('HMGET', KEYS[3], unpack(ARGV, 8))
    for i = 1, #v do out[3 + i] = v[i] or '0' end
  end
  return out
end
redis.call('SET', k, ARGV[3], 'PX', ARGV[4])
redis.call('SADD', KEYS[2], ARGV[6])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ttl = tonumber(ARGV[7])
if ttl > 0 then
  local clock = redis.call('HMGET', KEYS[3], ' now', ' ttl')
  now = math.max(now, (tonumber(clock[1]) or 0) + 1)
  redis.call('HSET', KEYS[3], ' now', string.format('%.0f', now), ' ttl', string.format('%.0f', math.max(ttl, tonumber(clock[2]) or 0)))
end
return {1, g, string.format('%.0f', now)}",
            ),
            // KEYS: value, generation, tags. ARGV: lease, envelope, ttl (ms), generation,
            // stamp (µs), then the value's tags.
            fill: Script::new(
                r"if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[4] then redis.call('DEL', KEYS[1]) return -1 end
if #ARGV > 5 then
  local stamp = tonumber(ARGV[5])
  local v = redis.call('HMGET', KEYS[3], unpack(ARGV, 6))
  for i = 1, #v do
    if v[i] and tonumber(v[i]) >= stamp then redis.call('DEL', KEYS[1]) return -2 end
  end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1",
            ),
            // KEYS: generation. ARGV: value prefix, key suffix, lease, the lease's generation
            // ('' = not known: the namespace's generation now).
            release: Script::new(
                r"local g = ARGV[4]
if g == '' then g = redis.call('GET', KEYS[1]) or '0' end
local k = ARGV[1] .. g .. ARGV[2]
if redis.call('GET', k) == ARGV[3] then return redis.call('DEL', k) end
return 0",
            ),
            // KEYS: generation, schemas, tags. ARGV: value prefix, key suffix, envelope (its
            // stamp is written here), ttl (ms), schema, tagged ('1' or '0').
            insert: Script::new(
                r"local g = redis.call('GET', KEYS[1]) or '0'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if ARGV[6] == '1' then
  local clock = redis.call('HMGET', KEYS[3], ' now', ' ttl')
  now = math.max(now, (tonumber(clock[1]) or 0) + 1)
  redis.call('HSET', KEYS[3], ' now', string.format('%.0f', now), ' ttl', string.format('%.0f', math.max(tonumber(ARGV[4]), tonumber(clock[2]) or 0)))
end
local stamp, n = '', now
for i = 1, 8 do
  stamp = stamp .. string.char(n % 256)
  n = math.floor(n / 256)
end
local env = ARGV[3]
redis.call('SET', ARGV[1] .. g .. ARGV[2], string.sub(env, 1, 1) .. stamp .. string.sub(env, 10), 'PX', ARGV[4])
redis.call('SADD', KEYS[2], ARGV[5])
return g",
            ),
            invalidate_keys: Script::new(
                r"local g = redis.call('GET', KEYS[1]) or '0'
local schemas = redis.call('SMEMBERS', KEYS[2])
for i = 4, #ARGV do
  for _, s in ipairs(schemas) do
    redis.call('DEL', ARGV[1] .. g .. ':s' .. s .. ':' .. ARGV[i])
  end
end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1",
            ),
            // KEYS: tags. ARGV: channel, message, tag, max lease ttl (ms). The tag's time moves
            // past the namespace's tag clock (and past its own), so it follows every stamp
            // taken before; then a few fields too old to matter go (see the module docs).
            invalidate_tag: Script::new(
                r"local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local h = redis.call('HMGET', KEYS[1], ' now', ' ttl', ' cursor', ARGV[3])
local v = math.max(now, (tonumber(h[1]) or 0) + 1, (tonumber(h[4]) or 0) + 1)
redis.call('HSET', KEYS[1], ARGV[3], string.format('%.0f', v), ' now', string.format('%.0f', v))
local horizon = now - ((tonumber(h[2]) or 0) + tonumber(ARGV[4])) * 1000
local page = redis.call('HSCAN', KEYS[1], h[3] or '0', 'COUNT', 16)
for i = 1, #page[2], 2 do
  local f = page[2][i]
  if string.byte(f, 1) ~= 32 and (tonumber(page[2][i + 1]) or 0) < horizon then
    redis.call('HDEL', KEYS[1], f)
  end
end
redis.call('HSET', KEYS[1], ' cursor', page[1])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1",
            ),
            flush: Script::new(
                r"local g = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return g",
            ),
        }
    }
}
