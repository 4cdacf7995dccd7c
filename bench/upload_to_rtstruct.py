"""Time from upload to RTSTRUCT, per stage, and the worker's peak memory.

Starts the application as `make run` does (SQLite database, SQLite broker, one Celery
worker, gunicorn) in a temporary folder, then for each case: uploads it through the
REST API, queues an `hn-oar` job, waits for it, downloads the RTSTRUCT. The stack is
restarted for each case so the worker's peak resident memory (VmHWM of the worker and
its pool process) belongs to that case alone. The clinical-size case is the 512 x 512 x
192 CT of ``bench/fullres.py``, written as DICOM into the temporary folder first.

    .venv/bin/python bench/upload_to_rtstruct.py [--json var/bench/upload_to_rtstruct.json]

Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.fullres import fullres_ct  # noqa: E402
from engine.io.dicom_write import write_ct_series  # noqa: E402
from engine.io.nifti import read_volume  # noqa: E402
from tests.stack import DATA, Stack, zip_folder  # noqa: E402

FULLRES = "openkbp pt_104 resampled (512x512x192, 0.977x0.977x2 mm)"
CASES = {
    "openkbp pt_104 (128x128x128, 3.92x3.92x3 mm)": DATA / "openkbp_dicom" / "pt_104",
    "totalseg example (512x512x20, 0.98x0.98x2 mm)": DATA / "totalseg_example" / "example_ct_dicom",
    FULLRES: None,  # made by fullres_series
}


def fullres_series(directory: Path) -> Path:
    """``bench/fullres.py``'s 512 x 512 x 192 CT of openkbp pt_104, as a DICOM series."""
    ct = fullres_ct(read_volume(DATA / "openkbp" / "pt_104" / "ct.nii.gz"))
    write_ct_series(ct, directory, description="openkbp pt_104 full-res")
    return directory


def _peak_rss_mb(pid: int) -> float:
    """Largest VmHWM (MB) among ``pid`` and its descendants (the Celery pool process)."""
    peak, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
            for task in Path(f"/proc/{p}/task").iterdir():
                children = (task / "children").read_text().split()
                todo.extend(int(c) for c in children)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return peak


def run_case(name: str, folder: Path, root: Path) -> dict:
    stack = Stack(root, f"sqlite:///{root}/db.sqlite3", f"sqla+sqlite:///{root}/broker.sqlite3").start()
    try:
        token = stack.token(*stack.create_account())
        archive = zip_folder(folder, root / "upload.zip")
        t0 = time.perf_counter()
        scan = stack.upload_zip(token, archive)
        t_upload = time.perf_counter() - t0
        job = stack.wait_for_job(stack.create_job(token, scan["id"]), token)
        assert job["status"] == "succeeded", job
        url = f"/api/jobs/{job['id']}/rtstruct.dcm"
        rtstruct = stack.api("GET", url, token)
        # 409: outside hn-oar's domain (the 20-slice totalseg example), downloaded as a
        # user does after the warning.
        outside = rtstruct.status == 409
        if outside:
            rtstruct = stack.api("GET", f"{url}?acknowledge=outside-domain", token)
        assert rtstruct.status == 200, (rtstruct.status, rtstruct.data[:300])
        total = time.perf_counter() - t0
        return {
            "case": name,
            "upload_s": round(t_upload, 2),
            "job_timings_s": job["timings"],
            "upload_to_rtstruct_s": round(total, 2),
            "worker_peak_rss_mb": round(_peak_rss_mb(stack.processes["worker"].pid), 0),
            "rtstruct_kb": round(len(rtstruct.data) / 1024, 1),
            "outside_domain": outside,
        }
    finally:
        stack.stop()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path, default=REPO / "var" / "bench" / "upload_to_rtstruct.json")
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    args = parser.parse_args()
    results = []
    for name in args.cases:
        with tempfile.TemporaryDirectory() as tmp:
            folder = CASES[name] or fullres_series(Path(tmp) / "series")
            results.append(run_case(name, folder, Path(tmp)))
            print(json.dumps(results[-1]), flush=True)
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    machine = f"{cpu}, {os.cpu_count()} cores"
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=1))
    stages = ["queue", "ingest", "preprocess", "network", "export", "viewer", "store"]
    print(f"\nMachine: {machine}\n")
    print("| case | upload | " + " | ".join(stages) + " | upload to RTSTRUCT | worker peak RSS |")
    print("|---|---|" + "---|" * len(stages) + "---|---|")
    for r in results:
        t = r["job_timings_s"]
        cells = " | ".join(f"{t.get(s, 0):.1f} s" for s in stages)
        print(
            f"| {r['case']} | {r['upload_s']:.1f} s | {cells} | {r['upload_to_rtstruct_s']:.1f} s | "
            f"{r['worker_peak_rss_mb']:.0f} MB |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
