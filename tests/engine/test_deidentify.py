"""De-identification (PS3.15 Annex E Basic Profile) of a small CT series with its RTSTRUCT."""

from __future__ import annotations

import zipfile

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from engine.io.deidentify import (
    BASIC_PROFILE,
    CLEAN_DESCRIPTORS,
    Deidentifier,
    basic_profile_action,
    deidentify_upload,
)
from engine.io.dicom_series import read_series
from engine.io.rtstruct import build_rtstruct, write_rtstruct
from engine.io.rtstruct_import import import_rtstruct
from engine.models.registry import Structure
from engine.volume import LabelMap
from tests.engine.phantom import write_phantom_series

NAME, PATIENT_ID = "Doe^Jane^Q", "MRN-8675309"
STRUCTURES = [
    Structure(1, "Parotid_L", (0, 255, 0), "ORGAN"),
    Structure(2, "Mrs Doe's lump", (255, 0, 0), "GTV"),
]
SHA = "0123456789abcdef" * 4
# What _identify writes; none of it may remain.
SECRETS = (
    *("Doe", "Jane", PATIENT_ID, "19610412", "OLD-42", "Example Hospital", "Tom"),
    *("Doctor", "ACC123", "Nurse", "Carl", "Planner", "20240102", "ACME"),
)


def _identify(path, with_private: bool = True) -> None:
    """Give a file the identifying attributes a hospital's files carry."""
    ds = pydicom.dcmread(path)
    ds.PatientName, ds.PatientID = NAME, PATIENT_ID
    ds.PatientBirthDate, ds.OtherPatientIDs = "19610412", "OLD-42"
    ds.InstitutionName, ds.OperatorsName = "St Example Hospital", "Tech^Tom"
    ds.ReferringPhysicianName, ds.AccessionNumber = "Who^Doctor", "ACC123"
    ds.StudyDescription, ds.SeriesDescription = "CT head Jane Doe", "Doe planning"
    ds.StudyDate, ds.SeriesDate, ds.ContentDate = "20240102", "20240102", "20240102"
    person = Dataset()
    person.PersonName = "Nested^Nurse"  # D at any depth
    ds.ContentCreatorName = "Creator^Carl"
    ds.RequestAttributesSequence = Sequence([person])
    if with_private:
        block = ds.private_block(0x0009, "ACME 1.0", create=True)
        block.add_new(0x01, "LO", f"{NAME} {PATIENT_ID}")
    ds.save_as(path)


@pytest.fixture
def upload(tmp_path):
    """A 20 x 16 x 5 CT series and an RTSTRUCT on it, both carrying the patient's identity."""
    folder = tmp_path / "Doe_Jane"
    paths, _ = write_phantom_series(folder / "CT", np.zeros((20, 16, 5), np.float32), spacing=(1.5, 2.0, 3.0))
    for path in paths:
        _identify(path)
    series = read_series(folder / "CT")
    labels = np.zeros(series.volume.array.shape, np.uint8)
    labels[4:12, 3:10, 1:4] = 1
    labels[13:18, 10:14, 2] = 2
    rtstruct = build_rtstruct(LabelMap(labels, series.volume.affine), series, STRUCTURES, "test-model", SHA)
    # A known structure name, spelt loosely.
    rtstruct.StructureSetROISequence[0].ROIName = "parotid l"
    for observation in rtstruct.RTROIObservationsSequence:
        observation.ROIInterpreter = "Planner^Pat"
    write_rtstruct(rtstruct, folder / "RS.dcm")
    _identify(folder / "RS.dcm")
    (folder / "notes.txt").write_text(f"{NAME} {PATIENT_ID}")
    return folder, series, labels


def _read_all(folder) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted(folder.iterdir())]


def _all_text(ds: pydicom.Dataset) -> str:
    """Every value of a dataset, nested ones included, as text (pixel data left out)."""
    values = []
    pixel_data = Tag(0x7FE0, 0x0010)
    ds.walk(lambda _, e: values.append(repr(e.value)) if e.tag != pixel_data else None)
    return " ".join(values)


