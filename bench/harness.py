"""What every benchmark shares: its own Redis, gateway processes, tables and ``RESULTS.md``.

Each benchmark starts everything it measures on loopback and stops it at the end: a
``redis-server`` on a free port in a temporary directory (AOF ``everysec``, ``noeviction``, as in
production), gateway processes as ``python -m gateway serve|worker`` with ``TTGW_*`` variables,
and the emulator as TikTok. Results go to stdout as a table and to ``bench/RESULTS.md`` as a
markdown section that names the machine, the date and the commit.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT) not in sys.path:  # tests.delivery_support and gateway, whatever the install
    sys.path.insert(0, str(ROOT))

from tests.support import redis_server_args

RESULTS = BENCH / "RESULTS.md"
PIXEL = "CXXXXXXXXXXXXXXXXXX0"
TOKEN = "emulator-token-0001"
LOOPBACK = "127.0.0.1"


# --- the machine -----------------------------------------------------------------------------


def _run(cmd: Sequence[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, cwd=ROOT)
    except (OSError, subprocess.SubprocessError):
        return "?"
    return out.stdout.strip() or "?"


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def commit() -> str:
    """``git rev-parse --short HEAD``, marked when the work tree has uncommitted changes."""
    head = _run(["git", "rev-parse", "--short", "HEAD"])
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"])
    return f"{head} (work tree modified)" if dirty not in ("", "?") else head


def machine() -> dict[str, str]:
    """Where and when the benchmark ran."""
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit(),
        "uname": _run(["uname", "-a"]),
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "python": platform.python_version(),
        "redis": _run(["redis-server", "--version"]).split(" sha=")[0],
    }


# --- tables and results ------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    """PASS or FAIL."""
    return "PASS" if ok else "FAIL"


@dataclass
class Table:
    """A table printed as aligned text and written as markdown."""

    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        """One row; cells are shown with ``str``."""
        self.rows.append([str(c) for c in cells])

    def text(self) -> str:
        """Aligned plain text, for the terminal."""
        widths = [len(h) for h in self.headers]
        for row in self.rows:
            widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
        line = "  ".join("-" * w for w in widths)
        out = [self.title, line]
        out.append("  ".join(h.ljust(w) for h, w in zip(self.headers, widths, strict=True)))
        out.append(line)
        out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in self.rows]
        out.append(line)
        return "\n".join(out)

    def markdown(self) -> str:
        """A GitHub markdown table under a bold title."""
        out = [f"**{self.title}**", "", "| " + " | ".join(self.headers) + " |"]
        out.append("|" + "|".join("---" for _ in self.headers) + "|")
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in self.rows]
        return "\n".join(out)


class Report:
    """A benchmark's tables and notes: printed as they come, appended to RESULTS.md at the end."""

    def __init__(self, name: str, summary: str) -> None:
        self.name = name
        self.summary = summary
        self.machine = machine()
        self.parts: list[str] = []
        self.verdicts: list[tuple[str, bool]] = []
        self.load_before = os.getloadavg()[0]
        self.cpu_before = _cpu_ticks()
        self.started = time.monotonic()

    def table(self, table: Table) -> None:
        """Print a table and keep it for RESULTS.md."""
        print("\n" + table.text(), flush=True)
        self.parts.append(table.markdown())

    def note(self, text: str) -> None:
        """A paragraph under the tables (scaled workloads, caveats)."""
        print("note: " + text, flush=True)
        self.parts.append(text)

    def check(self, target: str, ok: bool) -> str:
        """Record a target's outcome; PASS or FAIL for the table."""
        self.verdicts.append((target, ok))
        return verdict(ok)

    def finish(self) -> int:
        """Append the section to RESULTS.md; print the verdict line; the exit status (0)."""
        m = self.machine
        head = [
            f"## {self.name} — {m['date']} — commit {m['commit']}",
            self.summary,
            f"Machine: `{m['uname']}`; CPU {m['cpu']}, {m['cores']} cores, {m['memory']}; "
            f"Python {m['python']}; {m['redis']}. Load average (1 min) {self.load_before:.2f} "
            f"before, {os.getloadavg()[0]:.2f} after; ran {time.monotonic() - self.started:.0f} s; "
            f"{_cpu_note(self.cpu_before, _cpu_ticks())}.",
        ]
        passed = sum(ok for _, ok in self.verdicts)
        failed = [t for t, ok in self.verdicts if not ok]
        tail = f"Targets: {passed} PASS, {len(failed)} FAIL" + (
            f" ({'; '.join(failed)})." if failed else "."
        )
        section = "\n\n".join([*head, *self.parts, tail]) + "\n"
        if not RESULTS.exists():
            RESULTS.write_text(
                "# Benchmark results\n\nAppended by the scripts in `bench/` (see "
                "`bench/README.md`), newest last. Each section names its machine, date and "
                "commit; compare ratios, not absolute numbers, across machines.\n"
            )
        with RESULTS.open("a") as out:
            out.write("\n" + section)
        print(f"\n{self.name}: {tail}  (appended to {RESULTS.relative_to(ROOT)})", flush=True)
        return 0


