"""Output safety: the worker's classifier (a tiny random ViT with a real NSFW classifier's labels, built and
saved offline, loaded back through from_pretrained like the real one) scores every image; each guild's policy,
set with /dreamadmin, decides what members see. The verdict is driven with the threshold: the tiny classifier
scores every image near 0.002, so 0 flags everything and the default 0.5 nothing."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from dreamcore import keys, moderation, params, results
from dreamcore.limits.model import LimitError
from dreamcore.limits.stored import LimitStore
from dreamcore.settings import load_settings
from tests.support.fleet import wait_until

pytestmark = pytest.mark.timeout(300)


# --- The policy, as a table -------------------------------------------------------------------------------


@pytest.mark.parametrize("score, threshold, action, nsfw_channel, expect", [
    (0.9, 0.5, "withhold", False, "withhold"),
    (0.9, 0.5, "withhold", True, "withhold"),  # the admin's choice holds in every channel
    (0.9, 0.5, "spoiler", False, "spoiler"),
    (0.9, 0.5, "age_restricted", True, "show"),
    (0.9, 0.5, "age_restricted", False, "withhold"),  # elsewhere the stricter action
    (0.4, 0.5, "withhold", False, "show"),
    (0.5, 0.5, "spoiler", False, "spoiler"),  # "at least the threshold"
    (0.001, 0.0, "spoiler", False, "spoiler"),  # 0 flags everything
    (1.0, 1.0, "withhold", False, "show"),  # 1 flags nothing
    (None, 0.0, "withhold", False, "show"),  # unscored (classifier off): nothing to go on
])
def test_verdicts(score, threshold, action, nsfw_channel, expect):
    assert moderation.verdict(score, threshold, action, nsfw_channel) == expect


def test_a_variation_is_judged_by_the_higher_of_its_own_and_its_sources_score():
    mod = moderation.moderate([0.01, 0.02], source_score=0.8, threshold=0.5, action="spoiler", channel_nsfw=False)
    assert mod.verdicts == ["spoiler", "spoiler"] and mod.scores == [0.8, 0.8]
    assert moderation.moderate([0.01], None, 0.5, "spoiler", False).verdicts == ["show"]


def test_notes_say_what_happened_without_scores_in_public():
    mod = moderation.moderate([0.9, 0.1, 0.7], None, 0.5, "withhold", False)
    assert mod.withheld == [0, 2] and mod.shown == [1]
    assert mod.public_note() == "-# 🛡️ 2 of 3 images were held back by this server's content filter."
    private = mod.private_note("0123456789abcdef")
    assert "image 1 (score 0.90), image 3 (score 0.70) were held back" in private and "0.50 or more" in private
    assert mod.counts() == {"withheld": 2}
    spoiler = moderation.moderate([0.9], None, 0.5, "spoiler", False)
    assert "Content note: the image is behind a spoiler" in spoiler.public_note()
    assert spoiler.private_note("0123456789abcdef") is None and spoiler.counts() == {"spoilered": 1}
    shown = moderation.moderate([0.9], None, 0.5, "age_restricted", True)
    assert shown.public_note() is None and shown.counts() == {"shown_age_restricted": 1}


def test_the_policy_is_a_guild_setting_with_clear_errors(rconn):
    store = LimitStore(rconn, load_settings())
    assert store.get(7).nsfw_threshold == 0.5 and store.get(7).nsfw_action == "withhold"
    assert store.set(7, "nsfw_threshold", "0.35", actor_id=1).nsfw_threshold == 0.35
    assert store.set(7, "nsfw_action", "Age-Restricted", actor_id=1).nsfw_action == "age_restricted"
    assert store.set(7, "adult_words", "lewd, boudoir", actor_id=1).adult_words == ["lewd", "boudoir"]
    assert store.set(7, "adult_words", "+nude", actor_id=1).adult_words == ["lewd", "boudoir", "nude"]
    for key, value, message in [("nsfw_threshold", "1.5", "nsfw_threshold must be between 0.0 and 1.0, got 1.5"),
                                ("nsfw_threshold", "half", "nsfw_threshold must be a number between 0.0 and 1.0, got 'half'"),
                                ("nsfw_action", "blur", "nsfw_action must be withhold, spoiler or age_restricted")]:
        with pytest.raises(LimitError, match=message.replace(".", r"\.")):
            store.set(7, key, value, actor_id=1)
    assert [e["key"] for e in store.audit(7)][:3] == ["adult_words", "adult_words", "nsfw_action"]
    assert store.get(7).nsfw_threshold == 0.35  # a refused change changed nothing


# --- The classifier --------------------------------------------------------------------------------------


def test_the_classifier_loads_like_a_hub_model_and_scores_a_batch(tiny_model_dir, tmp_path):
    from worker.classifier import SafetyChecker
    from worker.weights import ModelLoadError

    checker = SafetyChecker.load(str(tiny_model_dir / "safety"), ["nsfw"], "cpu")
    images = [Image.new("RGB", (64, 48), c) for c in ("white", "black", "red")] + [Image.new("L", (1024, 1024))]
    scores = checker.scores(images)
    assert len(scores) == 4 and all(0.0 < s < 0.05 for s in scores)
    assert checker.scores(images[:1]) == scores[:1]  # one image alone scores as it does in the batch
    with pytest.raises(ModelLoadError, match=r"^DREAMBOT_SAFETY_LABELS=porn: none of these is a label .*normal, nsfw"):
        SafetyChecker.load(str(tiny_model_dir / "safety"), ["porn"], "cpu")
    with pytest.raises(ModelLoadError, match=r"^DREAMBOT_SAFETY_MODEL=.*: no classifier found there .*"
                                             r"DREAMBOT_SAFETY_CHECK=false turns"):
        SafetyChecker.load(str(tmp_path), ["nsfw"], "cpu")


@pytest.fixture
def worker_run(tiny_env, rconn):
    """Run queued dreams through the real worker (tiny SDXL, tiny classifier) in this process."""
    from dreamcore.settings import get_settings
    from worker.runner import load_pipeline, make_worker

    pipeline = load_pipeline(get_settings())

    def run(checker="load", **overrides):
        settings = get_settings().model_copy(update=overrides)
        kw = {} if checker == "load" else {"checker": checker}
        make_worker(settings, rconn, pipeline, name="safety-worker", **kw).work(burst=True, logging_level="WARNING")
    return run


def _queue(rconn, **req):
    from dreamcore.job import make_job, make_origin, make_request
    from dreamcore.queue.rq_queues import DreamQueue

    origin = make_origin(instance="bot1", guild_id=10, channel_id=20, user_id=30)
    job = make_job(make_request(prompt="a lighthouse", aspect="1:1", steps=2, seed=3, **req), origin)
    DreamQueue(rconn, load_settings()).enqueue(job)
    return job.job_id


def test_every_image_is_scored_before_it_is_published_and_timed(worker_run, rconn):
    job = _queue(rconn, count=2)
    worker_run()
    meta = results.load_meta(rconn, job)
    assert meta.status == "done"
    assert [type(i.nsfw_score) for i in meta.images] == [float, float]
    assert meta.timings["safety_s"] > 0
    # The buttons' record keeps the scores, so a variation carries its source's.
    stored = params.load(rconn, job, _store())
    assert [i.nsfw_score for i in stored.images] == [i.nsfw_score for i in meta.images]


def _store():
    from tests.support.fleet import image_store

    return image_store()


def test_the_off_switch_posts_unscored(worker_run, rconn):
    job = _queue(rconn)
    worker_run(safety_check=False)  # DREAMBOT_SAFETY_CHECK=false
    meta = results.load_meta(rconn, job)
    assert meta.status == "done" and meta.images[0].nsfw_score is None and "safety_s" not in meta.timings


class _BrokenClassifier:
    def timed_scores(self, images):
        raise RuntimeError("the classifier's weights are corrupt")

    def scores(self, images):
        raise RuntimeError("the classifier's weights are corrupt")


def test_a_classifier_that_fails_posts_nothing_and_tells_the_member(worker_run, rconn):
    job = _queue(rconn)
    worker_run(checker=_BrokenClassifier())
    meta = results.load_meta(rconn, job)
    assert meta.status == "failed" and meta.images == []
    assert meta.error == "the content filter could not check the images, so nothing was posted; please try again"


# --- End to end: the real bot on the stand-in, the real worker -----------------------------------------


def _admin(fleet, admin, key, value):
    bot = fleet.bots[0]
    inter = fleet.standin.send_slash(bot.app.id, fleet.guild_id, bot.channel_id, admin, "dreamadmin",
                                     {"key": key, "value": value}, subcommand="set")
    body = inter.wait_ack(5)
    assert body["data"]["flags"] & 64 and key in body["data"]["content"], body


def _final(standin, inter, timeout=120.0):
    """The member's reply once the result is in (it carries the Info button)."""
    return standin.wait_for_message(
        lambda m: m.interaction_id == inter.id and not m.ephemeral
        and any(c.startswith("dream:i:") for c in m.custom_ids()), timeout=timeout)


