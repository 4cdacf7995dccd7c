"""pydicom's messages and warnings reach the logs without the DICOM values and file paths
they quote: in the web process and in the Celery worker, as each configures its logging,
reading an upload and writing the RTSTRUCT of a CT whose birth date is malformed; and for
every such message of pydicom's, written by pydicom itself."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom import charset, config, uid, valuerep
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate

from tests import factories
from webapp.delineation.redact import FILE_WITHHELD, VALUE_WITHHELD

REPO = Path(__file__).resolve().parent.parent
PATIENT_NAME, BIRTH_DATE = "Doe^Jane", "1961-04-12"  # DA is YYYYMMDD: this one is malformed
SECRETS = (BIRTH_DATE, "Doe", "Jane")

# As the processes start: the web server and manage.py by django.setup(); the Celery worker
# by django.setup() (its Django fix-up, at worker_init) and then its own logging set-up.
SCRIPT = """
import sys
from pathlib import Path

import django

django.setup()
if sys.argv[1] == "worker":
    from webapp.celery import app

    app.log.setup(loglevel="DEBUG", redirect_stdouts=True)  # what `celery worker` does next
import numpy as np

from engine.io.dicom_files import read_upload
from engine.io.dicom_series import read_series
from engine.io.rtstruct import build_rtstruct
from engine.structure import Structure
from engine.volume import LabelMap

upload = Path(sys.argv[2])
assert len(read_upload(upload).damaged) == 1  # the upload's check reads every file
series = read_series(upload / "ct")
labels = np.zeros(series.volume.array.shape, np.uint8)
labels[4:12, 4:12, 2:6] = 1
structures = [Structure(1, "Brainstem", (255, 0, 0), "ORGAN")]
# The RTSTRUCT copies the patient's attributes: pydicom validates the birth date.
build_rtstruct(LabelMap(labels, series.volume.affine), series, structures, "hn-oar", "0" * 64)
print("done")
"""


def _file_meta(ds: Dataset, transfer_syntax: str = uid.ExplicitVRLittleEndian) -> Dataset:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = uid.CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    return ds


def _cut_short(path: Path) -> None:
    """A DICOM file whose encapsulated pixel data ends before its sequence delimiter, which
    pydicom reads with a warning naming the file."""
    ds = _file_meta(Dataset(), uid.RLELossless)
    ds.SOPInstanceUID, ds.Modality = ds.file_meta.MediaStorageSOPInstanceUID, "CT"
    ds.PixelData = encapsulate([bytes(64)])
    ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    path.write_bytes(path.read_bytes()[:-8])  # without the delimiter item


@pytest.fixture
def upload(tmp_path) -> Path:
    """A folder upload named after the patient: a CT series whose Patient's Birth Date is
    malformed, and a file cut short."""
    folder = tmp_path / PATIENT_NAME
    for path in factories.dicom_series(folder / "ct"):
        ds = pydicom.dcmread(path)
        ds.PatientName = PATIENT_NAME
        ds["PatientBirthDate"] = DataElement(0x00100030, "DA", BIRTH_DATE, validation_mode=config.IGNORE)
        ds.save_as(path)
    _cut_short(folder / "damaged" / "IM9999.dcm")
    return folder


@pytest.mark.parametrize("process", ["web", "worker"])
def test_a_malformed_birth_date_and_the_path_are_not_logged(upload, tmp_path, process):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "LOG_LEVEL"))}
    env.update(
        DJANGO_SETTINGS_MODULE="webapp.settings",
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        CELERY_BROKER_URL="memory://",
        MEDIA_ROOT=str(tmp_path / "media"),
        LOG_LEVEL="DEBUG",
    )
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, process, str(upload)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "done" in output, output  # the worker logs what it prints
    # pydicom's record, and its warning as the logging of each process routes it:
    assert f"WARNING pydicom: Invalid value for VR DA: {VALUE_WITHHELD}." in output
    assert f"WARNING py.warnings: {pydicom.__path__[0]}" in output
    assert f"UserWarning: Invalid value for VR DA: {VALUE_WITHHELD}." in output
    assert f"End of file reached before delimiter (FFFE,E0DD) found in file {FILE_WITHHELD}" in output
    for secret in SECRETS:
        assert secret not in output, output


def _written_and_read(ds: Dataset) -> Dataset:
    """``ds`` as pydicom reads it back from its file, every element decoded."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    read = pydicom.dcmread(io.BytesIO(buffer.getvalue()))
    for _ in read:  # decodes each element, as the engine's reader does
        pass
    return read