def test_identifying_attributes_are_removed_or_replaced(upload, tmp_path):
    folder, _, _ = upload
    result = deidentify_upload(folder, tmp_path / "out")
    assert len(result.files) == 6 and result.dropped == 1  # notes.txt is not copied
    for ds in _read_all(tmp_path / "out"):
        text = _all_text(ds) + repr(ds.file_meta)
        for secret in SECRETS:
            assert secret not in text, (secret, ds.Modality)
        assert ds.PatientName == "" and ds.PatientID.startswith("DEID-")
        assert "PatientBirthDate" not in ds or ds.PatientBirthDate == ""
        assert not any(elem.tag.is_private for elem in ds.iterall())
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.LongitudinalTemporalInformationModified == "REMOVED"
        (code,) = ds.DeidentificationMethodCodeSequence
        assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == (
            "113100",
            "DCM",
            BASIC_PROFILE[1],
        )
        assert "Basic" in ds.DeidentificationMethod and len(ds.DeidentificationMethod) <= 64
    # One pseudonym for the whole upload, so a planning system keeps CT and RTSTRUCT together.
    assert len({ds.PatientID for ds in _read_all(tmp_path / "out")}) == 1
    assert result.profile == "DICOM PS3.15 Annex E Basic Profile" and result.codes == [BASIC_PROFILE]


def test_uids_are_remapped_consistently_and_the_rtstruct_references_the_new_ct(upload, tmp_path):
    folder, series, labels = upload
    old_uids = {ref.sop_instance_uid for ref in series.slices} | {
        series.study_instance_uid,
        series.series_instance_uid,
        series.frame_of_reference_uid,
    }
    deidentify_upload(folder, tmp_path / "out")
    out = _read_all(tmp_path / "out")
    ct = [ds for ds in out if ds.Modality == "CT"]
    (rs,) = [ds for ds in out if ds.Modality == "RTSTRUCT"]
    everything = " ".join(_all_text(ds) + repr(ds.file_meta) for ds in out)
    assert not any(uid in everything for uid in old_uids)
    assert len({ds.SeriesInstanceUID for ds in ct}) == 1 and len({ds.StudyInstanceUID for ds in out}) == 1
    assert len({ds.FrameOfReferenceUID for ds in ct}) == 1
    assert all(ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID for ds in out)
    new_ct = {ds.SOPInstanceUID for ds in ct}
    assert len(new_ct) == 5
    (frame,) = rs.ReferencedFrameOfReferenceSequence
    assert frame.FrameOfReferenceUID == ct[0].FrameOfReferenceUID
    (study,) = frame.RTReferencedStudySequence
    assert study.ReferencedSOPInstanceUID == ct[0].StudyInstanceUID
    (referenced_series,) = study.RTReferencedSeriesSequence
    assert referenced_series.SeriesInstanceUID == ct[0].SeriesInstanceUID
    assert {item.ReferencedSOPInstanceUID for item in referenced_series.ContourImageSequence} == new_ct
    contour_refs = {
        image.ReferencedSOPInstanceUID
        for roi in rs.ROIContourSequence
        for contour in roi.ContourSequence
        for image in contour.ContourImageSequence
    }
    assert contour_refs and contour_refs <= new_ct
    assert all(roi.ReferencedFrameOfReferenceUID == ct[0].FrameOfReferenceUID for roi in rs.StructureSetROISequence)
    # Read back with the engine: every contour is placed by its UID (no note about
    # matching by position), and gives the same mask as before.
    new_series = read_series(tmp_path / "out")
    rois = import_rtstruct(rs, new_series)
    # Basic Profile: ROI Name is Z (a dummy "ROI <number>").
    assert [roi.name for roi in rois] == ["ROI 1", "ROI 2"]
    for roi, label in zip(rois, (1, 2), strict=True):
        assert roi.notes == []
        np.testing.assert_array_equal(roi.mask, labels == label)


