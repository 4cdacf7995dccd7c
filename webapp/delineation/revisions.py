"""Revisions of a job's label map: each correction saved as a new revision, never over the
model's output (revision 0, the job's own ``labels.nii.gz``), and approval of one.

An edit body (``POST /api/jobs/{id}/edits/``), by ``mode``:

* ``add`` / ``erase``: ``structure``, ``plane``, ``index`` and either ``polygon``
  ([[row, column], ...] in the slice endpoint's pixels) or ``mask`` (run lengths, see
  ``editing.rle_mask``);
* ``delete``: ``structure``, ``plane``, ``first``, ``last``: the structure off those slices;
* ``interpolate``: ``structure``, ``plane``, ``first``, ``last``: the slices between redrawn
  from those two (``editing.interpolate``);
* ``restore``: ``revision``: a new revision equal to an earlier one (undo);
* ``direct`` (a contour propagation whose model also segments the daily scan): ``structure``:
  the structure replaced by the model's direct segmentation of the daily scan, to correct
  further from there.

Edits and approvals lock the job's row, so revision numbers follow each other. Approving
approves the latest revision; an edit after it makes a new, unapproved one.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
from django.db import transaction
from django.utils import timezone

from webapp.delineation import editing, engine_client, outputs, viewer
from webapp.delineation.editing import EditError
from webapp.delineation.engine_client import ResultFolder, RevisionExport, write_atomically
from webapp.delineation.models import Job, Revision

MODES = ("add", "erase", "delete", "interpolate", "restore", "direct")
_RTSTRUCT_FILES = (f"/{ResultFolder.RTSTRUCT}", f"/{ResultFolder.RTSTRUCT_CHECK}")


def check_editable(job: Job) -> None:
    """Raise :class:`EditError` unless ``job`` has finished with contours to edit."""
    if job.status == Job.Status.FAILED:
        raise EditError(f"This job failed, so it has no contours to edit: {job.error}")
    if job.status != Job.Status.SUCCEEDED or job.result_path is None:
        raise EditError(f"The job has not finished yet (status: {job.status}); edit its contours once it has.")
    if job.is_audit:
        raise EditError("A contour audit's delineation is the reference of the audit and is not edited.")


def original(job: Job) -> Revision:
    """Revision 0, the model's output (created on first use: it is the job's own files)."""
    measures = {
        s["name"]: {"edited": False, "dice": 1.0, "added_path_length_mm": 0.0, "volume_cm3": s.get("volume_cm3")}
        for s in job.structures
    }
    revision, _ = Revision.objects.get_or_create(job=job, number=0, defaults={"measures": measures})
    return revision


def latest(job: Job) -> Revision:
    """The newest revision of ``job`` (revision 0 when none was saved)."""
    return job.revisions.order_by("-number").first() or original(job)


def labels_of(job: Job, revision: Revision) -> np.ndarray:
    """The revision's label map, uint8 (X, Y, Z) canonical RAS, read-only (memory-mapped)."""
    if revision.number == 0:
        return viewer.viewer_volume(job.result_path)[2]
    return np.load(job.result_path / revision.folder / "labels.npy", mmap_mode="r")


def _label_of(job: Job, name: object) -> int:
    structures = job.delineated_structures
    for s in structures:
        if s.name == name:
            return s.label
    known = ", ".join(s.name for s in structures)
    raise EditError(f"This job has no structure named {name!r}; its structures are: {known}.")


def _spacing(job: Job) -> tuple[float, float, float]:
    meta = viewer.viewer_volume(job.result_path)[0]
    return tuple(float(s) for s in meta["spacing_mm"])