def _private(standin, channel_id, inter):
    return [m.content for m in standin.messages(channel_id) if m.interaction_id == inter.id and m.ephemeral]


def _dream_images(msg):
    return [a for a in msg.attachments if "dream-" in a.filename]


@pytest.fixture
def running(fleet):
    """One bot serving two channels (one age-restricted) and one worker; an admin who may set the policy."""
    fleet.nsfw_channel = fleet.standin.add_channel(fleet.guild_id, "after-dark", nsfw=True)
    fleet.admin = fleet.standin.add_member(fleet.guild_id, "mod", manage_guild=True)
    fleet.start_bot(fleet.bots[0])
    fleet.wait_bots_ready()
    fleet.start_worker()
    return fleet


def test_withhold_holds_every_flagged_image_back_and_tells_the_member_privately(running, rconn):
    fleet, bot = running, running.bots[0]
    _admin(fleet, fleet.admin, "nsfw_threshold", "0")
    inter = fleet.dream(bot, prompt="a quiet harbour", count=2, steps=2, aspect="1:1", seed=5)
    inter.wait_ack(5)
    msg = _final(fleet.standin, inter)
    assert _dream_images(msg) == []
    job = next(c for c in msg.custom_ids() if c.startswith("dream:i:")).split(":")[2]
    assert f"All 2 images were held back by this server's content filter (job `{job}`)." in msg.content
    assert "score" not in msg.content  # no scores in public
    ids = msg.custom_ids()
    assert not any(c.startswith(("dream:v:", "dream:u:")) for c in ids)  # nothing starts from a held-back image
    assert any(c.startswith("dream:r:") for c in ids)  # Reroll still offered
    private = wait_until(lambda: _private(fleet.standin, bot.channel_id, inter), 20, "private note")
    assert "image 1 (score 0.00), image 2 (score 0.00) were held back" in private[0]
    # Counted for the admins.
    wait_until(lambda: moderation.flag_counts(rconn, fleet.guild_id)["today"] == {"withheld": 2}, 10, "flag counts")
    usage = fleet.standin.send_slash(bot.app.id, fleet.guild_id, bot.channel_id, fleet.admin, "dreamadmin",
                                     {"user": fleet.user_id}, subcommand="usage").wait_ack(5)["data"]["content"]
    assert "**Content filter** (threshold 0, withhold)" in usage and "today (UTC): 2 flagged: 2 withheld" in usage
    # A post with nothing to show is still the member's to delete.
    gone = fleet.standin.send_component(bot.app.id, fleet.guild_id, bot.channel_id, fleet.user_id, msg.id,
                                        f"dream:d:{job}")
    gone.wait_ack(5)
    wait_until(lambda: fleet.standin.message(msg.id).deleted, 10, "the withheld post was not deleted")


