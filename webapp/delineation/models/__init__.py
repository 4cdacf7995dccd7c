"""Patients, their scans (uploaded images, stored unchanged), the jobs run on them, and the
teams scans are shared with.

Who may see what is decided in one place, ``Scan.objects.visible_to(user)`` (and
``Job.objects.visible_to``, which follows it): a scan's owner, and the members of the teams
it is shared with. Everyone else finds nothing (404). Only the owner changes a scan: queues
jobs on it (propagations included), sets its patient, shares, unshares and deletes it
(``Scan.is_owner``). A patient is never shared: only its owner finds it.

On disk, everything about one scan lives under ``MEDIA_ROOT/scans/<scan uuid>/``:
``original/`` holds the uploaded files byte for byte, ``jobs/<job uuid>/`` the outputs
of each job. Deleting a scan deletes that directory.
"""

from webapp.delineation.dicom.models import DicomPeer, DicomReceipt, ResultSend
from webapp.delineation.models.access import AccessEvent
from webapp.delineation.models.jobs import Export, Job, JobQuerySet, Revision
from webapp.delineation.models.scans import Patient, Scan, ScanQuerySet, Team, scan_dir

__all__ = [
    "AccessEvent",
    "DicomPeer",
    "DicomReceipt",
    "Export",
    "Job",
    "JobQuerySet",
    "Patient",
    "ResultSend",
    "Revision",
    "Scan",
    "ScanQuerySet",
    "Team",
    "scan_dir",
]
