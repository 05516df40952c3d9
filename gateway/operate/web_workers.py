"""``tt-gateway serve --workers N``: N web processes sharing one port through SO_REUSEPORT.

The parent serves nothing. It holds the port bound (not listening) so that a busy port fails at
once and port 0 resolves to one port for every child, then re-executes ``python -m gateway serve``
N times with a marker in the environment: each child builds its own Redis clients and app from
scratch, nothing is inherited across a fork. The parent prints the banner once, restarts a child
that dies (with backoff), and on SIGINT or SIGTERM passes the signal on and waits, bounded.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

from gateway.logs import get_logger
from gateway.settings import Settings
from gateway.store import keys

log = get_logger("gateway.web_workers")

MAX_WORKERS = 64
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_S = 30.0  # a child that lived this long resets its slot's backoff
POLL_S = 0.1


def watch_parent() -> None:
    """In a child: stop (SIGTERM to itself) when the supervisor is gone, never linger orphaned."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def hold_port(host: str, port: int) -> socket.socket:
    """Bind (without listening) the port the children will share; raise OSError when taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


@dataclass
class _Slot:
    index: int
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff_s: float = BACKOFF_FIRST_S
    restart_at: float | None = None
    restarts: int = field(default=0)


class Supervisor:
    """Start, watch and stop N ``serve`` children on one port."""

    def __init__(self, settings: Settings, workers: int, port: int) -> None:
        self.settings = settings
        self.port = port
        self.slots = [_Slot(i) for i in range(workers)]
        self.stopping = False

    def _command(self) -> list[str]:
        # --web-child: serve, no banner; the child inherits the environment, and an embedded
        # Redis the parent started is shared through its data dir (EmbeddedRedis attaches)
        return [sys.executable, "-m", "gateway", "serve", "--web-child",
                "--host", self.settings.host, "--port", str(self.port)]  # fmt: skip

    def _start(self, slot: _Slot) -> None:
        slot.process = subprocess.Popen(self._command())  # noqa: S603
        slot.started_at = time.monotonic()
        slot.restart_at = None
        log.info("web_worker_started", worker=slot.index, pid=slot.process.pid)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True

    def run(self, started: Callable[[], None]) -> int:
        """Supervise until SIGINT or SIGTERM; the exit status of the command."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for slot in self.slots:
                self._start(slot)
            announced = False
            while not self.stopping:
                now = time.monotonic()
                for slot in self.slots:
                    status = self._check(slot, now)
                    if status is not None and not announced:
                        # died before any child answered on the port: it cannot start
                        log.error("web_worker_cannot_start", worker=slot.index, status=status)
                        self._stop_all()
                        return status if status > 0 else 1
                if not announced and self._answers():
                    started()
                    announced = True
                time.sleep(POLL_S)
            log.info("stopping", workers=len(self.slots))
            self._stop_all()
            return 0
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _answers(self) -> bool:
        """Whether the shared port accepts a connection yet (some child is listening)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(  # noqa: S104
            self.settings.host, self.settings.host
        )
        try:
            with socket.create_connection((host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _check(self, slot: _Slot, now: float) -> int | None:
        """Restart a dead child when its backoff is over; the status of a child just found dead."""
        if slot.process is None:
            if slot.restart_at is not None and now >= slot.restart_at:
                slot.restarts += 1
                self._start(slot)
            return None
        status = slot.process.poll()
        if status is None:
            return None
        lived = now - slot.started_at
        if lived >= STABLE_S:
            slot.backoff_s = BACKOFF_FIRST_S
        log.warning("web_worker_died", worker=slot.index, pid=slot.process.pid, status=status,
                    lived_s=round(lived, 1), restart_in_s=slot.backoff_s)  # fmt: skip
        slot.process = None
        slot.restart_at = now + slot.backoff_s
        slot.backoff_s = min(slot.backoff_s * 2, BACKOFF_MAX_S)
        return status

    def _stop_all(self) -> None:
        """SIGTERM every child, then SIGKILL those still there after the grace."""
        running = [s.process for s in self.slots if s.process is not None]
        for process in running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + keys.SHUTDOWN_GRACE_S + 5
        for process in running:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("web_worker_killed", pid=process.pid)
                process.kill()
                process.wait()


def supervise(settings: Settings, workers: int, banner: Callable[[int], None]) -> int:
    """Run ``workers`` web processes on the settings' host and port until told to stop."""
    try:
        held = hold_port(settings.host, settings.port)
    except OSError as exc:
        print(f"tt-gateway: cannot listen on {settings.host}:{settings.port}: {exc}",
              file=sys.stderr, flush=True)  # fmt: skip
        return 1
    with held:
        port: int = held.getsockname()[1]
        supervisor = Supervisor(settings, workers, port)

        def started() -> None:
            banner(port)
            pids = [s.process.pid for s in supervisor.slots if s.process is not None]
            print(f"  web workers: {workers} processes on port {port} (pids "
                  f"{', '.join(map(str, pids))})", flush=True)  # fmt: skip
            log.info("started", host=settings.host, port=port, workers=workers)

        return supervisor.run(started)
