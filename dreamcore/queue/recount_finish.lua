-- Ends a reconcile: the tally becomes the counters. Returns the fields that changed, as
-- {field, old, new, ...}; -1 when the walk has not ended.
if redis.call('HGET', C.RECOUNT, C.RECOUNT_AT) ~= '' then return -1 end
local walked = redis.call('HGETALL', C.RECOUNT)
local kinds = {}  -- the counters' fields: what their templates start with
for _, t in ipairs({C.UNITS, C.SERVER_WAITING, C.SERVER_UNITS}) do
  kinds[#kinds + 1] = type(t) == 'string' and t or t[1]
end
local new = {}
for k = 1, #walked, 2 do
  local f = walked[k]
  local counted = false
  for _, p in ipairs(kinds) do counted = counted or string.sub(f, 1, #p) == p end
  if counted and tonumber(walked[k + 1]) > 0 then new[f] = walked[k + 1] end
end
local old = redis.call('HGETALL', C.COUNT)
local changed, seen = {}, {}
for k = 1, #old, 2 do
  local f, v = old[k], old[k + 1]
  seen[f] = true
  if new[f] ~= v then
    changed[#changed + 1] = f; changed[#changed + 1] = v; changed[#changed + 1] = new[f] or '0'
  end
end
for f, v in pairs(new) do
  if not seen[f] then changed[#changed + 1] = f; changed[#changed + 1] = '0'; changed[#changed + 1] = v end
end
redis.call('DEL', C.COUNT)
for f, v in pairs(new) do redis.call('HSET', C.COUNT, f, v) end
redis.call('DEL', C.RECOUNT)
return changed
