"""Redis high availability on loopback, all real processes: a primary, replicas and three sentinels
(`redis-server --sentinel`, from the same package as redis-server), with failure detection in about a
second so a failover fits in a test."""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import redis

from dreamcore.localredis import LocalRedis, free_port

MASTER = "dreambot"
# Every node may become the primary: a replica that joins syncs at once instead of after 5 s.
NODE_ARGS = ("--repl-diskless-sync-delay", "0")


class HaRedis:
    def __init__(self, replicas: int = 1, sentinels: int = 3, down_after_ms: int = 1000,
                 failover_timeout_ms: int = 4000):
        self.tmp = Path(tempfile.mkdtemp(prefix="dreambot-ha-"))
        self.primary = LocalRedis(extra_args=NODE_ARGS)
        self.nodes = [self.primary]
        self.n_replicas, self.n_sentinels = replicas, sentinels
        self.down_after_ms, self.failover_timeout_ms = down_after_ms, failover_timeout_ms
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.sentinels: list[subprocess.Popen] = []

    def start(self, timeout: float = 30.0) -> HaRedis:
        self.primary.start()
        for _ in range(self.n_replicas):
            node = LocalRedis(extra_args=(*NODE_ARGS, "--replicaof", "127.0.0.1", str(self.primary.port)))
            self.nodes.append(node.start())
        for i, port in enumerate(self.sentinel_ports):
            conf = self.tmp / f"sentinel-{i}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.tmp}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER} {self.down_after_ms}\n"
                f"sentinel failover-timeout {MASTER} {self.failover_timeout_ms}\n"
                f"sentinel parallel-syncs {MASTER} 1\n")
            self.sentinels.append(subprocess.Popen([self.primary.binary, str(conf), "--sentinel"],
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + timeout
        while not self._settled():
            if time.monotonic() > deadline:
                raise RuntimeError("the sentinels never saw the whole group")
            time.sleep(0.1)
        return self

    def _settled(self) -> bool:
        try:
            for port in self.sentinel_ports:
                s = redis.Redis(port=port, socket_timeout=0.5)
                if (len(s.sentinel_slaves(MASTER)) < self.n_replicas
                        or len(s.sentinel_sentinels(MASTER)) < self.n_sentinels - 1):
                    return False
            info = redis.Redis(port=self.primary_port(), socket_timeout=0.5).info("replication")
            return all(info.get(f"slave{i}", {}).get("state") == "online" for i in range(self.n_replicas))
        except redis.RedisError:
            return False

    @property
    def env(self) -> dict[str, str]:
        return {"REDIS_SENTINELS": ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports),
                "REDIS_SENTINEL_MASTER": MASTER}

    def primary_port(self) -> int:
        for port in self.sentinel_ports:
            try:
                _host, p = redis.Redis(port=port, socket_timeout=0.5).sentinel_get_master_addr_by_name(MASTER)
                return int(p)
            except (redis.RedisError, TypeError):
                continue
        raise RuntimeError("no sentinel answers")

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.primary_port())

    def kill_primary(self) -> LocalRedis:
        """SIGKILL the current primary, as a lost machine would; returns it (start() brings it back, and
        the sentinels make it a replica of whoever was promoted)."""
        port = self.primary_port()
        node = next(n for n in self.nodes if n.port == port)
        node.kill()
        return node

    def wait_promoted(self, old_port: int, timeout: float = 30.0) -> float:
        """Seconds until the sentinels name a new primary that answers as one."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            try:
                port = self.primary_port()
                if port != old_port and redis.Redis(port=port, socket_timeout=0.5).info("replication")["role"] == "master":
                    return time.monotonic() - t0
            except (redis.RedisError, RuntimeError):
                pass
            time.sleep(0.05)
        raise TimeoutError("no replica was promoted")

    def stop(self) -> None:
        for p in self.sentinels:
            p.kill()
            p.wait(5)
        for n in self.nodes:
            n.close()
