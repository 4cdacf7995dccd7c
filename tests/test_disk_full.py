"""A full disk while a job writes its outputs: the job fails once with a message the
physician understands, and none of its files, whole or partial, is kept or offered.

Here "no space left on device" (ENOSPC) is raised by a write through the atomic writer
(engine/io/atomic.py) part-way through the outputs; tests/integration/test_faults.py fills
a real (tmpfs) file system under a real worker.
"""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from pathlib import Path

import pytest

from engine.io.atomic import write_atomically
from tests.conftest import fake_segmentation
from webapp.delineation import engine_client, runner, tasks, viewer
from webapp.delineation.models import Job

pytestmark = pytest.mark.django_db

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture
def alice_queued(alice, alice_dicom_scan, fake_engine):
    return Job.objects.create(owner=alice, scan_id=alice_dicom_scan["id"], model_name="hn-oar")


def disk_fills_at_rtstruct(monkeypatch, error: BaseException = ENOSPC) -> None:
    """The engine writes the NIfTI outputs, then the disk is full while rtstruct.dcm is written."""

    def engine(input_path, model_name, out_dir, progress=None, series=None):
        fake_segmentation(input_path, model_name, out_dir, progress, series)
        (Path(out_dir) / "rtstruct.dcm").unlink()

        def write(tmp: str) -> None:
            Path(tmp).write_bytes(b"\0" * 128 + b"DICM half")
            raise error

        write_atomically(Path(out_dir) / "rtstruct.dcm", write)

    monkeypatch.setattr(engine_client, "run_segmentation", engine)


def assert_failed_and_nothing_offered(alice_api, job: Job, message: str) -> None:
    job.refresh_from_db()
    assert job.status == "failed" and job.error == message
    assert job.result_dir == "" and job.checksums == {}
    assert not job.output_dir.exists(), sorted(job.output_dir.rglob("*"))
    shown = alice_api.get(f"/api/jobs/{job.id}/").json()
    assert shown["downloads"] == {} and shown["viewer"] is None
    for name in ("labels.nii.gz", "rtstruct.dcm", "structures.zip"):
        response = alice_api.get(f"/api/jobs/{job.id}/{name}")
        assert response.status_code == 409 and "The job failed" in response.json()["detail"]


def test_no_space_during_export_fails_the_job_with_a_message(alice_api, alice_queued, monkeypatch):
    disk_fills_at_rtstruct(monkeypatch)
    assert tasks.run_job.delay(str(alice_queued.id)).get() == "failed"  # returned, not raised: not retried
    assert_failed_and_nothing_offered(
        alice_api,
        alice_queued,
        "The server ran out of disk space while writing the results of the delineation, so it was stopped and "
        "none of its files were kept. Ask the administrator to free disk space, then start the job again.",
    )
    assert "export" in alice_queued.timings and "total" in alice_queued.timings


def test_no_space_for_the_viewer_arrays_too(alice_api, alice_queued, monkeypatch):
    def full(result_dir):
        (Path(result_dir) / "viewer").mkdir()
        (Path(result_dir) / "viewer" / ".image.npy.abc.npy").write_bytes(b"partial")
        raise ENOSPC

    monkeypatch.setattr(viewer, "prepare_viewer", full)
    assert runner.execute_job(alice_queued.id) == "failed"
    assert_failed_and_nothing_offered(alice_api, alice_queued, runner.disk_full_message("segment"))


def test_a_quota_error_wrapped_by_a_library_is_recognised(alice_api, alice_queued, monkeypatch):
    try:
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
    except OSError as quota:
        wrapped = RuntimeError("could not write the DICOM file")
        wrapped.__cause__ = quota
    disk_fills_at_rtstruct(monkeypatch, wrapped)
    assert runner.execute_job(alice_queued.id) == "failed"
    assert_failed_and_nothing_offered(alice_api, alice_queued, runner.disk_full_message("segment"))


def test_another_write_error_is_an_internal_error_and_keeps_no_file_either(alice_api, alice_queued, monkeypatch):
    disk_fills_at_rtstruct(monkeypatch, OSError(errno.EIO, os.strerror(errno.EIO)))
    with pytest.raises(runner.JobFailed):
        runner.execute_job(alice_queued.id)
    alice_queued.refresh_from_db()
    assert alice_queued.error.startswith("Internal error during ") and "Input/output error" in alice_queued.error
    assert_failed_and_nothing_offered(alice_api, alice_queued, alice_queued.error)


def test_no_space_even_for_the_lock_file(alice_api, alice_queued, monkeypatch, fake_engine):
    @contextmanager
    def lock_file_not_created(job):
        raise ENOSPC
        yield

    monkeypatch.setattr(runner, "_run_lock", lock_file_not_created)
    assert runner.execute_job(alice_queued.id) == "failed"
    assert_failed_and_nothing_offered(alice_api, alice_queued, runner.disk_full_message("segment"))
    assert not fake_engine
