"""The shipped docker-compose.yml, started for real on this machine: Redis (with its users and passwords), two
bots and one worker on the CPU with the tiny model; a /dream through the Discord stand-in comes back as an
image; then `down` and `up` again with the volumes kept, and a second dream. Every step prints its time.

Run it through bench/compose_up.sh, which installs and starts what it needs (Debian's Docker engine,
debootstrap, docker-compose 1.29) and builds the local base images (bench/local_images.sh). Only what can't
be the same here differs from the shipped file, in bench/compose.local.yml (base images, host networking,
the tiny model, the stand-in's address) plus one edit on the rendered config that no compose 1.29 override
can express: the worker's GPU reservation is dropped (this machine has no GPU and no NVIDIA runtime).

    python bench/compose_up.py [--keep] [--project dreambot-local]
"""

from __future__ import annotations

import argparse
import io
import json
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.fleet import wait_until  # noqa: E402
from tests.support.standin import DiscordStandIn  # noqa: E402

PYTHON_IMAGE = "dreambot-local/python:3.11-bookworm"
SERVICES = ["redis", "fetch-models", "worker", "bot1", "bot2"]
T0 = time.monotonic()
STEPS: list[tuple[str, float, str]] = []


def say(text: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {text}", flush=True)


class Step:
    """Prints a step with its time when it ends (or fails)."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        self.t = time.monotonic()
        say(f"-> {self.name}")
        return self

    def __exit__(self, kind, err, tb):
        took = time.monotonic() - self.t
        STEPS.append((self.name, took, "ok" if kind is None else f"FAILED: {err}"))
        say(f"{'ok' if kind is None else 'FAILED'}: {self.name} ({took:.1f}s)")
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*cmd: str, check: bool = True, quiet: bool = False, timeout: float = 3600, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    if not quiet and proc.stdout.strip():
        print(proc.stdout.strip()[-2000:], flush=True)
    return proc


class Fleet:
    def __init__(self, args, tmp: Path):
        self.args = args
        self.tmp = tmp
        self.standin = DiscordStandIn().start()
        self.guild = self.standin.add_guild("compose guild")
        self.member = self.standin.add_member(self.guild, "alice")
        self.apps = [self.standin.add_application(f"dreambot{i}") for i in (1, 2)]
        self.channels = [self.standin.add_channel(self.guild, f"dreams-{i}") for i in (1, 2)]
        self.ports = {"LOCAL_REDIS_PORT": free_port(), "LOCAL_WORKER_METRICS_PORT": free_port(),
                      "LOCAL_BOT1_METRICS_PORT": free_port(), "LOCAL_BOT2_METRICS_PORT": free_port()}
        self.passwords = {name: secrets.token_hex(24) for name in (
            "REDIS_ADMIN_PASSWORD", "REDIS_BOT_PASSWORD", "REDIS_WORKER_PASSWORD", "REDIS_DASHBOARD_PASSWORD")}
        self.env_file = tmp / "dreambot.env"
        self.rendered = tmp / "docker-compose.rendered.yml"

    # --- the files compose reads ---------------------------------------------------------------------------

    def write_env(self) -> None:
        """What an operator puts in .env, here with the stand-in's address and the tiny model."""
        env = {
            **self.passwords, **{k: str(v) for k, v in self.ports.items()},
            "PYTHON_IMAGE": PYTHON_IMAGE,
            "DISCORD_TOKEN_1": self.apps[0].token, "DISCORD_TOKEN_2": self.apps[1].token,
            "DISCORD_API_BASE": self.standin.api_base, "DISCORD_GUILD_IDS": str(self.guild),
            "DREAMBOT_BASE_MODEL": "/models/tiny/base", "DREAMBOT_REFINER_MODEL": "/models/tiny/refiner",
            "DREAMBOT_SAFETY_MODEL": "/models/tiny/safety", "DREAMBOT_TURBO_ADAPTER": "/models/tiny/turbo",
            "DREAMBOT_DEVICE": "cpu",
            "DREAMBOT_DEFAULT_STEPS": "4", "DREAMBOT_LIMIT_COOLDOWN_S": "0",
        }
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        self.env_file.chmod(0o600)

    def render(self) -> None:
        import yaml

        proc = run("docker-compose", "-p", self.args.project, "--env-file", str(self.env_file),
                   "-f", str(ROOT / "docker-compose.yml"), "-f", str(ROOT / "bench" / "compose.local.yml"),
                   "config", quiet=True, cwd=ROOT)
        config = yaml.safe_load(proc.stdout)
        worker = config["services"]["worker"]
        worker.get("deploy", {}).get("resources", {}).pop("reservations", None)  # no GPU here (see above)
        self.rendered.write_text(yaml.safe_dump(config, sort_keys=False))
        self.rendered.chmod(0o600)

    def compose(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return run("docker-compose", "-p", self.args.project, "-f", str(self.rendered), *args, cwd=ROOT, **kw)

    # --- checks ---------------------------------------------------------------------------------------------

    def check_mount_owners(self) -> None:
        """Every path the bots and the worker mount a volume on exists in the image and belongs to its user."""
        for image, paths in (("dreambot-bot:latest", ["/images"]), ("dreambot-worker:latest", ["/models", "/images"])):
            user = run("docker", "image", "inspect", "-f", "{{.Config.User}}", image, quiet=True).stdout.strip()
            for path in paths:
                owner = run("docker", "run", "--rm", "--entrypoint", "stat", image, "-c", "%U", path,
                            quiet=True).stdout.strip()
                say(f"   {image} {path}: owner {owner}, runs as {user}")
                if owner != user:
                    raise AssertionError(f"{image}: {path} belongs to {owner}, the image runs as {user}")

    def check_redis_users(self) -> None:
        """The worker's Redis user can't touch the limits; nobody gets in without a password."""
        port = str(self.ports["LOCAL_REDIS_PORT"])

        def cli(*args: str, env: dict | None = None) -> str:
            return self.compose("exec", "-T", *(f"-e{k}={v}" for k, v in (env or {}).items()), "redis",
                                "redis-cli", "-p", port, *args, check=False, quiet=True).stdout.strip()

        nobody = cli("--no-auth-warning", "-a", "", "ping", env={"REDISCLI_AUTH": ""})
        worker = cli("--user", "dreambot-worker", "--pass", self.passwords["REDIS_WORKER_PASSWORD"],
                     "--no-auth-warning", "set", "dream:limits:{1}:config", "x")
        say(f"   without a password: {nobody!r}; the worker writing a guild's limits: {worker!r}")
        if "NOAUTH" not in nobody or "NOPERM" not in worker:
            raise AssertionError("Redis lets in what it should refuse")

    def ready(self) -> None:
        for app in self.apps:
            wait_until(lambda app=app: self.standin.commands(app.id, self.guild), 240, "a bot never synced")
            self.standin.wait_for_gateway(app.id, timeout=120)
        url = f"http://127.0.0.1:{self.ports['LOCAL_WORKER_METRICS_PORT']}/healthz"

        def worker_healthy() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_until(worker_healthy, 600, "the worker never reported healthy")

    def dream(self, index: int, prompt: str, seed: int) -> dict:
        """A /dream through bot `index`; returns what the member saw."""
        from PIL import Image

        app, channel = self.apps[index], self.channels[index]
        t, sent_at = time.monotonic(), time.time()
        inter = self.standin.send_slash(app.id, self.guild, channel, self.member, "dream",
                                        {"prompt": prompt, "seed": seed})
        ack = inter.wait_ack(5)
        ack_ms = (time.monotonic() - t) * 1000

        def posted():  # the member's own reply, which the images replace (or a post of its own past the token)
            for m in self.standin.messages(channel):
                if m.interaction_id == inter.id or (m.created_at > sent_at and f"<@{self.member}>" in (m.content or "")):
                    for a in m.attachments:
                        if a.filename.startswith("dream-"):
                            return m, a
            return None

        message, attachment = wait_until(posted, 600, f"no image came back for {prompt!r}")
        image = Image.open(io.BytesIO(attachment.data))
        image.load()
        self.last_post = (index, message.id, attachment.filename.split("-")[1])
        got = {"bot": f"bot{index + 1}", "ack_ms": round(ack_ms, 1), "ack_type": ack.get("type"),
               "seconds": round(time.monotonic() - t, 1), "file": attachment.filename,
               "size": f"{image.width}x{image.height}", "bytes": len(attachment.data),
               "text": (message.content or "").splitlines()[0][:80]}
        say(f"   {json.dumps(got)}")
        if not seed == int(attachment.filename.rsplit("-", 1)[1].split(".")[0]):
            raise AssertionError(f"the image is not seed {seed}'s: {attachment.filename}")
        return got

    def info_of(self, post: tuple[int, int, str]) -> str:
        """Info under an earlier result: what its buttons read back (Redis's AOF on its volume, the record
        beside the images on theirs)."""
        index, message_id, job_id = post
        inter = self.standin.send_component(self.apps[index].id, self.guild, self.channels[index], self.member,
                                            message_id, f"dream:i:{job_id}")
        text = inter.wait_ack(10)["data"]["content"]
        say(f"   Info of {job_id}: {text.splitlines()[0][:100]} / {text.splitlines()[2][:60]}")
        if f"Job `{job_id}`" not in text:
            raise AssertionError(f"Info of the first dream after the restart: {text[:300]}")
        return text

    def versions(self) -> None:
        out = run("docker", "run", "--rm", "--entrypoint", "python", "dreambot-worker:latest", "-c",
                  "import torch, diffusers, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda,"
                  " 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)",
                  quiet=True).stdout.strip()
        say(f"   worker image: {out}")

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "60", check=False, quiet=True).stdout


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--project", default="dreambot-local", help="the compose project name (volumes are its own)")
    p.add_argument("--keep", action="store_true", help="leave the containers and volumes up at the end")
    args = p.parse_args()
    for tool in ("docker", "docker-compose"):
        if shutil.which(tool) is None:
            print(f"compose_up: {tool} is not installed (run bench/compose_up.sh)")
            return 2
    tmp = Path(tempfile.mkdtemp(prefix="dreambot-compose-"))
    fleet = Fleet(args, tmp)
    ok = False
    try:
        with Step("write .env (passwords, tokens, the stand-in, the tiny model) and render the config"):
            fleet.write_env()
            fleet.render()
            fleet.compose("down", "-v", "--remove-orphans", check=False, quiet=True)
        with Step("build the bot and worker images (docker/*.Dockerfile, torch from PyPI)"):
            fleet.compose("build", "bot1", "worker", quiet=True, timeout=5400)
        with Step("every volume's mount point exists in its image, owned by the user that runs there"):
            fleet.check_mount_owners()
            fleet.versions()
        with Step("up: redis, fetch-models (the tiny model), worker, bot1, bot2"):
            fleet.compose("up", "-d", *SERVICES, quiet=True, timeout=900)
        with Step("bots synced and connected, worker healthy"):
            fleet.ready()
        with Step("Redis refuses a client without a password, and the worker's user the limits"):
            fleet.check_redis_users()
        with Step("a /dream through bot1 comes back as an image"):
            fleet.dream(0, "a lighthouse at dusk, first up", 42)
            first = fleet.last_post
        with Step("a /dream through bot2 comes back as an image"):
            fleet.dream(1, "a lighthouse at dawn, first up", 43)
        with Step("down (volumes kept) and up again"):
            fleet.compose("down", quiet=True, timeout=300)
            fleet.compose("up", "-d", *SERVICES, quiet=True, timeout=900)
            fleet.ready()
        with Step("the first dream's Info button still answers (Redis and the images on their volumes)"):
            fleet.info_of(first)
        with Step("a second /dream after the restart comes back as an image"):
            fleet.dream(0, "a lighthouse in fog, after the restart", 44)
        ok = True
    except Exception as err:
        say(f"compose run failed: {err}")
        print(fleet.logs()[-12000:], flush=True)
    finally:
        if not args.keep:
            fleet.compose("down", "-v", "--remove-orphans", check=False, quiet=True, timeout=300)
        fleet.standin.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print("\nstep                                                                          seconds  result")
    for name, took, result in STEPS:
        print(f"{name[:76]:<78}{took:8.1f}  {result}")
    print(f"VERDICT: {'PASS' if ok else 'FAIL'}: the shipped docker-compose.yml delivered a dream before and after "
          f"a down/up with its volumes kept ({time.monotonic() - T0:.0f}s in all)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