def _uid_read_from_a_file() -> None:
    ds = _file_meta(Dataset())
    ds["StudyInstanceUID"] = DataElement("StudyInstanceUID", "UI", "1.2.Doe.1961", validation_mode=config.IGNORE)
    _written_and_read(ds)


def _private_creator_with_two_values() -> None:
    ds = _file_meta(Dataset(), uid.ImplicitVRLittleEndian)  # implicit VR: the reader looks the VR up
    ds.add_new(0x00090010, "LO", [PATIENT_NAME, "X"])
    ds.add_new(0x00091001, "LO", "a")
    _written_and_read(ds)


def _file_cut_short_read_by_its_path(tmp_path: Path) -> None:
    path = tmp_path / PATIENT_NAME / "IM9999.dcm"
    _cut_short(path)
    pydicom.dcmread(str(path))


# pydicom doing what makes it log and warn; what must still be said; what must not be.
CASES = {
    "birth date (DA) assigned": (
        lambda tmp_path: setattr(Dataset(), "PatientBirthDate", BIRTH_DATE),
        f"Invalid value for VR DA: {VALUE_WITHHELD}.",
        BIRTH_DATE,
    ),
    "a value with a quote in it": (
        lambda tmp_path: setattr(Dataset(), "PatientBirthDate", "Doe's 1961"),
        f"Invalid value for VR DA: {VALUE_WITHHELD}.",
        "Doe's",
    ),
    "UID read from a file": (
        lambda tmp_path: _uid_read_from_a_file(),
        f"Invalid value for VR UI: {VALUE_WITHHELD}.",
        "Doe",
    ),
    "IS not an integer": (
        lambda tmp_path: valuerep.IS("1961.5", validation_mode=config.WARN),
        f"Value {VALUE_WITHHELD} is not valid for elements with a VR of IS",
        "1961",
    ),
    "unknown character set": (
        lambda tmp_path: charset.convert_encodings([PATIENT_NAME]),
        f"Unknown encoding {VALUE_WITHHELD} - using default encoding instead",
        "Doe",
    ),
    "misspelt character set": (
        lambda tmp_path: charset.convert_encodings(["ISO IR 100"]),
        f"Incorrect value for Specific Character Set {VALUE_WITHHELD} - assuming 'ISO_IR 100'",
        "ISO IR",
    ),
    "character set without code extensions": (
        lambda tmp_path: charset.convert_encodings(["ISO_IR 192", PATIENT_NAME]),
        f"Value {VALUE_WITHHELD} for Specific Character Set does not allow code extensions, ignoring: {VALUE_WITHHELD}",
        "Doe",
    ),
    "character set not a code extension": (
        lambda tmp_path: charset.convert_encodings(["ISO 2022 IR 100", "ISO_IR 192"]),
        f"Value {VALUE_WITHHELD} cannot be used as code extension, ignoring it",
        "ISO_IR 192",
    ),
    "private creator": (
        lambda tmp_path: _private_creator_with_two_values(),
        f"(0009,0010) {VALUE_WITHHELD} is not a valid private creator",
        "Doe",
    ),
    "file cut short, read by its path": (
        _file_cut_short_read_by_its_path,
        f"End of file reached before delimiter (FFFE,E0DD) found in file {FILE_WITHHELD}",
        "Doe",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_each_message_of_pydicom_that_quotes_a_value(case, tmp_path, caplog, recwarn):
    """The pydicom logger's records (filtered as configured) and pydicom's warnings as the
    ``py.warnings`` logger gets them (``logging.captureWarnings``; pytest captures them first)."""
    make_pydicom_warn, said, secret = CASES[case]
    caplog.set_level(logging.DEBUG, logger="pydicom")
    make_pydicom_warn(tmp_path)
    logged = [r.getMessage() for r in caplog.records if r.name == "pydicom"]
    py_warnings = logging.getLogger("py.warnings")
    for w in recwarn:
        text = warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line)
        record = py_warnings.makeRecord("py.warnings", logging.WARNING, __file__, 0, "%s", (text,), None)
        assert py_warnings.filter(record)
        logged.append(record.getMessage())
    assert sum(said in text for text in logged) >= 2, logged  # the pydicom record and its warning
    for text in logged:
        assert secret not in text, logged
    if case.startswith("file cut short"):
        assert f"Reading file {FILE_WITHHELD}" in logged  # at DEBUG