def test_spoiler_posts_behind_a_spoiler_and_a_button_never_unmarks_it(running, rconn):
    fleet, bot, standin = running, running.bots[0], running.standin
    _admin(fleet, fleet.admin, "nsfw_action", "spoiler")
    _admin(fleet, fleet.admin, "nsfw_threshold", "0")
    inter = fleet.dream(bot, prompt="a red kite", count=1, steps=2, aspect="1:1", seed=6)
    inter.wait_ack(5)
    msg = _final(standin, inter)
    (att,) = _dream_images(msg)
    assert att.filename.startswith("SPOILER_dream-") and att.spoiler and att.to_payload()["flags"] == 8
    Image.open(io.BytesIO(att.data)).load()  # still the real image under the cover
    assert "Content note: the image is behind a spoiler" in msg.content
    assert _private(standin, bot.channel_id, inter) == []  # nothing held back, nothing to tell privately
    job = next(c for c in msg.custom_ids() if c.startswith("dream:i:")).split(":")[2]

    # The source scored high (as a real classifier would on an adult image; the tiny one cannot), and the
    # admin raises the threshold: the upscale's own score is low, its source's is not, so it stays covered.
    record = json.loads(rconn.get(keys.params_key(job)))
    record["images"][0]["nsfw_score"] = 0.97
    rconn.set(keys.params_key(job), json.dumps(record), keepttl=True)
    _admin(fleet, fleet.admin, "nsfw_threshold", "0.5")
    up = standin.send_component(bot.app.id, fleet.guild_id, bot.channel_id, fleet.user_id, msg.id, f"dream:u:{job}:0")
    up.wait_ack(5)
    upscaled = _final(standin, up, timeout=180)
    (att,) = _dream_images(upscaled)
    assert att.spoiler and "behind a spoiler" in upscaled.content
    # An unrelated dream at the new threshold is posted plainly.
    plain = fleet.dream(bot, prompt="a blue kite", count=1, steps=2, aspect="1:1", seed=7)
    plain.wait_ack(5)
    (att,) = _dream_images(_final(standin, plain))
    assert not att.spoiler and att.filename.startswith("dream-")


