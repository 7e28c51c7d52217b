"""Redis that only the fleet can use: the users of deploy/redis/users.acl, loaded by compose's own start script
into a real redis-server, each role's calls made as its user; and TLS for workers on other hosts, against
redis-server's own TLS port with a certificate made here."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis

from dreamcore import delivery, redisconn
from dreamcore.job import make_job, make_origin, make_request
from dreamcore.localredis import free_port
from dreamcore.queue import fair_order
from dreamcore.queue.rq_queues import DreamQueue, queue_names
from dreamcore.settings import load_settings
from tests.support import ROOT
from tests.support.fleet import Fleet, image_messages, wait_until
from tests.support.standin import DiscordStandIn

pytestmark = pytest.mark.timeout(300)

START = ROOT / "deploy" / "redis" / "start.sh"
USERS = ROOT / "deploy" / "redis" / "users.acl"


def _start_redis(tmp: Path, *extra: str) -> SimpleNamespace:
    """redis-server as compose starts it: deploy/redis/start.sh with the four passwords in its environment."""
    passwords = {name: secrets.token_hex(16) for name in (
        "REDIS_ADMIN_PASSWORD", "REDIS_BOT_PASSWORD", "REDIS_WORKER_PASSWORD", "REDIS_DASHBOARD_PASSWORD")}
    port = free_port()
    env = {"PATH": os.environ["PATH"], "REDIS_PORT": str(port), "DREAMBOT_ACL_TEMPLATE": str(USERS),
           "DREAMBOT_ACL_FILE": str(tmp / "users.acl"), **passwords}
    proc = subprocess.Popen(["sh", str(START), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp), "--loglevel", "warning", *extra], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    admin = redis.Redis(port=port, password=passwords["REDIS_ADMIN_PASSWORD"], socket_connect_timeout=0.5)

    def up():
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read().decode())
        try:
            return admin.ping()
        except redis.ConnectionError:
            return False

    wait_until(up, 15, "redis-server never answered")
    return SimpleNamespace(proc=proc, port=port, url=f"redis://127.0.0.1:{port}/0", admin=admin,
                           acl_file=tmp / "users.acl", **passwords)


@pytest.fixture
def acl_redis(tmp_path):
    server = _start_redis(tmp_path)
    yield server
    server.proc.terminate()
    server.proc.wait(10)


def _as(server, role: str) -> redis.Redis:
    return redis.Redis(port=server.port, username=f"dreambot-{role}",
                       password=getattr(server, f"REDIS_{role.upper()}_PASSWORD"))


def test_the_start_script_refuses_a_missing_or_short_password(tmp_path):
    env = {"PATH": os.environ["PATH"], "DREAMBOT_ACL_TEMPLATE": str(USERS), "DREAMBOT_ACL_FILE": str(tmp_path / "a"),
           "REDIS_ADMIN_PASSWORD": "x" * 20, "REDIS_BOT_PASSWORD": "short", "REDIS_WORKER_PASSWORD": "y" * 20,
           "REDIS_DASHBOARD_PASSWORD": "z" * 20}
    proc = subprocess.run(["sh", str(START)], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "REDIS_BOT_PASSWORD must be set to 16 characters or more" in proc.stderr
    assert not (tmp_path / "a").exists()


def test_each_role_reaches_only_its_keys(acl_redis):
    s = acl_redis
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=s.port).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=s.port, username="dreambot-bot", password=s.REDIS_WORKER_PASSWORD).ping()
    written = s.acl_file.read_text()
    assert all(p not in written for p in (s.REDIS_ADMIN_PASSWORD, s.REDIS_BOT_PASSWORD, s.REDIS_WORKER_PASSWORD))

    bot, worker, dash = _as(s, "bot"), _as(s, "worker"), _as(s, "dashboard")
    # The worker: not the limits, nor the bots' records of jobs (the interaction tokens), nor a cancel flag.
    for key in ("dream:limits:{1}:config", "dream:job:0123456789abcdef", "dream:vote:round:x", "dream:params:x",
                "dream:operator:{1}", "dream:cancel:x"):
        with pytest.raises(redis.exceptions.NoPermissionError):
            worker.set(key, "forged")
    with pytest.raises(redis.exceptions.NoPermissionError):
        worker.get("dream:job:0123456789abcdef")
    assert worker.get("dream:cancel:x") is None and worker.get("dream:gone:channel:1") is None  # read-only
    worker.xadd("dream:outbox:bot1", {"job_id": "x", "status": "done"})
    worker.zadd("dream:published:bot1", {"x": 1.0})
    worker.set("dream:done:x", "done")
    # A bot's result stream and published set: additions only, so no worker can make results vanish.
    for attempt in (lambda: worker.delete("dream:outbox:bot1"), lambda: worker.xtrim("dream:outbox:bot1", 0),
                    lambda: worker.xgroup_destroy("dream:outbox:bot1", "deliver"),
                    lambda: worker.zrem("dream:published:bot1", "x"), lambda: worker.xrange("dream:outbox:bot1")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()
    # Inside a script too: the user's rights hold for every command a script makes.
    with pytest.raises(redis.ResponseError, match="can't access"):
        worker.eval("return redis.call('SET', 'dream:limits:{1}:x', 1)", 0)
    # No one but the admin runs the server.
    for client in (bot, worker, dash):
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.flushall()
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.config_get("*")
    with pytest.raises(redis.exceptions.NoPermissionError):
        dash.get("dream:limits:{1}:config")
    bot.set("dream:limits:{1}:config", "ok")


def test_a_dream_goes_through_with_every_process_as_its_own_user(acl_redis, tiny_model_dir, tmp_path):
    """The bot, the worker (its maintenance too: the fair queue's reconcile, the image sweep) and the relay do
    all their work as their own users: a dream comes back, and no log says NOPERM."""
    s = acl_redis
    standin = DiscordStandIn().start()
    fleet = Fleet(standin, s.url, tiny_model_dir, tmp_path)
    try:
        fleet.setup(1)
        bot = fleet.bots[0]
        fleet.start_bot(bot, REDIS_USERNAME="dreambot-bot", REDIS_PASSWORD=s.REDIS_BOT_PASSWORD)
        fleet.wait_bots_ready()
        fleet.start_worker(REDIS_USERNAME="dreambot-worker", REDIS_PASSWORD=s.REDIS_WORKER_PASSWORD)
        fleet.dream(bot, aspect="12:5", seed=5).wait_ack(5)
        wait_until(lambda: image_messages(standin, bot.channel_id), 120, "no image came back")
        time.sleep(1.0)
        logs = fleet.logs()
        assert "NOPERM" not in logs and "no permissions" not in logs, [
            line for line in logs.splitlines() if "NOPERM" in line or "no permissions" in line][:5]
        assert "fair-queue reconcile failed" not in logs and "image store sweep failed" not in logs
    finally:
        fleet.stop()
        standin.stop()


def _certificates(tmp: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate for 127.0.0.1 it signed: (ca.crt, server.crt, server.key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def cert(subject: str, key, issuer: str, issuer_key, ca: bool, san=None):
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
             .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    ca_key, srv_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = cert("dreambot test CA", ca_key, "dreambot test CA", ca_key, True)
    srv = cert("127.0.0.1", srv_key, "dreambot test CA", ca_key, False,
               [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    paths = tmp / "ca.crt", tmp / "server.crt", tmp / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(srv.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(srv_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return paths


def test_a_worker_on_another_host_over_tls(tmp_path, tiny_model_dir):
    """Redis with a TLS port beside its plain one (the bots on the same host use plain; a worker elsewhere
    rediss://, checking Redis's certificate against the operator's CA): the worker logs in over TLS as its
    own user and the dream comes back. A client that doesn't trust the CA is refused."""
    ca, crt, key = _certificates(tmp_path)
    tls_port = free_port()
    s = _start_redis(tmp_path, "--tls-port", str(tls_port), "--tls-cert-file", str(crt), "--tls-key-file",
                     str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no")
    standin = DiscordStandIn().start()
    fleet = Fleet(standin, s.url, tiny_model_dir, tmp_path)
    try:
        tls_url = f"rediss://127.0.0.1:{tls_port}/0"
        untrusted = load_settings(redis_url=tls_url, redis_username="dreambot-worker",
                                  redis_password=s.REDIS_WORKER_PASSWORD)
        with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
            redisconn.connect(untrusted, connect_timeout_s=2).ping()
        trusted = load_settings(redis_url=tls_url, redis_tls_ca=str(ca), redis_username="dreambot-worker",
                                redis_password=s.REDIS_WORKER_PASSWORD)
        assert redisconn.connect(trusted, connect_timeout_s=2).ping()

        fleet.setup(1)
        bot = fleet.bots[0]
        fleet.start_bot(bot, REDIS_USERNAME="dreambot-bot", REDIS_PASSWORD=s.REDIS_BOT_PASSWORD)
        fleet.wait_bots_ready()
        fleet.start_worker(REDIS_URL=tls_url, REDIS_TLS_CA=str(ca), REDIS_USERNAME="dreambot-worker",
                           REDIS_PASSWORD=s.REDIS_WORKER_PASSWORD)
        fleet.dream(bot, aspect="12:5", seed=6).wait_ack(5)
        wait_until(lambda: image_messages(standin, bot.channel_id), 120, "no image came back over TLS")
        clients = s.admin.client_list()
        assert any(c.get("user") == "dreambot-worker" for c in clients)
    finally:
        fleet.stop()
        standin.stop()
        s.proc.terminate()
        s.proc.wait(10)


def test_the_worker_cannot_queue_a_job_a_bot_would_post(acl_redis):
    """Even with the queue's own code, a worker can put a job in the fair queue only without the bot's record
    of it (dreamcore.delivery), and a result for such a job is never posted (tests/test_forgery.py)."""
    s = acl_redis
    settings = load_settings(redis_url=s.url, redis_username="dreambot-worker", redis_password=s.REDIS_WORKER_PASSWORD)
    conn = redisconn.connect(settings)
    job = make_job(make_request(prompt="forged", seed=1), make_origin(instance="bot1", guild_id=1, channel_id=2,
                                                                      user_id=3))
    with pytest.raises(redis.exceptions.NoPermissionError):
        DreamQueue(conn, settings).enqueue(job)  # the transaction writes the record: refused as a whole
    assert fair_order.totals(_as(s, "bot"), queue_names()).jobs == 0
    assert delivery.load_record(_as(s, "bot"), job.job_id) is None
