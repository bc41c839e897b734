"""A private ``redis-server`` for tests: free port, no persistence, stopped at the end."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence

REDIS_SERVER = (
    os.environ.get("CPC_TEST_REDIS_SERVER")
    or shutil.which("redis-server")
    or ("/usr/bin/redis-server")
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """``redis-server --port P --save '' --appendonly no``; restartable on the same port."""

    def __init__(self, port: int | None = None, args: Sequence[str] = ()) -> None:
        if not os.path.exists(REDIS_SERVER):
            raise RuntimeError(
                f"redis-server not found at {REDIS_SERVER}: the Redis tests need it "
                "(`make test` installs it; or apt-get install redis-server)"
            )
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        # A port picked here may be taken before redis-server binds it (tests run in
        # parallel workers): the first start then moves to another free port.
        self._may_move = port is None
        self.proc: subprocess.Popen[bytes] | None = None
        self.args = list(args)  # more redis-server options
        self._dir = tempfile.mkdtemp(prefix="cpc-redis-")

    def start(self, timeout: float = 10.0) -> None:
        for _ in range(5 if self._may_move else 1):
            if self._start(timeout):
                self._may_move = False
                return
            self.port = free_port()
            self.url = f"redis://127.0.0.1:{self.port}/0"
        assert self.proc is not None
        raise RuntimeError(f"redis-server exited with {self.proc.returncode}")

    def _start(self, timeout: float) -> bool:
        """Start it; False if it exited at once (its port taken)."""
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", self._dir,
                "--loglevel", "warning",
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s,
            ):
                # Ours, not another worker's redis-server on a port both picked.
                s.sendall(b"INFO server\r\n")
                reply = b""
                while b"process_id:" not in reply or not reply.endswith(b"\r\n"):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    reply += chunk
                if f"process_id:{self.proc.pid}\r\n".encode() in reply:
                    return True
                if b"process_id:" in reply:
                    self.proc.wait(5)  # another's: ours cannot bind; it exits
                    return False
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        """Stop it for good (SIGKILL: nothing survives, as after a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def command(self, *args: str) -> bytes:
        """One command over a raw socket (RESP); returns the raw reply."""
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(b"".join(parts))
            time.sleep(0.05)
            return s.recv(1 << 20)

    def info(self, field: str) -> int:
        """A number from ``INFO`` (``total_net_output_bytes``, ``used_memory``, ...)."""
        for line in self.command("INFO").decode().splitlines():
            if line.startswith(field + ":"):
                return int(line.split(":", 1)[1])
        raise KeyError(field)

    def strings(self, *args: str) -> list[str]:
        """A command whose reply is an array of bulk strings (SMEMBERS, ZRANGE, ...)."""
        reply = self.command(*args)
        assert reply.startswith(b"*"), reply
        lines = reply.split(b"\r\n")
        return [lines[i].decode() for i in range(2, len(lines) - 1, 2)]

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


@contextlib.contextmanager
def redis_server(*args: str) -> Iterator[RedisServer]:
    """A private redis-server; ``args``: more of its options."""
    server = RedisServer(args=args)
    server.start()
    try:
        yield server
    finally:
        server.close()
