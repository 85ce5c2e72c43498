"""What this server writes under the Redis tier's keys besides codec values: the embed lock's
value format and the Lua scripts that take, release and check locks and save logits
atomically, and the replies that mean "this key holds something unexpected"."""

from __future__ import annotations

import re

#: replies that mean "this key holds something unexpected", not "Redis is unwell"
PER_KEY_ERRORS = ("WRONGTYPE",)
#: a binding as this server writes it: `image_decode.rgb_content_hash` (sha256 hex)
CONTENT_HASH = re.compile(rb"[0-9a-f]{64}")
#: a lock as this server writes it: this prefix + 32 lowercase hex (one token per holder)
LOCK_PREFIX = b"sam2serve-lock:v1:"

# KEYS[1] the embed lock; ARGV: this holder's value, lock time (ms), the lock prefix.
# 0: a live lock of another holder (wait for it); 1: taken; 2: taken over a stale one (no
# TTL or a longer one than ours, a value this server does not write, another Redis type).
LOCK_SCRIPT = """
local kind = redis.call('TYPE', KEYS[1]).ok
local ms = tonumber(ARGV[2])
if kind == 'string' then
  local ttl = redis.call('PTTL', KEYS[1])
  local held = redis.call('GET', KEYS[1])
  local n = string.len(ARGV[3])
  if ttl >= 0 and ttl <= ms and string.len(held) == n + 32
      and string.sub(held, 1, n) == ARGV[3] and string.find(held, '^[0-9a-f]+$', n + 1) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ms)
if kind == 'none' then return 1 end
return 2
"""
# KEYS[1] the embed lock; ARGV[1] this holder's value: delete it only while it is ours
UNLOCK_SCRIPT = """
if redis.call('TYPE', KEYS[1]).ok == 'string' and redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
# KEYS[1] the logits hash; ARGV: field, value, TTL (s). A key of another type is replaced
# (1: it was; 0: it was a hash or absent).
SAVE_LOGITS_SCRIPT = """
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'hash' and kind ~= 'none' then redis.call('DEL', KEYS[1]) end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
if kind ~= 'hash' and kind ~= 'none' then return 1 end
return 0
"""