def _apply(job: Job, labels: np.ndarray, body: dict) -> dict:
    """Apply the edit ``body`` to ``labels`` (X, Y, Z, a writable copy); return what was done."""
    mode = body.get("mode")
    if mode not in MODES:
        raise EditError(f"The mode must be one of {', '.join(MODES)}, not {mode!r}.")
    if mode == "restore":
        number = body.get("revision")
        source = job.revisions.filter(number=number).first() if isinstance(number, int) else None
        if source is None:
            raise EditError(f"This job has no revision {number!r} to go back to.")
        labels[...] = labels_of(job, source)
        return {"mode": mode, "revision": number}
    label = _label_of(job, body.get("structure"))
    if mode == "direct":
        direct = viewer.viewer_volume(job.result_path)[3]
        if direct is None:
            raise EditError("This job has no direct segmentation of the daily scan to take the structure from.")
        labels[labels == label] = 0
        labels[direct == label] = label
        return {"mode": mode, "structure": body["structure"]}
    plane = body.get("plane")
    edit = {"mode": mode, "structure": body["structure"], "plane": plane}
    if mode in ("delete", "interpolate"):
        first, last = body.get("first"), body.get("last")
        if mode == "delete":
            editing.delete_range(labels, plane, first, last, label)
        else:
            sx, sy, sz = _spacing(job)
            row_col = {"axial": (sy, sx), "coronal": (sz, sx), "sagittal": (sz, sy)}.get(plane, (1.0, 1.0))
            editing.interpolate(labels, plane, first, last, label, row_col)
        return {**edit, "first": first, "last": last}
    index = editing.check_slice(labels.shape, plane, body.get("index"))
    shape = viewer.oriented_slice(labels, plane, index).shape
    if ("polygon" in body) == ("mask" in body):
        raise EditError("Send the outline as 'polygon' or the pixels as 'mask' (one of the two).")
    if "polygon" in body:
        mask = editing.polygon_mask(body["polygon"], shape)
    else:
        mask = editing.rle_mask(body["mask"], shape)
    editing.paint(labels, plane, index, label, mask, mode)
    return {**edit, "index": index}


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array))

    write_atomically(path, write)


def _write_files(job: Job, number: int, labels: np.ndarray) -> dict[str, str]:
    """Write ``revisions/<number>/labels.npy`` and ``labels.nii.gz`` (on the grid and voxel order
    of the job's label map); return their SHA-256 by path relative to the job's folder."""
    folder = ResultFolder(job.result_path).revision(number).path
    os.makedirs(folder, mode=0o750, exist_ok=True)
    model = nib.load(ResultFolder(job.result_path) / ResultFolder.LABELS)
    # The viewer's label map is nibabel's closest canonical of the job's: undo that reordering.
    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), nib.io_orientation(model.affine))
    array = nib.orientations.apply_orientation(labels, back).astype(np.uint8)
    header = model.header.copy()
    header.set_data_dtype(np.uint8)
    image = nib.Nifti1Image(array, model.affine, header)
    _save_npy(folder / "labels.npy", labels)
    write_atomically(folder / ResultFolder.LABELS, lambda tmp: nib.save(image, tmp))
    return outputs.output_checksums(folder, prefix=f"{ResultFolder.REVISIONS}/{number}/")


def apply_edit(job: Job, user, body: object) -> Revision:
    """Apply the edit ``body`` (see module doc) to the job's latest revision and save the result
    as a new revision by ``user``.

    Raises:
        EditError: the job cannot be edited, the body is not a valid edit, or it changes nothing.
    """
    check_editable(job)
    if not isinstance(body, dict):
        raise EditError("Send the edit as a JSON object (see the API documentation).")
    with transaction.atomic():
        job = Job.objects.select_for_update().select_related("scan").get(pk=job.pk)  # one edit at a time
        parent = latest(job)
        labels = np.array(labels_of(job, parent))
        edit = _apply(job, labels, body)
        before = labels_of(job, parent)
        differs = before != labels
        touched = set(np.unique(before[differs]).tolist()) | set(np.unique(labels[differs]).tolist())
        redo = [s for s in job.delineated_structures if s.label in touched]
        changed = [s.name for s in redo]
        if not changed:
            raise EditError("This edit changes no contour, so no revision was saved.")
        number = parent.number + 1
        checksums = _write_files(job, number, labels)
        # Measured again for the structures this edit changed only: each costs passes over the volume.
        measures = {
            **parent.measures,
            **editing.measures(labels_of(job, original(job)), labels, redo, _spacing(job)),
        }
        return Revision.objects.create(
            job=job,
            number=number,
            author=user,
            author_name=user.get_username(),
            parent=parent,
            changed=changed,
            edit=edit,
            measures=measures,
            checksums=checksums,
        )


