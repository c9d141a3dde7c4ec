"""``make soak``: the real server under a steady mixed load for minutes, on loopback, and what must hold.

``calmfirst serve`` (the shipped model, its own logging config) is started on a free loopback port
with its log captured to a file; locust (headless, ``bench/locustfile.py``) runs 16 clients for
``SOAK_MINUTES`` (default 10) mixing single messages, batches and conversations, 30% of the texts
carrying phones, ID numbers, cards and emails, 5% hostile bodies. While it runs, the server's
resident memory is sampled every 5 s. Then:

- zero 5xx and zero dropped connections (reset, refused, timed out) over all requests;
- every hostile body got exactly its 4xx, every good request a 200 with the contract's fields;
- p50/p95/p99 latency per request kind and overall (exact, from every request);
- RSS at minute 2 and at the end (minute 10): growth under 5%;
- none of the personal values sent appears raw anywhere in the server's log (stdout and stderr).

The server runs with ``MALLOC_ARENA_MAX=2``, as ``make run`` starts it (``--malloc-arena-max ''`` for
glibc's default). Results go to ``bench/soak.json`` (the log and locust's CSVs to ``bench/work/soak/``);
the exit code is non-zero when a criterion fails. ``SOAK_MINUTES=1 make soak`` checks the machinery in a minute (the
memory check then compares 12 s with the end, and says so).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.soak_data import leak_needles

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "work" / "soak"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return round(ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo), 2)


def _summary(latencies: list[float]) -> dict[str, Any]:
    return {
        "requests": len(latencies),
        "p50_ms": _percentile(latencies, 0.50),
        "p95_ms": _percentile(latencies, 0.95),
        "p99_ms": _percentile(latencies, 0.99),
        "max_ms": round(max(latencies), 2) if latencies else None,
        "mean_ms": round(statistics.fmean(latencies), 2) if latencies else None,
    }


class RssSampler(threading.Thread):
    """The server's resident memory (with any child processes) every ``every`` seconds."""

    def __init__(self, pid: int, every: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.every = every
        self.samples: list[tuple[float, float]] = []
        #: the machine's 1-minute load average alongside (other jobs share the cores)
        self.load: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.t0 = time.monotonic()

    def rss_mb(self) -> float:
        procs = [self.proc, *self.proc.children(recursive=True)]
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                continue
        return total / 2**20

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                t = round(time.monotonic() - self.t0, 1)
                self.samples.append((t, round(self.rss_mb(), 1)))
                self.load.append((t, round(os.getloadavg()[0], 2)))
            except psutil.Error:
                return
            self.stop.wait(self.every)

    def at(self, t: float) -> tuple[float, float] | None:
        """The sample closest to ``t`` seconds after the load started."""
        return min(self.samples, key=lambda s: abs(s[0] - t)) if self.samples else None


def _start_server(port: int, log_path: Path, model: str | None, arenas: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if arenas:
        # glibc gives each of the thread pool's threads its own malloc arena; their fragmentation made RSS
        # creep ~9 MB a minute for 10 minutes (bench/soak.json of the default); 2 arenas keep it flat
        env["MALLOC_ARENA_MAX"] = arenas
    cmd = [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    if model:
        cmd += ["--model", model]
    log = open(log_path, "wb")  # noqa: SIM115 - the server writes to it until it stops
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 600) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("the server was not ready in time")


def run(
    minutes: float, users: int, output: Path, model: str | None, hostile_share: float, arenas: str = "2"
) -> dict[str, Any]:
    if WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = WORK / "server.log"
    server = _start_server(port, log_path, model, arenas)
    try:
        ready_s = _wait_ready(url, server)
        sampler = RssSampler(server.pid)
        rss_start = sampler.rss_mb()
        sampler.start()
        results_path = WORK / "locust-results.json"
        env = {
            **os.environ,
            "SOAK_RESULTS": str(results_path),
            "SOAK_HOSTILE_SHARE": str(hostile_share),
            "PYTHONPATH": str(ROOT),
        }
        run_time = f"{max(1, round(minutes * 60))}s"
        locust = [
            str(Path(sys.executable).with_name("locust")),
            "-f",
            str(ROOT / "bench" / "locustfile.py"),
            "--headless",
            "--users",
            str(users),
            "--spawn-rate",
            str(users),
            "--run-time",
            run_time,
            "--host",
            url,
            "--csv",
            str(WORK / "locust"),
            "--only-summary",
            "--stop-timeout",
            "30",
            "--exit-code-on-error",
            "0",
            "--loglevel",
            "WARNING",
        ]
        load_started = time.monotonic()
        sampler.t0 = load_started
        proc = subprocess.run(locust, env=env, cwd=ROOT, capture_output=True, text=True)
        load_s = time.monotonic() - load_started
        (WORK / "locust.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
        sampler.stop.set()
        sampler.join(timeout=10)
        rss_end = sampler.rss_mb()
        healthy = httpx.get(f"{url}/healthz", timeout=10).status_code == 200
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    if not results_path.exists():
        raise SystemExit(f"locust wrote no results (exit {proc.returncode}); see {WORK / 'locust.log'}")
    load = json.loads(results_path.read_text(encoding="utf-8"))

    # ---------------------------------------------------------------- the criteria
    all_latencies = [ms for values in load["latencies_ms"].values() for ms in values]
    per_kind = {kind: _summary(values) for kind, values in sorted(load["latencies_ms"].items())}
    statuses = load["statuses"]
    requests = len(all_latencies)
    errors_5xx = sum(n for c in statuses.values() for s, n in c.items() if int(s) >= 500)
    dropped = sum(n for c in statuses.values() for s, n in c.items() if int(s) == 0)
    failures = sum(load["failures"].values())
    warm_at = min(120.0, 0.2 * minutes * 60)
    warm = sampler.at(warm_at)
    end = sampler.samples[-1] if sampler.samples else None
    growth = round(100 * (end[1] - warm[1]) / warm[1], 2) if warm and end else None
    log_text = log_path.read_text(encoding="utf-8", errors="replace")
    leaks = {needle: log_text.count(needle) for needle in leak_needles() if needle in log_text}
    hostile = {k.removeprefix("hostile: "): v for k, v in statuses.items() if k.startswith("hostile: ")}
    checks = {
        "no 5xx": errors_5xx == 0,
        "no dropped connections": dropped == 0,
        "every answer as expected": failures == 0,
        "RSS growth under 5%": growth is not None and growth < 5.0,
        "no raw personal data in the server log": not leaks,
        "server healthy after the run": healthy,
    }
    report = {
        "created": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": f"SOAK_MINUTES={minutes:g} make soak",
        "duration_s": round(load_s, 1),
        "minutes": minutes,
        "users": users,
        "hostile_share": hostile_share,
        "server": {
            "model": model or "model/default (shipped)",
            "ready_after_s": round(ready_s, 1),
            "MALLOC_ARENA_MAX": arenas or "glibc default",
        },
        "requests": requests,
        "requests_per_s": round(requests / load_s, 2) if load_s else None,
        "failures": failures,
        "failures_by_class": load["failures"],
        "failure_examples": load["failure_examples"],
        "errors_5xx": errors_5xx,
        "dropped_connections": dropped,
        "latency": {"all": _summary(all_latencies), **per_kind},
        "statuses": statuses,
        "hostile_cases": hostile,
        "rss_mb": {
            "before_load": round(rss_start, 1),
            "warm": {"at_s": warm[0], "mb": warm[1]} if warm else None,
            "end": {"at_s": end[0], "mb": end[1]} if end else None,
            "after_load": round(rss_end, 1),
            "growth_pct_warm_to_end": growth,
            "warm_point": "minute 2" if warm_at == 120.0 else f"{warm_at:.0f} s (20% of a short run)",
            "samples": sampler.samples,
        },
        "pii": {"values_looked_for": len(leak_needles()), "found_in_log": leaks, "log_lines": log_text.count("\n")},
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "load_average_1min_during": {
                "mean": round(statistics.fmean(v for _, v in sampler.load), 2) if sampler.load else None,
                "max": max((v for _, v in sampler.load), default=None),
            },
            "python": platform.python_version(),
        },
        "checks": checks,
        "passed": all(checks.values()),
        "artifacts": str(WORK.relative_to(ROOT)),
    }
    output.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", "10")))
    parser.add_argument("--users", type=int, default=int(os.environ.get("SOAK_USERS", "16")))
    parser.add_argument("--hostile-share", type=float, default=0.05)
    parser.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "soak.json")
    parser.add_argument(
        "--malloc-arena-max",
        default=os.environ.get("SOAK_MALLOC_ARENA_MAX", "2"),
        help="MALLOC_ARENA_MAX for the server, as make run sets it ('' = glibc's default: one arena per thread)",
    )
    args = parser.parse_args()
    report = run(args.minutes, args.users, args.output, args.model, args.hostile_share, args.malloc_arena_max)
    lat = report["latency"]["all"]
    rss = report["rss_mb"]
    print(
        f"soak: {report['requests']} requests in {report['duration_s']} s ({report['requests_per_s']}/s), "
        f"{report['failures']} failures, {report['errors_5xx']} 5xx, {report['dropped_connections']} dropped; "
        f"p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms; RSS {rss['warm']['mb'] if rss['warm'] else '?'} MB "
        f"({rss['warm_point']}) -> {rss['end']['mb'] if rss['end'] else '?'} MB (end), "
        f"growth {rss['growth_pct_warm_to_end']}%; personal data in the log: {len(report['pii']['found_in_log'])}"
    )
    for name, ok in report["checks"].items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    print(f"results: {args.output}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