def test_age_restricted_shows_in_nsfw_channels_only_and_adult_words_stay_there(running, rconn):
    fleet, bot, standin = running, running.bots[0], running.standin
    _admin(fleet, fleet.admin, "nsfw_action", "age_restricted")
    _admin(fleet, fleet.admin, "nsfw_threshold", "0")
    _admin(fleet, fleet.admin, "adult_words", "boudoir")

    there = standin.send_slash(bot.app.id, fleet.guild_id, fleet.nsfw_channel, fleet.user_id, "dream",
                               {"prompt": "a boudoir portrait", "count": 1, "steps": 2, "aspect": "1:1", "seed": 8})
    assert there.wait_ack(5)["type"] in (4, 5)
    msg = _final(standin, there)
    (att,) = _dream_images(msg)
    assert att.filename.startswith("dream-") and not att.spoiler and "held back" not in msg.content

    # The same words in an ordinary channel: refused before anything is queued, and said why.
    refused = fleet.dream(bot, prompt="a boudoir portrait", count=1, steps=2, aspect="1:1")
    data = refused.wait_ack(5)["data"]
    assert data["flags"] & 64 and "keeps to age-restricted channels (b******)" in data["content"]
    # A prompt without them is dreamed, and its flagged image held back here, with the reason in private.
    here = fleet.dream(bot, prompt="a portrait", count=1, steps=2, aspect="1:1", seed=9)
    here.wait_ack(5)
    msg = _final(standin, here)
    assert _dream_images(msg) == [] and "The image was held back" in msg.content
    private = wait_until(lambda: _private(standin, bot.channel_id, here), 20, "private note")
    assert "shown in age-restricted channels only" in private[0]
    # The channel un-marked by an admin: the stricter treatment at once.
    standin.set_channel_nsfw(fleet.nsfw_channel, False)
    later = standin.send_slash(bot.app.id, fleet.guild_id, fleet.nsfw_channel, fleet.user_id, "dream",
                               {"prompt": "a harbour", "count": 1, "steps": 2, "aspect": "1:1", "seed": 10})
    later.wait_ack(5)
    assert _dream_images(_final(standin, later)) == []
    # Counted once each post is made (right after it).
    wait_until(lambda: moderation.flag_counts(rconn, fleet.guild_id)["today"] == {"shown_age_restricted": 1,
                                                                              "withheld": 2}, 10, "flag counts")
