"""Per-guild limits that server admins set, stored in Redis and enforced atomically across every bot process.

* model.py: `GuildLimits`, one guild's limits, every value range-checked (the one place the ranges are
  declared); a limit the admins never set follows the defaults from the settings (DREAMBOT_LIMIT_*), so
  changing a default reaches every guild that kept it.
* admin_input.py: what an admin types (`/dreamadmin set cooldown_s 30`) parsed into a value.
* stored.py: `LimitStore` reads and changes a guild's limits, keeps an audit trail, reports usage.
* words.py: blocked-word matching; refusals.py: what a refused member reads.
* limiter.py: `Limiter.acquire()` decides whether a dream may be queued. The static checks (paused, channel,
  blocked words, images and steps per dream) run there in Python; everything that counts (cooldown, active
  jobs, hourly/daily image quotas, the guild's queue) is checked AND consumed by one Lua script
  (acquire.lua), so a member firing through ten bots at once gets exactly what the limits allow. `release()`
  (release.lua) hands the job's slot back when it ends (and its images too, for a cancelled or failed job).
* buckets.py: how the quotas count (bucket widths, how a bucket is written and how long it counts), declared
  once for the scripts and the usage report.

Every key lives under ``dream:limits:{<guild>}:`` (the braces make a Redis Cluster keep a guild's keys
together); everything that counts expires on its own. See `dreamcore.keys.LimitKeys`.

The package holds no names of its own: each is imported from the module that defines it.
"""