def approve(job: Job, user, comment: str = "") -> Revision:
    """Approve the job's latest revision as ``user`` (the reviewer), now.

    Raises:
        EditError: the job has no contours to approve.
    """
    check_editable(job)
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job.pk)
        revision = latest(job)
        revision.approved_by, revision.reviewer_name = user, reviewer_name(user)
        revision.approved, revision.approval_comment = timezone.now(), comment
        # Its RTSTRUCT said UNAPPROVED (or named another approval): built again on download.
        revision.checksums = {k: v for k, v in revision.checksums.items() if not k.endswith(_RTSTRUCT_FILES)}
        revision.save(update_fields=["approved_by", "reviewer_name", "approved", "approval_comment", "checksums"])
        return revision


def reviewer_name(user) -> str:
    """The user as a DICOM Person Name (Family^Given), or the user name when no name is set."""
    if user.last_name or user.first_name:
        return f"{user.last_name}^{user.first_name}"[:64]
    return user.get_username()[:64]


def export_name(job: Job, revision: Revision, filename: str) -> tuple[str, dict[str, str]]:
    """Where the export ``filename`` ("rtstruct.dcm", "seg.dcm" or "structures.zip") of
    ``revision`` is, relative to the job's folder, and the checksums to verify it with
    (it is written when its name is among them). Revision 0 is the job's own file (for
    the RTSTRUCT: until it is approved)."""
    if revision.number == 0 and (filename != ResultFolder.RTSTRUCT or not revision.is_approved):
        return filename, job.checksums
    return f"{ResultFolder.REVISIONS}/{revision.number}/{filename}", revision.checksums


def export_of(job: Job, revision: Revision, filename: str) -> tuple[str, dict[str, str]]:
    """``export_name``, after writing the export if it was not yet: the structures' zip
    here; the RTSTRUCT (MANUAL for the structures edited since the model's output,
    APPROVED with the reviewer once approved, Structure Set Label ``Delineo r<N>``) or the
    SEG only in the worker (``exports``), as they need the engine.

    Raises:
        engine_client.DelineationError: it cannot be written (message for the physician).
    """
    name, checksums = export_name(job, revision, filename)
    if name in checksums or name == filename:
        return name, checksums
    job_folder = ResultFolder(job.result_path)
    out = job_folder.revision(revision.number)
    with transaction.atomic():
        revision = Revision.objects.select_for_update().get(pk=revision.pk)  # one build at a time
        if name not in revision.checksums:
            request = RevisionExport(
                folder=job_folder,
                scan_input=job.scan.engine_input,
                series_key=job.series_key,
                labels_file=revision.labels_file,
                out=out,
                structures=tuple(job.delineated_structures),
                provenance=(job.model_name, job.weights_sha256),
                edited=frozenset(revision.edited_structures),
            )
            if filename == ResultFolder.STRUCTURES_ZIP:
                engine_client.write_revision_structures(request)
                outputs.structures_zip(out.path, out / ResultFolder.STRUCTURES_ZIP)
            elif filename == ResultFolder.SEG:
                engine_client.write_revision_seg(request)
            else:
                approval = None
                if revision.is_approved:
                    approval = (revision.reviewer_name, timezone.localtime(revision.approved))
                engine_client.write_revision_rtstruct(request, f"Delineo r{revision.number}", approval)
            written = _written(job.result_path, name)
            revision.checksums = {**revision.checksums, **written}
            revision.save(update_fields=["checksums"])
    return name, revision.checksums


def _written(result_dir: Path, name: str) -> dict[str, str]:
    """The checksums of export ``name`` and, for an RTSTRUCT, of its round-trip check."""
    names = [name]
    if name.endswith(ResultFolder.RTSTRUCT):
        names.append(name.removesuffix(ResultFolder.RTSTRUCT) + ResultFolder.RTSTRUCT_CHECK)
    return outputs.checksums_of(result_dir, tuple(names))


def find(job: Job, number: object) -> Revision:
    """The revision ``number`` of ``job`` (a string from a query, or None: the latest).

    Raises:
        EditError: not a whole number, or no such revision.
    """
    if number in (None, ""):
        return latest(job)
    try:
        wanted = int(str(number))
    except ValueError:
        raise EditError("revision must be a whole number (0 is the model's output).") from None
    revision = original(job) if wanted == 0 else job.revisions.filter(number=wanted).first()
    if revision is None:
        raise EditError(f"This job has no revision {wanted}.")
    return revision