def _cpu_ticks() -> list[int]:
    """The machine's ``cpu`` line of /proc/stat (user nice system idle iowait irq softirq steal)."""
    with contextlib.suppress(OSError, ValueError):
        return [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return []


def _cpu_note(before: list[int], after: list[int]) -> str:
    if len(before) < 8 or len(after) < 8:
        return "machine CPU use unknown"
    delta = [a - b for a, b in zip(after, before, strict=True)]
    total = sum(delta) or 1
    busy = total - delta[3] - delta[4]
    return (
        f"whole machine busy {busy / total:.0%} of {os.cpu_count()} cores (everything running, "
        f"this benchmark included), CPU stolen by the hypervisor {delta[7] / total:.1%}"
    )


def redis_latency(url: str) -> str:
    """Redis's own record of stalls over 100 ms (``LATENCY LATEST``), as text."""
    client = redis.Redis.from_url(url)
    try:
        events = client.latency_latest()
    except redis.RedisError as exc:
        return f"unknown ({exc})"
    finally:
        client.close()
    if not events:
        return "none over 100 ms"
    # each: [event name, last time, last ms, max ms]
    return "; ".join(
        f"{e[0]!s}: {e[3]!s} ms at worst".replace("b'", "").replace("'", "") for e in events
    )


# --- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(check: Any, timeout_s: float, what: str) -> None:
    """Poll ``check()`` until truthy; RuntimeError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout_s} s waiting for {what}")


def http_ok(url: str) -> bool:
    """True when ``url`` answers 2xx."""
    with urllib.request.urlopen(url, timeout=2) as answer:
        return bool(200 <= answer.status < 300)


class Workspace:
    """A temporary directory and every process started in it, stopped in reverse order."""

    def __init__(self, name: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"ttgw-bench-{name}-"))
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def __enter__(self) -> Workspace:
        signal.signal(signal.SIGTERM, _raise_interrupt)
        return self

    def __exit__(self, *exc: object) -> None:
        for _, proc in reversed(self.procs):
            self.stop(proc)
        if os.environ.get("TTGW_BENCH_KEEP") != "1":
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            print(f"kept {self.dir}", flush=True)

    def spawn(
        self, name: str, cmd: Sequence[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``cmd`` with stdout/stderr in ``<dir>/<name>.out|err``."""
        with (
            open(self.dir / f"{name}.out", "wb") as out,
            open(self.dir / f"{name}.err", "wb") as err,
        ):
            proc = subprocess.Popen(list(cmd), env=env, stdout=out, stderr=err, cwd=ROOT)
        self.procs.append((name, proc))
        return proc

    def output(self, name: str) -> str:
        """What process ``name`` wrote to stderr (last 2,000 characters)."""
        path = self.dir / f"{name}.err"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def stop(self, proc: subprocess.Popen[bytes], timeout_s: float = 15) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.procs = [(n, p) for n, p in self.procs if p is not proc]

    async def astop(self, proc: subprocess.Popen[bytes], timeout_s: float = 20) -> None:
        """:meth:`stop` without blocking the event loop (an in-process emulator must go on
        answering the process's last requests)."""
        import asyncio

        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(proc.wait, timeout_s)
        self.stop(proc)

    # --- redis -------------------------------------------------------------------------------

    def redis(self, name: str = "redis") -> str:
        """A redis-server configured like production (AOF everysec, noeviction); its URL."""
        port = free_port()
        data = self.dir / name
        data.mkdir()
        self.spawn(
            name,
            [
                *redis_server_args(shutil.which("redis-server") or "redis-server", port, data),
                "--latency-monitor-threshold",
                "100",
            ],
        )
        url = f"redis://{LOOPBACK}:{port}/0"
        client = redis.Redis.from_url(url)
        try:
            wait_for(client.ping, 10, "redis-server")
        finally:
            client.close()
        return url

    # --- gateway -----------------------------------------------------------------------------

    def gateway_env(self, redis_url: str, **extra: str) -> dict[str, str]:
        """The environment of a gateway process: inherited, minus TTGW_*, plus ours."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("TTGW_")}
        env.update(
            TTGW_REDIS_URL=redis_url,
            TTGW_DATA_DIR=str(self.dir / "data"),
            TTGW_PIXEL_CODE=PIXEL,
            TTGW_ACCESS_TOKEN=TOKEN,
            TTGW_HOST=LOOPBACK,
            TTGW_TIKTOK_API_URL=f"http://{LOOPBACK}:9/open_api/v1.3/",
        )
        env.update(extra)
        return env

    def serve(
        self, name: str, env: dict[str, str], port: int, python: Sequence[str] = ()
    ) -> subprocess.Popen[bytes]:
        """``python -m gateway serve`` on ``port``; returns once /healthz answers."""
        cmd = list(python) or [sys.executable, "-m", "gateway"]
        proc = self.spawn(name, [*cmd, "serve", "--port", str(port)], env)
        out = self.dir / f"{name}.out"
        # its own banner: with SO_REUSEPORT another process may answer /healthz on the port
        self._await_health(proc, name, f"http://{LOOPBACK}:{port}/healthz")
        wait_for(lambda: "listening on" in out.read_text(errors="replace"), 30, f"{name} banner")
        return proc

    def worker(
        self, name: str, env: dict[str, str], python: Sequence[str] = ()
    ) -> subprocess.Popen[bytes]:
        """``python -m gateway worker``, started (not awaited: it may need an emulator that
        runs in the caller's event loop)."""
        cmd = list(python) or [sys.executable, "-m", "gateway"]
        return self.spawn(name, [*cmd, "worker"], env)

    def emulator(self, name: str = "emulator", latency_ms: float = 20.0) -> str:
        """``python -m gateway emulator`` as its own process; its API base URL."""
        port = free_port()
        proc = self.spawn(
            name,
            [
                sys.executable,
                "-m",
                "gateway",
                "emulator",
                "--port",
                str(port),
                "--token",
                f"{TOKEN}={PIXEL}",
                "--latency-ms",
                str(latency_ms),
            ],
        )
        base = f"http://{LOOPBACK}:{port}"

        def up() -> bool:
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited {proc.returncode}: {self.output(name)}")
            return http_ok(base + "/_emulator/events?since=999999999")

        wait_for(up, 30, name)
        return base + "/open_api/v1.3/"

    def bare(
        self, name: str, port: int, redis_url: str | None = None, python: Sequence[str] = ()
    ) -> subprocess.Popen[bytes]:
        """The baseline: ``bench/bare_server.py`` (aiohttp on uvloop, parses JSON, answers 202;
        with ``redis_url``, also one XADD per request)."""
        cmd = [*(python or [sys.executable]), str(BENCH / "bare_server.py"), str(port)]
        proc = self.spawn(name, [*cmd, redis_url] if redis_url else cmd)
        self._await_health(proc, name, f"http://{LOOPBACK}:{port}/healthz")
        return proc

    def _await_health(self, proc: subprocess.Popen[bytes], name: str, url: str) -> None:
        def up() -> bool:
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited {proc.returncode}: {self.output(name)}")
            return http_ok(url)

        wait_for(up, 30, f"{name} at {url}")


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


# --- the event a storefront posts ------------------------------------------------------------

# What c.js posts for one ttq.track('AddToCart', ...) (one event per request, every one new).
EVENT_TEMPLATE = (
    '{"type":"track","event":"AddToCart","event_id":"%s",'
    '"properties":{"value":129.0,"currency":"EUR","content_type":"product",'
    '"contents":[{"content_id":"SKU-2481","quantity":1,"price":129.0}]},'
    '"timestamp":%d,"page":{"url":"https://shop.example/products/sku-2481?color=red",'
    '"referrer":"https://shop.example/collections/new"},'
    '"consent":{"ad_user_data":"granted","ad_personalization":"granted"}}'
)
BODY_TEMPLATE = '{"events":[' + EVENT_TEMPLATE + "]}"
BROWSER_HEADERS = {
    "Content-Type": "text/plain;charset=UTF-8",
    "User-Agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Accept-Language": "fr-FR,fr;q=0.9",
}


def event_body(event_id: str, timestamp_ms: int | None = None) -> bytes:
    """The JSON body of one new collector event."""
    ms = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    return (BODY_TEMPLATE % (event_id, ms)).encode()


def text(value: bytes | str) -> str:
    """A Redis reply as text."""
    return value.decode() if isinstance(value, bytes) else value


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` (0-100) percentile of already sorted values (nearest rank)."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def median(values: Sequence[float]) -> float:
    """The median."""
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return float("nan")
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2


@contextlib.contextmanager
def stage(label: str) -> Iterator[None]:
    """Print what runs and how long it took."""
    print(f"-- {label} ...", flush=True)
    started = time.monotonic()
    yield
    print(f"   {label}: {time.monotonic() - started:.1f} s", flush=True)


# --- load generators -------------------------------------------------------------------------

_WRK_LUA = """-- every request a new collector event (wrk gives each thread its own Lua state)
local prefix = "%(prefix)s"
local template = [[%(template)s]]
local counter = 0
local started = 0
wrk.method = "POST"
%(headers)s
function setup(thread)
  started = started + 1
  thread:set("tid", started)
end
function request()
  counter = counter + 1
  local body = (string.gsub(template, "EVID", prefix .. "-" .. tostring(tid) .. "-" .. counter))
  return wrk.format(nil, "/e", nil, body)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\\"requests\\":%%d,\\"duration_us\\":%%d,\\"p50_us\\":%%d,\\"p90_us\\":%%d," ..
    "\\"p99_us\\":%%d,\\"max_us\\":%%d,\\"errors_status\\":%%d,\\"errors_other\\":%%d}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.status, e.connect + e.read + e.write + e.timeout))
end
"""


def wrk_path() -> str | None:
    """The wrk binary, when installed (``apt-get install -y wrk``)."""
    return shutil.which("wrk")


@dataclass(frozen=True)
class Load:
    """One load run's outcome: successful requests per second and latency in ms."""

    tool: str
    requests: int
    ok: int
    elapsed_s: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rps(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s else 0.0


def run_wrk(
    workdir: Path,
    url: str,
    prefix: str,
    *,
    connections: int,
    duration_s: float,
    threads: int = 1,
    events_per_request: int = 1,
) -> Load:
    """Peak load with wrk (C connections, back to back); every request new events (one by
    default, as c.js sends a single ``ttq.track``)."""
    import json

    stamp = int(time.time() * 1000)
    one = EVENT_TEMPLATE.replace("%d", str(stamp))
    ids = ["EVID"] if events_per_request == 1 else [f"EVID-{j}" for j in range(events_per_request)]
    template = '{"events":[' + ",".join(one.replace("%s", i) for i in ids) + "]}"
    headers = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in BROWSER_HEADERS.items())
    script = workdir / f"wrk-{prefix}.lua"
    script.write_text(_WRK_LUA % {"prefix": prefix, "template": template, "headers": headers})
    cmd = [
        wrk_path() or "wrk",
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{max(1, round(duration_s))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 30)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result: {out.stdout[-1000:]} {out.stderr[-1000:]}")
    data = json.loads(line.removeprefix("WRKJSON "))
    errors = int(data["errors_status"]) + int(data["errors_other"])
    return Load(
        tool="wrk",
        requests=int(data["requests"]),
        ok=int(data["requests"]) - int(data["errors_status"]),
        elapsed_s=int(data["duration_us"]) / 1e6,
        p50_ms=int(data["p50_us"]) / 1000,
        p99_ms=int(data["p99_us"]) / 1000,
        errors=errors,
    )


def run_loadgen(mode: str, url: str, prefix: str, **options: float) -> dict[str, Any]:
    """``bench/loadgen.py`` in its own process; its JSON result."""
    import json

    args = [sys.executable, str(BENCH / "loadgen.py"), mode, url, "--prefix", prefix]
    for name, value in options.items():
        args += [f"--{name}", str(value)]
    budget = float(options.get("duration", 60)) + 60
    out = subprocess.run(args, capture_output=True, text=True, timeout=budget)
    if out.returncode != 0:
        raise RuntimeError(f"loadgen failed: {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def loadgen_load(result: dict[str, Any]) -> Load:
    """A loadgen result as a :class:`Load`."""
    return Load(
        tool="aiohttp",
        requests=int(result["requests"]),
        ok=int(result["ok"]),
        elapsed_s=float(result["elapsed_s"]),
        p50_ms=float(result["p50_ms"]),
        p99_ms=float(result["p99_ms"]),
        errors=int(result["requests"]) - int(result["ok"]),
    )


def peak_load(workdir: Path, url: str, prefix: str, *, connections: int, duration_s: float) -> Load:
    """Peak load with wrk when installed, else with the aiohttp load generator."""
    if wrk_path():
        return run_wrk(workdir, url, prefix, connections=connections, duration_s=duration_s)
    result = run_loadgen("closed", url, prefix, connections=connections, duration=duration_s)
    return loadgen_load(result)
