"""The local processes a bench run starts or watches: servers, a private Redis, /proc readings.

Everything here is for the machine the bench runs on: a server or ``redis-server``
started for the run (optionally pinned to a CPU with ``taskset``), and the CPU
time, run-queue wait and RSS of any local process read from ``/proc``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any


def pinned(cmd: list[str], cpu: int | None) -> list[str]:
    """``cmd`` run on ``cpu`` only (``taskset`` execs it: same pid), or as is."""
    if cpu is not None and shutil.which("taskset"):
        return ["taskset", "-c", str(cpu), *cmd]
    return cmd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def package_path(src: str) -> str:
    """The directory to put first on the path to run the package from ``src``: ``src``
    itself when it holds ``cpc_signaling/``, else its ``src/`` (a checkout's root).
    Anything else is refused: on the path it would change nothing, and the servers
    would silently run the installed package instead of the tree asked for."""
    for candidate in (src, os.path.join(src, "src")):
        if os.path.isfile(os.path.join(candidate, "cpc_signaling", "__init__.py")):
            return candidate
    raise ValueError(f"{src}: no cpc_signaling package there (nor in {src}/src)")


class ServerProcess:
    """A ``cpc-signaling serve`` started by the bench, optionally pinned to one CPU (and
    optionally from another source tree of the package, ``src``).

    Started by the constructor; :meth:`wait_listening` returns once it printed its URL
    (several can be started first and waited for afterwards, so they boot in parallel).
    """

    def __init__(
        self,
        extra: Sequence[str],
        cpu: int | None,
        *,
        wait: bool = True,
        src: str | None = None,
    ) -> None:
        cmd = [sys.executable, "-m", "cpc_signaling", "serve", "--port", "0", *extra]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if src:  # another source tree of the package: it comes first on the path
            path = package_path(src)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [path, env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            pinned(cmd, cpu),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self.url = ""
        if wait:
            self.wait_listening()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def http(self) -> str:
        """``http://host:port`` of the server (for /readyz and /metrics)."""
        return re.sub(r"^ws", "http", self.url).rsplit("/", 1)[0]

    def wait_listening(self, timeout: float = 20.0) -> str:
        self.url = self._wait_for_url(timeout)
        threading.Thread(target=self._pump, daemon=True).start()
        return self.url

    def _wait_for_url(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        timer = threading.Timer(timeout, self.proc.kill)
        timer.start()
        try:
            for line in self.proc.stdout:
                self.lines.append(line)
                match = re.search(r"ws://\S+", line)
                if match:
                    return match.group(0)
        finally:
            timer.cancel()
        raise RuntimeError("the server exited before listening:\n" + "".join(self.lines))

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            del self.lines[:-200]

    def get(self, path: str) -> tuple[int, str]:
        """(status, body) of a GET on the server's HTTP side."""
        try:
            with urllib.request.urlopen(self.http + path, timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Poll /readyz until 200 (an instance on Redis is ready once connected to it)."""
        deadline = time.monotonic() + timeout
        while True:
            status, body = self.get("/readyz")
            if status == 200:
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"server pid {self.pid} not ready ({body.strip()}):\n"
                    + "".join(self.lines[-20:])
                )
            time.sleep(0.05)

    def counter(self, name: str, label: str | None = None) -> float:
        """Sum of a metric's samples on /metrics (those with ``label`` in them, if given)."""
        _, text = self.get("/metrics")
        total = 0.0
        for line in text.splitlines():
            head, _, value = line.rpartition(" ")
            if (head == name or head.startswith(name + "{")) and (label is None or label in head):
                total += float(value)
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class RedisProcess:
    """A private ``redis-server`` for one run: a free port, loopback only, no persistence
    (no RDB snapshots, no AOF), its own empty directory; optionally pinned to a CPU."""

    def __init__(self, cpu: int | None, binary: str | None = None, timeout: float = 10.0) -> None:
        found = binary or shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.path.exists(found):
            raise SystemExit(
                f"redis-server not found ({found}): install it (apt-get install redis-server) "
                "or name it with --redis-server PATH"
            )
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tempfile.mkdtemp(prefix="cpc-bench-redis-")
        cmd = [
            found,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self._dir,
            "--loglevel", "warning",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            pinned(cmd, cpu), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        import redis

        self.client: Any = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                self.client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stats(self) -> dict[str, Any]:
        """``INFO stats`` as a dict: ``total_net_output_bytes``, ``total_commands_processed``..."""
        info: dict[str, Any] = self.client.info("stats")
        return info

    def command_stats(self) -> dict[str, tuple[int, int]]:
        """``INFO commandstats``: command name -> (calls, microseconds spent in it)."""
        info: dict[str, Any] = self.client.info("commandstats")
        return {
            name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"]))
            for name, v in info.items()
        }

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # no persistence: nothing to save
            self.proc.wait(5)
        self.client.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def proc_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) of ``pid`` and its threads, from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss(pid: int) -> int | None:
    """Resident set size of ``pid`` in bytes."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def cpu_busy(cpus: Sequence[int]) -> float | None:
    """CPU seconds spent running tasks (user + nice + system) on ``cpus``, from /proc/stat.

    Interrupt and softirq time are left out: they are not charged to any process, so they
    would otherwise look like someone else's load.
    """
    wanted = {f"cpu{c}" for c in cpus}
    total = 0
    try:
        with open("/proc/stat") as f:
            for line in f:
                fields = line.split()
                if fields and fields[0] in wanted:
                    total += int(fields[1]) + int(fields[2]) + int(fields[3])
    except OSError:
        return None
    return total / os.sysconf("SC_CLK_TCK")
