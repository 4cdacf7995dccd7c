"""Load: 20 concurrent uploads while jobs run, then a soak of N jobs on two workers.

Starts the web server (gunicorn, as `make run`) and two Celery workers (one pool process each) on a
fresh PostgreSQL database and Redis (tests/stack.py; ``--embedded`` for SQLite and the
SQLite broker instead), then:

1. *uploads under load*: uploads two scans and queues a job on each, then uploads
   ``--uploads`` scans at once from as many threads while those jobs run;
2. *soak*: ``--jobs`` jobs (``hn-oar``) over the uploaded scans, one at a time per scan
   (the same job on the same scan is not queued twice while it is unfinished), so up to
   one job per scan waits in the queue; the client polls ``GET /api/jobs/`` once a second.

Every HTTP request is counted, and any that fails (an exception, or a status other than
the one expected) is listed. Every second the resident memory (VmRSS) of each worker's
main process and of its pool process is sampled from /proc, and the summary states it
after the first soak job of each worker, at the end, and its peak.

The scans are the DICOM cases of ../shared/data/openkbp_dicom, zipped, used in turn
(``--synthetic`` for a 48 x 48 x 24 synthetic CT series instead: faster jobs).

    .venv/bin/python bench/load.py [--uploads 20] [--jobs 50] [--markdown var/bench/load.md]

Prints a summary (Markdown) for docs/benchmarks.md; JSON in var/bench/load.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests import factories  # noqa: E402
from tests.stack import DATA, REDIS_URL, PostgresDatabase, Stack, reachable, zip_folder  # noqa: E402


class Requests:
    """Every HTTP request of the run: (what, status, seconds); failures kept with their reason."""

    def __init__(self, stack: Stack, token: str) -> None:
        self.stack, self.token = stack, token
        self.log: list[tuple[str, int, float]] = []
        self.failures: list[str] = []
        self._lock = threading.Lock()

    def call(self, what: str, expected: tuple[int, ...], method: str, path: str, **kwargs):
        started = time.perf_counter()
        try:
            response = self.stack.api(method, path, self.token, **kwargs)
        except Exception as exc:  # a refused or dropped connection is a failed request
            with self._lock:
                self.log.append((what, 0, time.perf_counter() - started))
                self.failures.append(f"{what}: {type(exc).__name__}: {exc}")
            return None
        with self._lock:
            self.log.append((what, response.status, time.perf_counter() - started))
            if response.status not in expected:
                self.failures.append(f"{what}: HTTP {response.status}: {response.data[:200]!r}")
        return response if response.status in expected else None

    def upload(self, archive: Path) -> str | None:
        response = self.call(
            "upload",
            (201,),
            "POST",
            "/api/scans/",
            fields={"file": (archive.name, archive.read_bytes(), "application/zip")},
        )
        return json.loads(response.data)["id"] if response else None

    def queue(self, scan_id: str) -> str | None:
        response = self.call(
            "queue job",
            (201,),
            "POST",
            "/api/jobs/",
            body=json.dumps({"scan": scan_id, "model": "hn-oar"}),
            headers={"Content-Type": "application/json"},
        )
        return json.loads(response.data)["id"] if response else None

    def jobs(self) -> dict[str, dict]:
        response = self.call("list jobs", (200,), "GET", "/api/jobs/")
        return {job["id"]: job for job in json.loads(response.data)} if response else {}


class MemorySampler(threading.Thread):
    """VmRSS (MB) of each worker's main process and pool processes, once a second."""

    def __init__(self, stack: Stack) -> None:
        super().__init__(daemon=True)
        self.pids = {name: p.pid for name, p in stack.processes.items() if name.startswith("worker")}
        self.samples: list[dict] = []
        self.stopped = threading.Event()
        self.t0 = time.monotonic()

    @staticmethod
    def rss_mb(pid: int) -> float:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except (FileNotFoundError, ProcessLookupError):
            pass
        return 0.0

    @staticmethod
    def children(pid: int) -> list[int]:
        try:
            return [
                int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()
            ]
        except (FileNotFoundError, ProcessLookupError):
            return []

    def run(self) -> None:
        while not self.stopped.wait(1.0):
            sample = {"t": round(time.monotonic() - self.t0, 1)}
            for name, pid in self.pids.items():
                sample[name] = {
                    "main": round(self.rss_mb(pid), 1),
                    "pool": round(sum(self.rss_mb(c) for c in self.children(pid)), 1),
                }
            self.samples.append(sample)

    def at(self, t: float) -> dict:
        """The first sample at or after ``t`` seconds."""
        return next((s for s in self.samples if s["t"] >= t), self.samples[-1])


