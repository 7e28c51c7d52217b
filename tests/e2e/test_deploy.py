"""Deployment files: docker-compose.yml as `docker-compose config` sees it, the Dockerfiles, Redis's users,
.dockerignore and .env.example; and no real-looking secret anywhere in the repository.

No Docker engine is needed: `docker-compose config` only reads and validates the file (.ci/run installs
Debian's docker-compose 1.29), and the Dockerfiles' invariants are read off their text. The images are built
and the file started for real by bench/compose_up.sh (bench/RESULTS.md has its run), outside this suite.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dreambot.cli import _parser
from dreamcore.settings import SDXL_BASE_ID, SDXL_REFINER_ID, Settings
from tests.support import ROOT

COMPOSE = ROOT / "docker-compose.yml"
BOT_DOCKERFILE = ROOT / "docker" / "bot.Dockerfile"
WORKER_DOCKERFILE = ROOT / "docker" / "worker.Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERIGNORE = ROOT / ".dockerignore"

BOTS = [f"bot{i}" for i in range(1, 11)]
TORCH_MAX = (2, 14, 1)
COMPOSE_REDIS_URL = "redis://redis:6379/0"
# Set per service by docker-compose.yml itself, not passed through from .env.
PER_SERVICE = {"REDIS_URL", "DISCORD_TOKEN", "DREAMBOT_INSTANCE", "REDIS_USERNAME", "REDIS_PASSWORD"}
# What `up` refuses to start without: each Redis user's password.
PASSWORDS = {name: f"{name.lower().replace('_', '-')}-0123456789" for name in (
    "REDIS_ADMIN_PASSWORD", "REDIS_BOT_PASSWORD", "REDIS_WORKER_PASSWORD", "REDIS_DASHBOARD_PASSWORD")}
REDIS_USERS = ROOT / "deploy" / "redis" / "users.acl"
# Monitoring beside the product: not dreambot processes.
MONITORING = {"prometheus", "rq-dashboard"}
# Object storage for many hosts, under the `s3` profile: not dreambot processes either.
OBJECT_STORE = {"minio", "minio-init"}
# Redis high availability, under the `ha` profile: redis-server processes, as `redis` is.
HA = {"redis-replica", "sentinel1", "sentinel2", "sentinel3"}
FETCH = {"fetch-models"}
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus.yml"
DASHBOARD_DOCKERFILE = ROOT / "docker" / "rq-dashboard.Dockerfile"


def setting_env_names() -> list[str]:
    return [f.validation_alias.choices[0] for f in Settings.model_fields.values()]  # type: ignore[union-attr]


def setting_defaults() -> dict[str, object]:
    return {f.validation_alias.choices[0]: f.default for f in Settings.model_fields.values()}  # type: ignore[union-attr]


# ----------------------------------------------------------------------------------------------------
# `docker-compose config`, parsed


def _yaml_to_data(text: str, compose_exe: str) -> dict:
    try:
        import yaml
    except ImportError:
        pass
    else:
        return yaml.safe_load(text)
    # Our environment may lack PyYAML; the Python that runs docker-compose 1.29 has it.
    candidates = []
    try:
        first = Path(compose_exe).read_bytes()[:200].split(b"\n", 1)[0].decode()
        if first.startswith("#!"):
            candidates.append(first[2:].strip().split()[0])
    except (OSError, UnicodeDecodeError):
        pass
    candidates.append("/usr/bin/python3")
    for py in candidates:
        if not Path(py).is_file():
            continue
        proc = subprocess.run(
            [py, "-c", "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"],
            input=text, capture_output=True, text=True, timeout=60,
        )
        if proc.returncode == 0:
            return json.loads(proc.stdout)
    pytest.skip("no YAML parser: neither PyYAML here nor a Python with yaml next to docker-compose")


def _compose_config(env_file: Path) -> dict:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose is not installed (.ci/run installs Debian's docker-compose 1.29)")
    # A clean environment and an explicit env file: nothing from this shell or a developer's .env leaks in.
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "LC_ALL") if k in os.environ}
    proc = subprocess.run(
        [exe, "--env-file", str(env_file), "-f", str(COMPOSE), "config"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    print(proc.stdout)
    assert proc.returncode == 0, f"docker-compose config failed:\n{proc.stderr}"
    return _yaml_to_data(proc.stdout, exe)


def _sentinel(name: str) -> str:
    return f"from-env-file-{name.lower().replace('_', '-')}"


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> dict:
    """The config of a clean clone with only what `up` demands: the Redis users' passwords."""
    env_file = tmp_path_factory.mktemp("compose") / "passwords.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in PASSWORDS.items()))
    return _compose_config(env_file)


