"""A fleet for end-to-end tests: the Discord stand-in, N bot processes, worker processes, one real Redis.

Every process is the real `dreambot` entry point, started exactly as docker-compose starts it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from tests.support.standin import DiscordStandIn


@dataclass
class BotProc:
    index: int
    app: object
    channel_id: int
    instance: str
    proc: subprocess.Popen | None = None
    log: Path | None = None


@dataclass
class Fleet:
    standin: DiscordStandIn
    redis_url: str
    model_dir: Path
    tmp: Path
    guild_id: int = 0
    user_id: int = 0
    bots: list[BotProc] = field(default_factory=list)
    workers: list[subprocess.Popen] = field(default_factory=list)
    worker_logs: list[Path] = field(default_factory=list)

    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DREAMBOT_", "DISCORD_", "REDIS_URL"))}
        env.update({
            "REDIS_URL": self.redis_url,
            "DREAMBOT_BASE_MODEL": str(self.model_dir / "base"),
            "DREAMBOT_REFINER_MODEL": str(self.model_dir / "refiner"),
            "DREAMBOT_SAFETY_MODEL": str(self.model_dir / "safety"),
            "DREAMBOT_TURBO_ADAPTER": str(self.model_dir / "turbo"),
            "DREAMBOT_DEVICE": "cpu",
            "DREAMBOT_DEFAULT_STEPS": "4",
            "DREAMBOT_LOG_LEVEL": "DEBUG",
            "DREAMBOT_HEARTBEAT": "1",
            "DREAMBOT_LEASE": "5",
            # Generous limits: the fleet tests are about delivery; limit tests set their own.
            "DREAMBOT_LIMIT_COOLDOWN_S": "0",
            "DREAMBOT_LIMIT_USER_MAX_ACTIVE": "50",
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            # No /metrics port unless a test asks for one (tests/e2e/test_metrics.py passes free ports).
            "DREAMBOT_METRICS_PORT": "0",
            # The test servers' default face pass: off. It costs about half a second of this CPU per image
            # (the detector), and the tiny model draws no faces; tests/e2e/test_faces.py turns it on.
            "DREAMBOT_LIMIT_FACES": "off",
            # The test process's (tests/conftest.py); a bench run outside pytest keeps its images in its tmp.
            "DREAMBOT_IMAGE_DIR": os.environ.get("DREAMBOT_IMAGE_DIR") or str(self.tmp / "images"),
        })
        return env

    def setup(self, n_bots: int) -> None:
        self.guild_id = self.standin.add_guild("dream guild")
        self.user_id = self.standin.add_member(self.guild_id, "alice")
        for i in range(1, n_bots + 1):
            app = self.standin.add_application(f"dreambot{i}")
            channel = self.standin.add_channel(self.guild_id, f"dreams-{i}")
            self.bots.append(BotProc(i, app, channel, f"bot{i}"))

    def start_bot(self, bot: BotProc, **extra: str) -> None:
        env = self.base_env() | {
            "DISCORD_TOKEN": bot.app.token,
            "DREAMBOT_INSTANCE": bot.instance,
            "DISCORD_API_BASE": self.standin.api_base,
            "DISCORD_GUILD_IDS": str(self.guild_id),
        } | extra
        bot.log = self.tmp / f"{bot.instance}.log"
        bot.proc = subprocess.Popen([sys.executable, "-m", "dreambot", "bot"], env=env,
                                    stdout=open(bot.log, "ab"), stderr=subprocess.STDOUT)

    def wait_bots_ready(self, bots: list[BotProc] | None = None, timeout: float = 60.0) -> None:
        """Ready = connected to the gateway and commands synced (the relay starts right after sync)."""
        deadline = time.monotonic() + timeout
        for bot in bots or self.bots:
            while not self.standin.commands(bot.app.id, self.guild_id):
                if bot.proc.poll() is not None:
                    raise RuntimeError(f"{bot.instance} exited: {bot.log.read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{bot.instance} never synced: {bot.log.read_text()[-3000:]}")
                time.sleep(0.1)
            self.standin.wait_for_gateway(bot.app.id, timeout=max(1.0, deadline - time.monotonic()))

    def stop_bot(self, bot: BotProc) -> None:
        bot.proc.send_signal(signal.SIGTERM)
        try:
            bot.proc.wait(10)
        except subprocess.TimeoutExpired:
            bot.proc.kill()
            bot.proc.wait(5)

    def start_worker(self, name: str = "w", **extra: str) -> subprocess.Popen:
        log = self.tmp / f"worker-{name}-{len(self.workers)}.log"
        env = self.base_env() | extra
        proc = subprocess.Popen([sys.executable, "-m", "dreambot", "worker"], env=env,
                                stdout=open(log, "ab"), stderr=subprocess.STDOUT)
        self.workers.append(proc)
        self.worker_logs.append(log)
        return proc

    def dream(self, bot: BotProc, **options):
        options.setdefault("prompt", f"a lighthouse for bot {bot.index}")
        return self.standin.send_slash(bot.app.id, self.guild_id, bot.channel_id, self.user_id, "dream", options)

    def logs(self) -> str:
        paths = [b.log for b in self.bots if b.log] + self.worker_logs
        return "\n".join(p.read_text(errors="replace") for p in paths if p.exists())

    def stop(self) -> None:
        procs = [b.proc for b in self.bots if b.proc] + self.workers
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def image_messages(standin: DiscordStandIn, channel_id: int) -> list:
    """Messages that carry finished dream images (not a progress preview)."""
    return [m for m in standin.messages(channel_id)
            if any(a[0].startswith(("dream-", "A-dream-", "B-dream-")) for a in m.attachments)]


def wait_until(pred, timeout: float, what: str):
    """Poll `pred` until it returns something truthy (returned), or raise TimeoutError(what)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(what)


