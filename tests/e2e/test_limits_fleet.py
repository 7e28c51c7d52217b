"""One member fires /dream through all ten bot instances at once: exactly what the guild's limits allow
gets queued, whichever processes the requests land on."""

from __future__ import annotations

import pytest

from dreamcore.limits.stored import LimitStore
from dreamcore.queue import fair_order
from dreamcore.queue.rq_queues import queue_names
from tests.support.fleet import Fleet
from tests.support.standin import DiscordStandIn

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def ten_bots(redis_server, tiny_model_dir, tmp_path_factory):
    standin = DiscordStandIn().start()
    fleet = Fleet(standin, redis_server.url, tiny_model_dir, tmp_path_factory.mktemp("limits-fleet"))
    fleet.setup(10)
    for bot in fleet.bots:
        fleet.start_bot(bot)
    fleet.wait_bots_ready()
    yield fleet
    fleet.stop()
    standin.stop()


def _reset(rconn):
    for pattern in ("dream:limits:*", "rq:*"):
        for key in rconn.scan_iter(pattern):
            rconn.delete(key)


def _burst(fleet, users, **options):
    """One /dream per bot, all sent before any answer is read; returns (accepted, refusal texts)."""
    inters = [fleet.standin.send_slash(b.app.id, fleet.guild_id, b.channel_id, users[i % len(users)], "dream",
                                       {"prompt": f"burst {i}", **options})
              for i, b in enumerate(fleet.bots)]
    accepted, refused = 0, []
    for inter in inters:
        body = inter.wait_ack(5)
        assert not inter.late
        data = body.get("data") or {}
        if body["type"] == 4 and not (data.get("flags", 0) & 64) and data.get("content", "").startswith("Queued"):
            accepted += 1
        elif body["type"] == 4:
            refused.append(data.get("content", ""))
        else:  # deferred: read the outcome from the edited or follow-up message
            msgs = [m for m in fleet.standin.messages(int(inter.payload["channel_id"]))
                    if m.interaction_id == inter.id]
            texts = [m.content for m in msgs if not m.deleted]
            accepted += any(t.startswith("Queued") for t in texts)
            refused.extend(t for t in texts if not t.startswith("Queued"))
    return accepted, refused


@pytest.mark.parametrize("limit,value,options,users,expect,says", [
    ("user_max_active", "3", {}, 1, 3, "limit 3"),
    ("cooldown_s", "600", {}, 1, 1, "cooldown: try again in"),
    # Quotas count units of cost (dreamcore.cost): a 1024x1024, 40-step image is exactly one.
    ("user_images_hour", "5", {"count": 2, "steps": 40, "aspect": "1:1"}, 1, 2, "hourly"),
    ("user_images_day", "7", {"count": 3, "steps": 40, "aspect": "1:1"}, 1, 2, "daily"),
    ("guild_images_hour", "6", {"count": 2, "steps": 40, "aspect": "1:1"}, 10, 3, "hourly"),
    ("guild_max_queued", "4", {}, 10, 4, "limit 4"),
])
def test_ten_instances_cannot_be_raced_past_a_limit(ten_bots, rconn, limit, value, options, users, expect, says):
    _reset(rconn)
    fleet = ten_bots
    members = [fleet.user_id] + [fleet.standin.add_member(fleet.guild_id, f"m{limit}{i}") for i in range(users - 1)]
    store = LimitStore(rconn)
    for key, v in (("cooldown_s", "0"), ("user_max_active", "50"), (limit, value)):
        store.set(fleet.guild_id, key, v, actor_id=1)
    accepted, refused = _burst(fleet, members, **options)
    print(f"\n{limit}={value}: accepted {accepted}/10, refused {len(refused)}")
    assert accepted == expect
    assert len(refused) == 10 - expect
    assert all(says in text for text in refused), refused
    queued = fair_order.totals(rconn, queue_names()).jobs
    assert queued == expect