def test_compose_refuses_to_start_without_the_redis_passwords(tmp_path):
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose is not installed (.ci/run installs Debian's docker-compose 1.29)")
    for missing in PASSWORDS:
        env_file = tmp_path / f"without-{missing}.env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in PASSWORDS.items() if k != missing))
        env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "LC_ALL") if k in os.environ}
        proc = subprocess.run([exe, "--env-file", str(env_file), "-f", str(COMPOSE), "config"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0 and f"set {missing} in .env" in proc.stderr, (missing, proc.stderr[-500:])


@pytest.fixture(scope="module")
def config_with_env(tmp_path_factory) -> dict:
    """The config when .env sets every setting and every bot token (to placeholders)."""
    env_file = tmp_path_factory.mktemp("compose") / "full.env"
    lines = [f"{name}={_sentinel(name)}" for name in setting_env_names()]
    lines += [f"DISCORD_TOKEN_{i}=placeholder-for-bot-{i}" for i in range(1, 11)]
    lines += [f"{k}={v}" for k, v in PASSWORDS.items()]
    env_file.write_text("\n".join(lines) + "\n")
    return _compose_config(env_file)


def _env(service: dict) -> dict:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return env


def _mounts(service: dict) -> set[tuple[str, str]]:
    out = set()
    for v in service.get("volumes") or []:
        if isinstance(v, str):
            parts = v.split(":")
            out.add((parts[0], parts[1]))
        else:
            out.add((v.get("source"), v.get("target")))
    return out


def _seconds(duration: str | int | float) -> float:
    if isinstance(duration, (int, float)):
        return float(duration)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def _waits_for_healthy_redis(service: dict) -> bool:
    dep = service.get("depends_on")
    return isinstance(dep, dict) and dep.get("redis", {}).get("condition") == "service_healthy"


def _cli_subcommands() -> set[str]:
    sub = next(a for a in _parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    return set(sub.choices)


# ----------------------------------------------------------------------------------------------------
# docker-compose.yml


def test_compose_has_redis_the_ten_bots_and_a_worker(config):
    services = config["services"]
    assert {"redis", "worker", *BOTS, *MONITORING, *OBJECT_STORE, *HA, *FETCH} <= set(services)
    extra = set(services) - {"redis", "worker", *BOTS, *MONITORING, *OBJECT_STORE, *HA, *FETCH}
    assert all(re.fullmatch(r"worker\d+", s) for s in extra), f"unexpected services {sorted(extra)}"


def test_ten_bots_share_one_image_with_distinct_instances_and_tokens(config, config_with_env):
    services = config["services"]
    instances, images = set(), set()
    for i, name in enumerate(BOTS, start=1):
        bot = services[name]
        env = _env(bot)
        assert bot["command"] == ["dreambot", "bot"]
        assert env["DREAMBOT_INSTANCE"] == name
        assert env["DISCORD_TOKEN"] == "", "a clean clone has no tokens"
        assert env["REDIS_URL"] == COMPOSE_REDIS_URL
        assert (env["REDIS_USERNAME"], env["REDIS_PASSWORD"]) == ("dreambot-bot", PASSWORDS["REDIS_BOT_PASSWORD"])
        assert bot["restart"] == "unless-stopped"
        assert bot.get("init") is True, "an init passes SIGTERM on to the bot (PID 1 would ignore it)"
        assert _waits_for_healthy_redis(bot)
        assert Path(bot["build"]["dockerfile"]).as_posix().endswith("docker/bot.Dockerfile")
        assert "deploy" not in bot, "bots need no GPU"
        instances.add(env["DREAMBOT_INSTANCE"])
        images.add(bot["image"])
        assert _env(config_with_env["services"][name])["DISCORD_TOKEN"] == f"placeholder-for-bot-{i}"
    assert len(instances) == 10
    assert len(images) == 1, "one bot image for all ten"
    raw = COMPOSE.read_text()
    assert re.search(r"^x-bot: &bot\b", raw, re.M), "the bots come from one `x-bot: &bot` anchor"
    assert len(re.findall(r"^\s+<<: \*bot\s*$", raw, re.M)) == 10


def test_redis_persists_and_has_a_healthcheck(config):
    redis = config["services"]["redis"]
    assert redis["image"].startswith("redis:7")
    cmd = redis["command"]
    cmd = cmd if isinstance(cmd, list) else cmd.split()
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert cmd[cmd.index("--appendfsync") + 1] == "everysec"
    assert "ping" in " ".join(redis["healthcheck"]["test"])
    assert _env(redis)["REDISCLI_AUTH"] == PASSWORDS["REDIS_ADMIN_PASSWORD"], "the healthcheck logs in"
    data = [src for src, dst in _mounts(redis) if dst == "/data"]
    assert data and data[0] in config["volumes"], "Redis data on a named volume"
    assert redis["restart"] == "unless-stopped"


def test_worker_has_a_gpu_the_models_volume_and_time_to_drain(config):
    worker = config["services"]["worker"]
    assert worker["command"] == ["dreambot", "worker"]
    assert Path(worker["build"]["dockerfile"]).as_posix().endswith("docker/worker.Dockerfile")
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    gpus = [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])]
    assert gpus and ("count" in gpus[0] or gpus[0].get("device_ids")), devices
    assert ("models", "/models") in _mounts(worker) and "models" in config["volumes"]
    env = _env(worker)
    assert env["REDIS_URL"] == COMPOSE_REDIS_URL
    assert (env["REDIS_USERNAME"], env["REDIS_PASSWORD"]) == ("dreambot-worker", PASSWORDS["REDIS_WORKER_PASSWORD"])
    assert env["HF_HOME"] == "/models"
    assert env["DREAMBOT_BASE_MODEL"] == SDXL_BASE_ID
    assert env["DREAMBOT_REFINER_MODEL"] == SDXL_REFINER_ID
    assert env["DREAMBOT_DEVICE"] == "cuda"
    # SIGTERM makes the worker finish its job first: give it the longest a job may run.
    assert _seconds(worker["stop_grace_period"]) >= Settings.model_fields["job_timeout_s"].default
    assert worker.get("init") is True
    assert worker["restart"] == "unless-stopped"
    assert _waits_for_healthy_redis(worker)


def test_the_worker_waits_for_a_one_shot_model_fetch_into_the_same_cache(config):
    """`dreambot fetch-models` (tests/e2e/test_fetch.py runs the same command) downloads into the volume and
    HF_HOME the worker reads, with the worker's model settings, and the worker starts only once it exited 0."""
    services = config["services"]
    fetch, worker = services["fetch-models"], services["worker"]
    assert fetch["command"] == ["dreambot", "fetch-models"]
    assert fetch["image"] == worker["image"] and fetch["restart"] == "no" and "deploy" not in fetch
    assert worker["depends_on"]["fetch-models"]["condition"] == "service_completed_successfully"
    assert ("models", "/models") in _mounts(fetch)
    env, wenv = _env(fetch), _env(worker)
    for key in ("HF_HOME", "HF_TOKEN", "DREAMBOT_BASE_MODEL", "DREAMBOT_REFINER_MODEL", "DREAMBOT_SAFETY_MODEL",
                "DREAMBOT_SAFETY_CHECK"):
        assert env.get(key) == wenv.get(key), key


def test_every_setting_in_env_reaches_the_bots_and_the_worker(config_with_env):
    services = config_with_env["services"]
    for name in [*BOTS, "worker"]:
        env = _env(services[name])
        assert env["REDIS_URL"] == COMPOSE_REDIS_URL, name
        missing = [s for s in setting_env_names() if s not in PER_SERVICE and env.get(s) != _sentinel(s)]
        assert not missing, f"{name} does not get {missing} from .env"


def test_services_run_the_dreambot_commands_the_tests_run(config):
    subcommands = _cli_subcommands()
    for name, service in config["services"].items():
        if name == "redis" or name in MONITORING | OBJECT_STORE | HA:
            continue
        cmd = service["command"]
        assert cmd[0] == "dreambot" and cmd[1] in subcommands, (name, cmd)
        _parser().parse_args(cmd[1:])
    assert 'dreambot = "dreambot.cli:main"' in (ROOT / "pyproject.toml").read_text()


def _health_probe(service: dict) -> str:
    test = service["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], f"python's urllib: the images have no curl ({test})"
    return test[3]


def test_bots_and_worker_have_health_checks_on_healthz(config):
    default = Settings.model_fields["metrics_port"].default
    for name in [*BOTS, "worker"]:
        service = config["services"][name]
        code = _health_probe(service)
        assert "/healthz" in code and "DREAMBOT_METRICS_PORT" in code and f"'{default}'" in code, name
        hc = service["healthcheck"]
        assert _seconds(hc["timeout"]) < _seconds(hc["interval"]) and hc["retries"] >= 2
    # The first start downloads ~14 GB of weights: failures then must not count.
    assert _seconds(config["services"]["worker"]["healthcheck"]["start_period"]) >= 600


def test_the_health_probe_exits_0_on_200_and_nonzero_on_503(config):
    """The compose one-liner, run for real against dreamcore.metrics' endpoint."""
    from dreamcore import metrics
    from dreamcore.localredis import free_port

    code = _health_probe(config["services"]["bot1"])
    state = {"ok": True}
    port = free_port()
    server = metrics.start_metrics_server(port, metrics.Health({"test": lambda: state["ok"]}))
    assert server is not None
    try:
        env = {"PATH": os.environ.get("PATH", ""), "DREAMBOT_METRICS_PORT": str(port)}
        assert subprocess.run([sys.executable, "-c", code], env=env, timeout=30).returncode == 0
        state["ok"] = False
        assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=30).returncode != 0
    finally:
        server.shutdown()
        server.server_close()


def test_prometheus_scrapes_every_bot_and_the_worker(config):
    prom = config["services"]["prometheus"]
    image = prom["image"]
    assert image.startswith("prom/prometheus:v") and not image.endswith(":latest"), "pin a Prometheus tag"
    assert any(dst == "/etc/prometheus/prometheus.yml" and Path(src).name == "prometheus.yml"
               and Path(src).parent.name == "deploy" for src, dst in _mounts(prom))
    assert any(p.get("host_ip") == "127.0.0.1" if isinstance(p, dict) else str(p).startswith("127.0.0.1:")
               for p in prom.get("ports", []))
    prom_config = _yaml_to_data(PROMETHEUS_CONFIG.read_text(), shutil.which("docker-compose") or "")
    scrape = prom_config["scrape_configs"]
    targets = {t for job in scrape for sc in job["static_configs"] for t in sc["targets"]}
    port = Settings.model_fields["metrics_port"].default
    workers = [n for n in config["services"] if re.fullmatch(r"worker\d*", n)]
    assert {f"{n}:{port}" for n in [*BOTS, *workers]} <= targets


def test_rq_dashboard_reads_the_queue_redis_on_loopback_only(config):
    dash = config["services"]["rq-dashboard"]
    assert _env(dash)["RQ_DASHBOARD_REDIS_URL"] == (
        f"redis://dreambot-dashboard:{PASSWORDS['REDIS_DASHBOARD_PASSWORD']}@redis:6379/0")
    assert _waits_for_healthy_redis(dash)
    ports = dash.get("ports", [])
    assert ports and all(p.get("host_ip") == "127.0.0.1" if isinstance(p, dict) else str(p).startswith("127.0.0.1:")
                         for p in ports), "no login: keep it off public interfaces"
    installs = " ".join(_pip_installs(DASHBOARD_DOCKERFILE))
    assert re.search(r"rq-dashboard==\d+\.\d+", installs), "pin rq-dashboard"
    assert _user(DASHBOARD_DOCKERFILE) not in ("root", "0")


def test_compose_needs_no_env_file():
    raw = COMPOSE.read_text()
    assert not re.search(r"^\s*env_file:", raw, re.M), "docker-compose 1.29 fails on a missing env_file"
    assert not re.search(r"^version:", raw, re.M)


# ----------------------------------------------------------------------------------------------------
# Dockerfiles


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def _pip_installs(path: Path) -> list[str]:
    runs = [args for word, args in _instructions(path) if word == "RUN"]
    return [seg for run in runs for seg in re.split(r"&&|;", run) if re.search(r"\bpip3? install\b", seg)]


def _cmd(path: Path) -> list[str]:
    cmds = [args for word, args in _instructions(path) if word == "CMD"]
    assert len(cmds) == 1
    return json.loads(cmds[0])


def _user(path: Path) -> str:
    users = [args for word, args in _instructions(path) if word == "USER"]
    assert users, f"{path.name} runs as root"
    return users[-1]


def _base(path: Path) -> str:
    """The image a Dockerfile builds FROM: its PYTHON_IMAGE build argument's default where it names one."""
    instr = _instructions(path)
    froms = [args for word, args in instr if word == "FROM"]
    assert len(froms) == 1, froms
    args = dict(a.split("=", 1) for word, a in instr if word == "ARG" and "=" in a)
    m = re.fullmatch(r"\$\{?(\w+)\}?", froms[0])
    return args[m.group(1)] if m else froms[0]


def test_bot_image_installs_only_the_bot_extra_and_no_torch():
    instr = _instructions(BOT_DOCKERFILE)
    assert _base(BOT_DOCKERFILE).startswith("python:3.11-slim")
    installs = _pip_installs(BOT_DOCKERFILE)
    assert len(installs) == 1, installs
    assert re.search(r"""["']?\.\[bot\]["']?""", installs[0])
    assert "worker" not in installs[0] and "torch" not in installs[0]
    checks = " ".join(args for word, args in instr if word == "RUN")
    assert "find_spec('torch') is not None" in checks, "the build must fail if torch got in"
    assert _user(BOT_DOCKERFILE) not in ("root", "0")
    assert _cmd(BOT_DOCKERFILE) == ["dreambot", "bot"]


def _torch_range() -> tuple[tuple[int, ...], tuple[int, ...]]:
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(r'"torch>=(\d+)\.(\d+)\.(\d+),<=(\d+)\.(\d+)\.(\d+)((?:,!=\d+\.\d+\.\*)*)"', text)
    assert m, "torch as a closed range in the worker extra"
    v = tuple(int(g) for g in m.groups()[:6])
    lo, hi = v[:3], v[3:]
    # Every minor release between the two ends is excluded: the range admits what runs, nothing between.
    excluded = set(re.findall(r"!=(\d+\.\d+)\.\*", m.group(7)))
    between = {f"{lo[0]}.{minor}" for minor in range(lo[1] + 1, hi[1])} if lo[0] == hi[0] else set()
    assert excluded == between, (excluded, between)
    return lo, hi


def test_worker_image_pins_a_cuda_12_8_torch_and_the_range_admits_what_runs():
    """Hopper and Blackwell need a CUDA 12.8 (or later) build: PyPI's torch 2.9.1 for Linux is one. The
    project's torch range goes from the image's torch to the suite's and no further."""
    instr = _instructions(WORKER_DOCKERFILE)
    assert _base(WORKER_DOCKERFILE).startswith("python:3.11-slim")
    installs = " ".join(_pip_installs(WORKER_DOCKERFILE))
    assert re.search(r"""["']?\.\[worker,fp8\]["']?""", installs)  # fp8: torchao, for DREAMBOT_FP8
    # Triton's launcher is built with the system's C compiler: without one, compile would fail at start.
    assert re.search(r"apt-get install .*\bgcc\b.*\blibc6-dev\b", " ".join(a for w, a in _instructions(WORKER_DOCKERFILE)
                                                                    if w == "RUN"))
    pins = re.findall(r"\btorch==(\d+)\.(\d+)\.(\d+)", installs)
    assert len(pins) == 1, "pin exactly one torch version"
    image_torch = tuple(int(p) for p in pins[0])
    checks = " ".join(args for word, args in instr if word == "RUN")
    assert "torch.version.cuda" in checks and "'12.8'" in checks, "the build fails on anything but the CUDA 12.8 build"
    import torch

    suite_torch = tuple(int(x) for x in re.match(r"(\d+)\.(\d+)\.(\d+)", torch.__version__).groups())
    lo, hi = _torch_range()
    assert (lo, hi) == (min(image_torch, suite_torch), max(image_torch, suite_torch)), (lo, hi, image_torch,
                                                                                      suite_torch)
    assert hi <= TORCH_MAX
    env = " ".join(args for word, args in instr if word == "ENV")
    assert re.search(r"\bHF_HOME=/models\b", env)
    assert _user(WORKER_DOCKERFILE) not in ("root", "0")
    assert _cmd(WORKER_DOCKERFILE) == ["dreambot", "worker"]


def _owned_paths(path: Path) -> set[str]:
    """Paths a Dockerfile creates (mkdir -p) and gives to the user it runs as (chown user:...)."""
    user = _user(path)
    made, owned = set(), set()
    for word, args in _instructions(path):
        if word != "RUN":
            continue
        for seg in re.split(r"&&|;", args):
            words = seg.split()
            if words[:2] == ["mkdir", "-p"]:
                made.update(words[2:])
            if words and words[0] == "chown" and len(words) > 2 and words[1].split(":")[0] == user:
                owned.update(words[2:])
    return made & owned


def test_every_volume_mount_point_exists_in_its_image_owned_by_its_user(config):
    """Docker creates a mount point the image lacks owned by root, and a fresh named volume takes the
    ownership of its mount point: a non-root service could not write it (every dream failed on the first
    `up`: /images). Each of our services' volumes is mounted where its image made the folder its own."""
    dockerfiles = {}
    for name, service in config["services"].items():
        build = service.get("build")
        if not build:
            continue
        dockerfile = ROOT / Path(build["dockerfile"]).relative_to(ROOT) if Path(build["dockerfile"]).is_absolute() \
            else ROOT / build["dockerfile"]
        owned = dockerfiles.setdefault(dockerfile, _owned_paths(dockerfile))
        for source, target in _mounts(service):
            if source in config.get("volumes", {}):  # a named volume (a bind mount is the operator's folder)
                assert target in owned, f"{name}: {target} is not made and chowned in {dockerfile.name}"
    assert dockerfiles, "no service built from our Dockerfiles?"
    # Redis runs as its image's own redis user, whose /data the image makes its own; its config is read-only.
    redis = config["services"]["redis"]
    assert redis["user"] == "redis" and any(t == "/data" for _, t in _mounts(redis))


def test_dockerfiles_run_the_same_commands_as_compose(config):
    services = config["services"]
    assert _cmd(BOT_DOCKERFILE) == services["bot1"]["command"]
    assert _cmd(WORKER_DOCKERFILE) == services["worker"]["command"]


def test_dockerignore_keeps_env_and_git_out_of_images():
    lines = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*", "an allowlist"
    assert not any(ln.startswith("!") and (".env" in ln or ".git" in ln) for ln in lines)
    for needed in ("!pyproject.toml", "!dreambot/", "!dreamcore/", "!bot/", "!worker/"):
        assert needed in lines


# ----------------------------------------------------------------------------------------------------
# .env.example


def _env_example() -> dict[str, tuple[str, str]]:
    """NAME -> (value, the comment just above it), for `NAME=value` and `#NAME=value` lines."""
    out, comment = {}, []
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = re.fullmatch(r"#?\s?([A-Z][A-Z0-9_]*)=(.*)", line)
        if m:  # consecutive assignments (DISCORD_TOKEN_1..10) share the comment above them
            out[m.group(1)] = (m.group(2), " ".join(comment))
        elif line.startswith("#"):
            comment.append(line.lstrip("# "))
        elif not line.strip():
            comment = []
    return out


def test_env_example_documents_every_setting_with_its_default():
    documented = _env_example()
    defaults = setting_defaults()
    missing = [name for name in setting_env_names() if name not in documented]
    assert not missing, f".env.example does not document {missing}"
    for name, default in defaults.items():
        value, comment = documented[name]
        assert comment.strip(), f"{name} has no comment saying what it does"
        assert value == ("" if default is None else str(default)), f"{name}: .env.example says {value!r}, default {default!r}"


def test_env_example_has_the_ten_compose_tokens_empty():
    documented = _env_example()
    for i in range(1, 11):
        assert documented[f"DISCORD_TOKEN_{i}"][0] == ""
    assert documented["DISCORD_TOKEN"][0] == ""


def test_every_variable_compose_reads_is_in_env_example(config):
    documented = _env_example()
    raw = COMPOSE.read_text()
    interpolated = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", raw))
    passed = {k for s in config["services"].values() for k in _env(s)}
    undocumented = (interpolated | passed) - set(documented) - {"HF_HOME", "RQ_DASHBOARD_REDIS_URL"} - {
        "REDISCLI_AUTH", "REDIS_PORT"} - {
        "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "S3_USER", "S3_PASSWORD", "S3_BUCKET", "S3_PREFIX", "RETENTION_DAYS"}
    assert not undocumented, f"add {sorted(undocumented)} to .env.example"


# ----------------------------------------------------------------------------------------------------
# Secrets

# A Discord bot token (base64 user id . timestamp . HMAC), a Hugging Face token, a private key.
SECRET_PATTERNS = [
    re.compile(r"[A-Za-z0-9_-]{23,28}\.[A-Za-z0-9_-]{6,7}\.[A-Za-z0-9_-]{27,40}"),
    re.compile(r"\bhf_[A-Za-z0-9]{30,}"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
]


KNOWN_FIXTURE_TOKEN = "MTAxMjM0NTY3ODkwMTIzNDU2.GhIjKl.abcdefghijklmnopqrstuvwxyz0123456789AB"  # tests/unit/test_logs.py


def test_the_secret_scan_catches_a_token_even_on_a_line_that_says_fake():
    # Put together here so that this file itself holds no token-shaped string.
    line = 'token = "' + ".".join(["MTAxMjM0NTY3ODkwMTIzNDU3", "GhIjKm", "abcdefghijklmnopqrstuvwxyz0123456789AC"]) \
        + '"  # fake'
    assert any(p.search(line) for p in SECRET_PATTERNS) and KNOWN_FIXTURE_TOKEN not in line


def _repo_files() -> list[Path]:
    deploy = [COMPOSE, BOT_DOCKERFILE, WORKER_DOCKERFILE, ENV_EXAMPLE, DOCKERIGNORE]
    if shutil.which("git") and (ROOT / ".git").exists():
        proc = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                              cwd=ROOT, capture_output=True, timeout=60)
        if proc.returncode == 0:
            files = [ROOT / p for p in proc.stdout.decode().split("\0") if p]
            return sorted(set(files) | set(deploy))
    return deploy


def test_no_real_looking_secret_in_the_repository():
    found = []
    for path in _repo_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for n, line in enumerate(text.splitlines(), start=1):
            # The one made-up token the log-redaction test needs, allowed by its exact value (a line that
            # merely says "fake" is scanned like any other).
            if KNOWN_FIXTURE_TOKEN in line:
                continue
            if any(p.search(line) for p in SECRET_PATTERNS):
                found.append(f"{path.relative_to(ROOT)}:{n}")
    assert not found, f"real-looking secrets in {found}"


def test_bots_and_workers_share_the_image_folder_and_minio_makes_its_bucket(config):
    services = config["services"]
    for name in [*BOTS, "worker"]:
        assert any(str(v).startswith("images:/images") or (isinstance(v, dict) and v.get("source") == "images"
                   and v.get("target") == "/images") for v in services[name]["volumes"]), name
        assert _env(services[name])["DREAMBOT_IMAGE_DIR"] == "/images"
    assert services["minio"]["profiles"] == ["s3"] and services["minio-init"]["profiles"] == ["s3"]
    init = " ".join(services["minio-init"]["command"])
    assert "mc mb --ignore-existing" in init and "--expire-days" in init
    assert all(p.startswith("127.0.0.1:") for p in services["minio"]["ports"])


def test_ha_profile_has_a_replica_and_three_sentinels_watching_the_primary(config):
    services = config["services"]
    replica = services["redis-replica"]
    assert replica["profiles"] == ["ha"] and replica["entrypoint"] == services["redis"]["entrypoint"]
    assert replica["command"][replica["command"].index("--replicaof") + 1:][:2] == ["redis", "6379"]
    for name in ("sentinel1", "sentinel2", "sentinel3"):
        sentinel = services[name]
        assert sentinel["profiles"] == ["ha"]
        script = " ".join(sentinel["command"])
        assert "sentinel monitor dreambot redis 6379 2" in script and "--sentinel" in script
        assert "sentinel auth-pass dreambot" in script and "requirepass" in script
    assert "profiles" not in services["redis"]  # the primary runs in every setup



def test_discord_py_is_a_release_that_enforces_nonces():
    """The relay's channel posts are exactly-once through a nonce Discord enforces: discord.py sends
    enforce_nonce with a nonce from 2.5 on, so the bot extra admits nothing older."""
    import discord.http

    m = re.search(r'"discord\.py>=(\d+)\.(\d+)', (ROOT / "pyproject.toml").read_text())
    assert m and (int(m.group(1)), int(m.group(2))) >= (2, 5)
    payload = discord.http.handle_message_parameters(content="x", nonce="dream0123").payload
    assert payload["nonce"] == "dream0123" and payload["enforce_nonce"] is True