def redis_blobs(r, key: bytes) -> list[bytes]:
    """Every byte string stored under `key`, whatever its type; RQ's zlib-compressed fields decompressed too."""
    kind = r.type(key)
    out = [key]
    if kind == b"string":
        out.append(r.get(key))
    elif kind == b"hash":
        out.extend(x for kv in r.hgetall(key).items() for x in kv)
    elif kind == b"list":
        out.extend(r.lrange(key, 0, -1))
    elif kind == b"set":
        out.extend(r.smembers(key))
    elif kind == b"zset":
        out.extend(m for m, _ in r.zrange(key, 0, -1, withscores=True))
    elif kind == b"stream":
        out.extend(x for _, fields in r.xrange(key) for kv in fields.items() for x in kv)
    for b in list(out):
        if b:
            try:
                out.append(zlib.decompress(b))
            except zlib.error:
                pass
    return [b for b in out if b]


def image_store():
    """The image store the bots and workers of this test process write to and read from."""
    from dreamcore.images import open_store
    from dreamcore.settings import load_settings

    return open_store(load_settings())


def final_answer(standin: DiscordStandIn, inter, body: dict, timeout: float = 15.0) -> tuple[str, bool, dict | None]:
    """What the member ends up seeing: (content, ephemeral, allowed_mentions). A deferred answer (type 5) is
    followed by an edit of the "thinking" message or an ephemeral followup."""
    if body["type"] == 4:
        data = body["data"]
        return data.get("content", ""), bool(data.get("flags", 0) & 64), data.get("allowed_mentions")
    assert body["type"] == 5, body
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in standin.messages(inter.channel_id, include_deleted=False):
            if m.interaction_id == inter.id and not m.loading and m.content:
                return m.content, m.ephemeral, m.allowed_mentions
        time.sleep(0.05)
    raise TimeoutError(f"deferred /dream {inter.id} never answered")


# --- One member's side of a fleet with one bot: `e` holds .fleet, .standin and .bot ---------------------------


@contextmanager
def one_bot(redis_server, model_dir: Path, tmp: Path, bot_env: dict | None = None, **env):
    """One bot and one worker (with `env` over the fleet's, and `bot_env` over that for the bot alone) on a fresh
    stand-in and the session's Redis, and an admin member: yields `e` with .fleet, .standin, .bot, .admin and
    .r (a Redis client)."""
    import redis

    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    standin = DiscordStandIn().start()
    fleet = Fleet(standin, redis_server.url, model_dir, tmp)
    try:
        fleet.setup(1)
        bot = fleet.bots[0]
        admin = standin.add_member(fleet.guild_id, "admin", manage_guild=True)
        fleet.start_bot(bot, **env, **(bot_env or {}))
        fleet.start_worker(**env)
        fleet.wait_bots_ready()
        yield SimpleNamespace(fleet=fleet, standin=standin, bot=bot, admin=admin,
                              r=redis.Redis.from_url(redis_server.url))
    finally:
        fleet.stop()
        standin.stop()


def send(e, options: dict, user: int | None = None, command: str = "dream", **kw):
    """A slash command from the fleet's member (or `user`): (the interaction, what they see, ephemeral)."""
    f = e.fleet
    inter = e.standin.send_slash(e.bot.app.id, f.guild_id, e.bot.channel_id, user or f.user_id, command, options, **kw)
    text, ephemeral, _ = final_answer(e.standin, inter, inter.wait_ack(5))
    return inter, text, ephemeral


def click(e, msg, custom_id: str):
    """A click on a button of `msg` by the fleet's member: (the interaction, what they see, ephemeral)."""
    f = e.fleet
    inter = e.standin.send_component(e.bot.app.id, f.guild_id, e.bot.channel_id, f.user_id, msg.id, custom_id)
    text, ephemeral, _ = final_answer(e.standin, inter, inter.wait_ack(5))
    return inter, text, ephemeral


def result_message(e, inter, timeout: float = 120.0):
    """The message with the images that answered `inter`, once posted."""
    def done(m):
        return (m.interaction_id == inter.id and m.components
                and any(a.filename.startswith("dream-") for a in m.attachments))
    return e.standin.wait_for_message(done, timeout=timeout)
