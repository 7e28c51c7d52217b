"""How the quotas count, declared once: the scripts (acquire.lua, release.lua) get these as constants
(limiter.py hands them over) and the usage report (stored.py) reads the counters by the same rule.

Quotas count units of cost (dreamcore.cost: one standard image is one unit, so the image-count limits keep
their meaning for a standard dream). They are bucket counters, so a submit costs the same for a guild that
made 20,000 images today as for one that made none: a hash per (window, member or guild) maps a bucket
number (floor(t / width)) to the units accepted in it, 1-minute buckets for the hour window and 10-minute
buckets for the day window, at most 61 and 145 live fields. A bucket b counts until (b + 1) * width + span,
the end of its bucket plus the window: never earlier than any of its images would in an exact rolling
window, so no span-long window ever holds more than the quota; the price is a wait up to one bucket
(1 min / 10 min) longer than exact. Active sets hold job ids scored by acceptance time.

Time is the caller's clock (seconds, a float; the tests drive it) or, by default, the Redis server's TIME,
which every bot host then shares. The scripts write every score and bound with %.17g, so a double survives
the trip to and from Redis exactly.
"""

from __future__ import annotations

# Compatibility: counters that releases before units (d105bc6) wrote in whole images read on as units (the
# scripts' HINCRBYFLOAT adds to an integer field); goes when: nothing to delete, no code is kept for them.

HOUR_BUCKET_S = 60  # bucket width of the hour window's counters
DAY_BUCKET_S = 600  # and of the day window's
# A bucket's hash field: its number, floor(t / width), in decimal (a printf format: Lua's string.format
# writes it, Python's % would write the same).
BUCKET_FIELD = "%d"
# Less than this many units is none: sums and differences of fractional costs leave float dust behind.
UNITS_EPS = 1e-6

# Compatibility: an older release's usage zsets (LimitKeys.old_user_usage / old_guild_usage) hold one member
# "<images><OLD_USAGE_SEP><job id>" per accepted dream; acquire.lua folds them into the buckets, release.lua
# removes a refunded job's member, stored.py counts the ones not folded yet; goes when every deployment is
# over 24 h past its upgrade to bucket counters (74a9068): those zsets and the job records beside them expire
# after 24 h.
OLD_USAGE_SEP = ":"


def counts_until(bucket: int, width: int, span: int) -> int:
    """When bucket number `bucket` of `width` seconds stops counting in a `span`-long window."""
    return (bucket + 1) * width + span