def wait_for(requests: Requests, job_ids: set[str], timeout_s: float) -> dict[str, dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        jobs = requests.jobs()
        if all(jobs.get(j, {}).get("status") in ("succeeded", "failed") for j in job_ids):
            return jobs
        if time.monotonic() > deadline:
            raise SystemExit(f"jobs not finished after {timeout_s} s")
        time.sleep(1)


def scans_to_upload(work: Path, synthetic: bool) -> list[Path]:
    if synthetic:
        paths = factories.dicom_series(work / "CT", slices=24, size=48)
        archive = work / "synthetic.zip"
        archive.write_bytes(factories.zip_bytes({f"CT/{p.name}": p.read_bytes() for p in paths}))
        return [archive]
    cases = sorted(p for p in (DATA / "openkbp_dicom").iterdir() if p.is_dir())
    if not cases:
        raise SystemExit(f"no DICOM case under {DATA / 'openkbp_dicom'}; use --synthetic")
    return [zip_folder(case, work / f"{case.name}.zip") for case in cases]


def soak(requests: Requests, scans: list[str], total: int, timeout_s: float) -> tuple[list[dict], list[float]]:
    """``total`` jobs over ``scans``, one unfinished job per scan at a time; returns the
    finished jobs and when each was seen finished (``time.monotonic()``), in order."""
    started = time.monotonic()
    seen_done: list[float] = []
    queued: dict[str, str] = {}  # job id -> scan id
    finished: dict[str, dict] = {}
    free = list(scans)
    while len(finished) < total:
        while free and len(queued) + len(finished) < total:
            scan = free.pop(0)
            job_id = requests.queue(scan)
            if job_id:
                queued[job_id] = scan
            else:  # counted as a failed request; the scan stays free for the next one
                free.append(scan)
                break
        time.sleep(1)
        jobs = requests.jobs()
        for job_id in [j for j in queued if jobs.get(j, {}).get("status") in ("succeeded", "failed")]:
            finished[job_id] = jobs[job_id]
            seen_done.append(time.monotonic())
            free.append(queued.pop(job_id))
        if time.monotonic() - started > timeout_s:
            raise SystemExit(f"soak not finished after {timeout_s} s ({len(finished)} of {total} jobs)")
    return list(finished.values()), seen_done


def memory_figures(samples: list[dict], workers: list[str], window: tuple[float, float]) -> dict:
    """Per worker, over the soak (``window``, seconds on the sampler's clock): the pool
    process's RSS between jobs (the lowest sample of each fifth of the soak: a leak shows
    as a rise from fifth to fifth), its peak (during a job), and the main process's RSS."""
    soak = [s for s in samples if window[0] <= s["t"] <= window[1] + 5]
    span = (window[1] - window[0]) / 5
    figures = {}
    for name in workers:
        fifths = [
            [s[name]["pool"] for s in soak if window[0] + k * span <= s["t"] < window[0] + (k + 1) * span + 5]
            for k in range(5)
        ]
        figures[name] = {
            "pool_between_jobs_mb": [min(values, default=0.0) for values in fifths],
            "pool_peak_mb": max(s[name]["pool"] for s in soak),
            "main_start_mb": soak[0][name]["main"],
            "main_end_mb": soak[-1][name]["main"],
        }
    return figures


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {memory_gib:.0f} GiB RAM"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else 0.0


def summarise(result: dict) -> str:
    r = result
    lines = [
        f"Machine: {r['machine']}; load average before the run {r['load_before']}, after {r['load_after']}.",
        f"Stack: gunicorn (1 process, 16 threads), 2 Celery workers x 1 pool process, {r['backend']}; scans: {r['scans']}.",
        "",
        "| phase | requests | failed | result |",
        "|---|---|---|---|",
        f"| {r['uploads']} uploads at once, while {len(r['busy_jobs'])} jobs run | {r['uploads']} | "
        f"{r['upload_failures']} | upload time median {r['upload_s']['median']:.1f} s, "
        f"max {r['upload_s']['max']:.1f} s; the jobs: {', '.join(r['busy_jobs'])} |",
        f"| soak: {r['soak_jobs']} jobs | {r['soak_requests']} | {r['soak_failures']} | "
        f"{r['soak_succeeded']} succeeded, {r['soak_failed']} failed in {r['soak_s']:.0f} s "
        f"({r['jobs_per_min']:.1f} jobs/min); job total median {r['job_total_s']['median']:.1f} s, "
        f"queue wait median {r['queue_s']['median']:.1f} s, max {r['queue_s']['max']:.1f} s |",
        "",
        "| worker | pool RSS between jobs, soak's 1st fifth | 2nd | 3rd | 4th | last fifth | peak (in a job) | "
        "main process RSS start / end |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in r["memory"].items():
        lines.append(
            f"| {name} | {' | '.join(f'{v:.0f} MB' for v in m['pool_between_jobs_mb'])} | "
            f"{m['pool_peak_mb']:.0f} MB | {m['main_start_mb']:.0f} / {m['main_end_mb']:.0f} MB |"
        )
    if r["failures"]:
        lines += ["", "Failed requests:", *[f"- {f}" for f in r["failures"]]]
    return "\n".join(lines)


def run(args: argparse.Namespace, root: Path) -> dict:
    database = None
    if args.embedded:
        stack = Stack(root, f"sqlite:///{root}/db.sqlite3", f"sqla+sqlite:///{root}/broker.sqlite3")
        backend = "SQLite database, SQLite broker"
    else:
        if not (reachable("127.0.0.1", 5432) and reachable("127.0.0.1", 6379)):
            raise SystemExit("PostgreSQL (5432) and Redis (6379) must run on 127.0.0.1, or use --embedded")
        database = PostgresDatabase()
        stack = Stack(root, database.url, REDIS_URL)
        backend = "PostgreSQL, Redis"
    archives = scans_to_upload(root / "scans", args.synthetic)
    load_before = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    stack.start(workers=2)
    sampler = MemorySampler(stack)
    try:
        requests = Requests(stack, stack.token(*stack.create_account()))
        sampler.start()
        busy = [requests.upload(archives[i % len(archives)]) for i in range(2)]
        busy_jobs = {requests.queue(scan) for scan in busy if scan}
        with ThreadPoolExecutor(max_workers=args.uploads) as pool:
            timed = list(
                pool.map(
                    lambda i: (time.perf_counter(), requests.upload(archives[i % len(archives)]), time.perf_counter()),
                    range(args.uploads),
                )
            )
        upload_s = [end - start for start, _, end in timed]
        uploaded = [scan for _, scan, _ in timed if scan]
        upload_failures = len(requests.failures)
        busy_states = wait_for(requests, {j for j in busy_jobs if j}, args.timeout)
        requests_before_soak = len(requests.log)
        soak_t0 = time.monotonic()
        finished, seen_done = soak(requests, uploaded + [s for s in busy if s], args.jobs, args.timeout)
        soak_s = seen_done[-1] - soak_t0
        time.sleep(2)  # one more memory sample after the last job
        sampler.stopped.set()
        sampler.join()
    finally:
        sampler.stopped.set()
        stack.stop()
        if database is not None:
            database.drop()
    soak_log = requests.log[requests_before_soak:]
    totals = [j["timings"].get("total", 0) for j in finished if j["status"] == "succeeded"]
    queues = [j["timings"].get("queue", 0) for j in finished]
    window = (soak_t0 - sampler.t0, seen_done[-1] - sampler.t0)
    memory = memory_figures(sampler.samples, list(sampler.pids), window)
    return {
        "machine": machine(),
        "load_before": load_before,
        "load_after": " / ".join(f"{x:.1f}" for x in os.getloadavg()),
        "backend": backend,
        "scans": "synthetic 48x48x24 CT" if args.synthetic else f"openkbp_dicom, {len(archives)} cases in turn",
        "uploads": args.uploads,
        "upload_failures": upload_failures,
        "upload_s": {"median": percentile(upload_s, 0.5), "max": max(upload_s)},
        "busy_jobs": [busy_states.get(j, {}).get("status", "missing") for j in busy_jobs],
        "soak_jobs": args.jobs,
        "soak_requests": len(soak_log),
        "soak_failures": sum(1 for _, status, _ in soak_log if status not in (200, 201)),
        "soak_succeeded": sum(1 for j in finished if j["status"] == "succeeded"),
        "soak_failed": sum(1 for j in finished if j["status"] == "failed"),
        "soak_errors": sorted({j["error"] for j in finished if j["status"] == "failed"}),
        "soak_s": soak_s,
        "jobs_per_min": 60 * len(finished) / soak_s,
        "job_total_s": {"median": percentile(totals, 0.5), "max": max(totals, default=0)},
        "queue_s": {"median": percentile(queues, 0.5), "max": max(queues, default=0)},
        "soak_window_s": window,
        "memory": memory,
        "failures": requests.failures,
        "memory_samples": sampler.samples,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=20, help="scans uploaded at once (default 20)")
    parser.add_argument("--jobs", type=int, default=50, help="jobs of the soak (default 50)")
    parser.add_argument("--synthetic", action="store_true", help="a small synthetic CT instead of openkbp cases")
    parser.add_argument("--embedded", action="store_true", help="SQLite database and broker, not PostgreSQL, Redis")
    parser.add_argument("--timeout", type=float, default=7200, help="seconds before a phase is given up")
    parser.add_argument("--json", type=Path, default=REPO / "var" / "bench" / "load.json")
    parser.add_argument("--markdown", type=Path, help="also write the summary to this file")
    parser.add_argument("--summary-of", type=Path, help="print the summary of a saved run (its JSON); run nothing")
    args = parser.parse_args()
    if args.summary_of:
        result = json.loads(args.summary_of.read_text())
        args.jobs = result["soak_jobs"]
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = run(args, Path(tmp))
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    summary = summarise(result)
    print(summary)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(summary + "\n")
    ok = not result["failures"] and result["soak_succeeded"] == args.jobs
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