def test_pixel_data_and_geometry_are_unchanged(upload, tmp_path):
    folder, series, _ = upload
    deidentify_upload(folder, tmp_path / "out")
    new_series = read_series(tmp_path / "out")
    np.testing.assert_array_equal(new_series.volume.array, series.volume.array)
    np.testing.assert_array_equal(new_series.volume.affine, series.volume.affine)
    before = {tuple(ds.ImagePositionPatient): ds for ds in map(pydicom.dcmread, (folder / "CT").iterdir())}
    for ds in (d for d in _read_all(tmp_path / "out") if d.Modality == "CT"):
        original = before[tuple(ds.ImagePositionPatient)]
        assert ds.PixelData == original.PixelData
        for keyword in (
            "ImageOrientationPatient",
            "PixelSpacing",
            "SliceThickness",
            "Rows",
            "Columns",
            "RescaleSlope",
            "RescaleIntercept",
            "PixelRepresentation",
            "BitsStored",
        ):
            assert ds[keyword].value == original[keyword].value, keyword


def test_known_roi_names_are_kept_with_the_clean_descriptors_option(upload, tmp_path):
    folder, _, _ = upload
    result = deidentify_upload(folder, tmp_path / "out", keep_roi_names=["Parotid_L", "Brainstem"])
    (rs,) = [ds for ds in _read_all(tmp_path / "out") if ds.Modality == "RTSTRUCT"]
    # A structure name is kept; free text that could name the patient is not.
    assert [roi.ROIName for roi in rs.StructureSetROISequence] == ["parotid l", "ROI 2"]
    assert [c.CodeValue for c in rs.DeidentificationMethodCodeSequence] == [
        "113100",
        "113105",
    ]
    # The option is named only where a name was kept: not on the CT images.
    for ct in (ds for ds in _read_all(tmp_path / "out") if ds.Modality == "CT"):
        assert [c.CodeValue for c in ct.DeidentificationMethodCodeSequence] == ["113100"]
    assert result.codes == [BASIC_PROFILE, CLEAN_DESCRIPTORS] and "Clean Descriptors" in result.profile


def test_a_zip_gives_the_same_result_and_one_mapping_per_upload(upload, tmp_path):
    folder, _, _ = upload
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in folder.rglob("*"):
            if path.is_file():
                zf.write(path, path.relative_to(folder.parent).as_posix())
    first = deidentify_upload(archive, tmp_path / "a")
    second = deidentify_upload(folder, tmp_path / "b")
    assert len(first.files) == len(second.files) == 6
    # The original file names are not kept (they may name the patient).
    assert all(p.name.startswith(("CT_", "RTSTRUCT_")) for p in first.files)
    # Two uploads of the same files do not share UIDs or pseudonyms (nothing links them).
    a, b = _read_all(tmp_path / "a"), _read_all(tmp_path / "b")
    assert not {ds.SOPInstanceUID for ds in a} & {ds.SOPInstanceUID for ds in b}
    assert a[0].PatientID != b[0].PatientID


def test_table_actions_and_standard_uids():
    expected = {
        (0x0010, 0x0010): "Z",  # Patient's Name
        (0x0010, 0x0020): "Z/D",  # Patient ID
        (0x0008, 0x0018): "U",  # SOP Instance UID
        (0x0008, 0x1155): "U",  # Referenced SOP Instance UID
        (0x6002, 0x3000): "X",  # Overlay Data, a repeating group
        (0x0028, 0x0030): None,  # Pixel Spacing: kept
    }
    for tag, action in expected.items():
        assert basic_profile_action(Tag(*tag)) == action, tag
    deidentifier = Deidentifier()
    ct_storage = "1.2.840.10008.5.1.4.1.1.2"
    # A SOP Class UID is not patient data; an instance UID maps to one new UID.
    assert deidentifier.new_uid(ct_storage) == ct_storage
    new = deidentifier.new_uid("1.2.3.4")
    assert new == deidentifier.new_uid("1.2.3.4") != "1.2.3.4"


def test_an_upload_without_dicom_writes_nothing(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM")
    (tmp_path / "in" / "readme.txt").write_text("hello")
    result = deidentify_upload(tmp_path / "in", tmp_path / "out")
    assert result.files == [] and result.dropped == 2
