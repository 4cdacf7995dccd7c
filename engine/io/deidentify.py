"""De-identify DICOM files: PS3.15 Annex E, Basic Application Level Confidentiality Profile.

What is done to each attribute comes from Table E.1-1 ("Application Level
Confidentiality Profile Attributes") of DICOM PS3.15 2024b, as tabulated by the
``dicom-anonymizer`` package (KitwareMedical; module
``dicomanonymizer.dicom_anonymization_databases.dicomfields_2024b``). This module
applies the table's Basic Profile column (E.2) itself, because that package applies
its actions to top-level attributes only, with one UID mapping per process:

* every attribute, at any depth of Sequence nesting (a kept Sequence is cleaned
  item by item, Table E.1-1 action K), gets its action: X removes it, Z empties it, D
  replaces it with a dummy value of its VR, U replaces a UID. Where the table allows a
  choice that depends on the attribute's Type in the IOD (X/Z, X/D, Z/D, X/Z/D) the
  value is still removed, but the attribute is kept (Z or D) so that the object stays
  readable; X/Z/U* Sequences are kept with their UIDs replaced;
* every UID that the standard does not define (not a SOP Class, Transfer Syntax, ...
  UID of PS3.6 Annex A) is replaced, also where the table does not list the attribute,
  through one mapping per :class:`Deidentifier`: all files of one upload get the same
  new Study, Series, SOP Instance and Frame of Reference UIDs, so an RTSTRUCT's
  references (Referenced Frame of Reference, RT Referenced Study / Series, Contour
  Image Sequence's Referenced SOP Instance UID) still name the de-identified images;
* private attributes are removed (the Retain Safe Private Option is not applied);
* Patient ID (Z/D) becomes one pseudonym per :class:`Deidentifier`
  (``DEID-`` and 8 random hexadecimal digits), Patient's Name is emptied; dates and
  times are emptied or replaced (Retain Longitudinal Temporal Information is not
  applied, so Longitudinal Temporal Information Modified is set to REMOVED);
* Patient Identity Removed (0012,0062) is set to YES, De-identification Method
  (0012,0063) and De-identification Method Code Sequence (0012,0064) name the
  profile (CID 7050: 113100 "Basic Application Confidentiality Profile", DCM).

ROI Name (3006,0026) is Z in the Basic Profile: it becomes ``ROI <ROI Number>``. When
``keep_roi_names`` is given, ROI names found in it (ignoring case, spaces and
underscores) are kept: the Clean Descriptors Option (E.3.5, code 113105) restricted to
ROI Name, whose cleaning is "keep only names of a known structure vocabulary"; every
other descriptor gets its Basic Profile action, which removes it. The option is named
(in the object's code sequence and in the result) only for an object where a name was
kept.

Not done (see docs/security.md): text burned into the pixel data (Clean Pixel Data
Option, E.3.1; images declaring Burned In Annotation YES are counted in the notes),
faces in the pixel data (E.3.2), free text in attributes the table does not list.
Pixel data and geometry (positions, orientation, spacing) are never changed.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import pydicom
from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    UID_dictionary,
    generate_uid,
)

from engine.errors import InputError
from engine.io.dicom_files import claims_dicom, iter_sources, why_unreadable

TABLE_EDITION = "2024b"  # DICOM PS3.15 edition of Table E.1-1
PROFILE_NAME = "DICOM PS3.15 Annex E Basic Profile"
# De-identification Method (0012,0063) is LO: at most 64 characters.
METHOD = "DICOM PS3.15 Annex E Basic Application Confidentiality Profile"
BASIC_PROFILE = ("113100", "Basic Application Confidentiality Profile")
CLEAN_DESCRIPTORS = ("113105", "Clean Descriptors Option")

# Table E.1-1 action codes, by the dicom-anonymizer list that holds each tag.
_ACTION_LISTS = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}
# A choice that depends on the attribute's Type in the IOD: remove the value, keep the
# attribute (an object whose Type 1 or 2 attribute is missing may not be readable).
_RESOLVED = {"Z/D": "D", "X/Z": "Z", "X/D": "D", "X/Z/D": "D"}
_ROI_NAME = Tag(0x3006, 0x0026)
_PATIENT_ID = Tag(0x0010, 0x0020)
# Dummy values for action D, by VR (PS3.5 6.2): of the VR's form, meaning nothing.
_DUMMY = {
    "PN": "ANONYMOUS",
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "AS": "000Y",
    "DS": "0",
    "IS": "0",
    "UR": "",
}
_NUMERIC_VRS = {"FD", "FL", "SS", "US", "SL", "UL", "SV", "UV", "AT"}
_BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}


class DeidentificationError(InputError):
    """A file that could not be de-identified; the message names it and says why."""


@lru_cache(maxsize=1)
def _table() -> tuple[dict[BaseTag, str], tuple[tuple[int, int, int, int, str], ...]]:
    """Table E.1-1 Basic Profile actions: by tag, and by masked repeating group
    ((group, element, group mask, element mask, action), e.g. Overlay Data 60xx,3000)."""
    lists = dicom_anonymization_database_selector(f"dicomfields_{TABLE_EDITION}")
    exact: dict[BaseTag, str] = {}
    masked = []
    for name, action in _ACTION_LISTS.items():
        for entry in lists[name]:
            if len(entry) == 2:
                exact[Tag(*entry)] = action
            else:
                masked.append((*entry, action))
    return exact, tuple(masked)


def basic_profile_action(tag: BaseTag) -> str | None:
    """The Basic Profile action of Table E.1-1 for ``tag`` ("X", "Z", "D", "U", "Z/D",
    "X/Z", "X/D", "X/Z/D", "X/Z/U*"), or None when the table does not list it (kept)."""
    exact, masked = _table()
    if tag in exact:
        return exact[tag]
    for group, element, group_mask, element_mask, action in masked:
        if tag.group & group_mask == group & group_mask and (tag.element & element_mask == element & element_mask):
            return action
    return None


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


@dataclass
class DeidentifiedUpload:
    """What :func:`deidentify_upload` wrote: ``files`` (paths in ``out_dir``), how many
    input files were ``dropped`` (not DICOM, DICOMDIR, unreadable: they may hold
    identifying data too), the number of UIDs replaced, the profile and option codes
    (code value, code meaning; DCM), the method text and ``notes`` for the physician."""

    files: list[Path]
    dropped: int
    uids_replaced: int
    codes: list[tuple[str, str]]
    method: str
    notes: list[str] = field(default_factory=list)

    @property
    def profile(self) -> str:
        """The profile for people, with the option when one was applied."""
        if CLEAN_DESCRIPTORS in self.codes:
            return f"{PROFILE_NAME}, Clean Descriptors Option for ROI names"
        return PROFILE_NAME


class Deidentifier:
    """Applies the Basic Profile to the datasets of one upload (see the module docstring).

    Use one instance for all files of an upload: it holds the UID mapping (original
    UID -> new UID, from :func:`pydicom.uid.generate_uid`) and the Patient ID pseudonym,
    so that references between the files stay consistent. The mapping lives in memory
    only and is never written.

    Args:
        keep_roi_names: structure names to keep as ROI Name (Clean Descriptors Option
            for ROI Name); empty: every ROI Name is replaced (Basic Profile only).
    """

    def __init__(self, keep_roi_names: Iterable[str] = ()) -> None:
        self._uids: dict[str, str] = {}
        self._keep = {_key(n) for n in keep_roi_names if _key(n)}
        self._kept_in_dataset = 0
        self.roi_names_kept = 0
        self.patient_id = f"DEID-{secrets.token_hex(4).upper()}"

    @property
    def uids_replaced(self) -> int:
        return len(self._uids)

    @property
    def codes(self) -> list[tuple[str, str]]:
        """The profile and option codes (code value, code meaning; DCM) applied to the
        datasets so far: the Clean Descriptors Option once an ROI name was kept."""
        return _codes(self.roi_names_kept > 0)

    def new_uid(self, uid: str) -> str:
        """The replacement of ``uid`` (the same for every file of this upload)."""
        uid = str(uid).strip("\0 ")
        if uid in UID_dictionary:  # defined by the standard (a SOP Class, ...): kept
            return uid
        if uid not in self._uids:
            self._uids[uid] = generate_uid()
        return self._uids[uid]

    def apply(self, ds: Dataset) -> None:
        """De-identify ``ds`` in place (file meta included); pixel data is not touched.

        Raises:
            DeidentificationError: an attribute whose value cannot be replaced.
        """
        self._kept_in_dataset = 0
        ds.remove_private_tags()  # recursive (Dataset.walk)
        self._clean(ds)
        self.roi_names_kept += self._kept_in_dataset
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = METHOD
        ds.DeidentificationMethodCodeSequence = Sequence([_code(v, m) for v, m in _codes(self._kept_in_dataset > 0)])
        ds.LongitudinalTemporalInformationModified = "REMOVED"
        self._file_meta(ds)

    def _clean(self, ds: Dataset) -> None:
        for elem in list(ds):
            action = basic_profile_action(elem.tag)
            if action is None and elem.VR == "UI" and _is_instance_uid(elem):
                action = "U"
            if action == "X/Z/U*":
                action = "K" if elem.VR == "SQ" else "U" if elem.VR == "UI" else "Z"
            if action is not None:
                action = _RESOLVED.get(action, action)
            if elem.tag == _ROI_NAME:
                self._roi_name(ds, elem)
            elif action == "X":
                del ds[elem.tag]
            elif action == "Z":
                _empty(elem)
            elif action == "D":
                self._dummy(elem)
            elif action == "U":
                self._replace_uids(elem)
            elif elem.VR == "SQ":  # kept: clean its items (K, "cleaned for Sequences")
                for item in elem.value:
                    self._clean(item)

    def _roi_name(self, item: Dataset, elem: DataElement) -> None:
        if self._keep and _key(str(elem.value or "")) in self._keep:
            self._kept_in_dataset += 1
            return
        elem.value = f"ROI {item.get('ROINumber', '')}".strip()

    def _dummy(self, elem: DataElement) -> None:
        if elem.tag == _PATIENT_ID:
            elem.value = self.patient_id
        elif elem.VR == "UI":
            self._replace_uids(elem)
        elif elem.VR == "SQ":
            elem.value = Sequence()  # no dummy item can mean anything: no items
        elif elem.VR in _NUMERIC_VRS:
            elem.value = 0
        elif elem.VR in _BINARY_VRS:
            elem.value = b"\0\0"
        elif elem.VR in _DUMMY:
            elem.value = _DUMMY[elem.VR]
        elif elem.VR in {"AE", "CS", "LO", "LT", "SH", "ST", "UC", "UT"}:
            elem.value = "ANONYMIZED"
        else:
            raise DeidentificationError(f"{elem.keyword or elem.tag} has VR {elem.VR}, which has no dummy value")

    def _replace_uids(self, elem: DataElement) -> None:
        if elem.VM == 0:
            return
        if elem.VM > 1:
            elem.value = [self.new_uid(v) for v in elem.value]
        else:
            elem.value = self.new_uid(elem.value)

    def _file_meta(self, ds: Dataset) -> None:
        """A new File Meta Information (PS3.10 7.1): only the SOP Class, the new SOP
        Instance UID and the transfer syntax; no source AE title, no private header."""
        old = getattr(ds, "file_meta", None) or FileMetaDataset()
        syntax = old.get("TransferSyntaxUID")
        if syntax is None:
            syntax = ImplicitVRLittleEndian if ds.original_encoding[0] in (True, None) else ExplicitVRLittleEndian
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = syntax
        ds.file_meta = meta


def _codes(roi_names_kept: bool) -> list[tuple[str, str]]:
    return [BASIC_PROFILE, CLEAN_DESCRIPTORS] if roi_names_kept else [BASIC_PROFILE]


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = meaning
    return item


def _is_instance_uid(elem: DataElement) -> bool:
    """A UID that some system made (not one the standard defines, like a SOP Class)."""
    values = elem.value if elem.VM > 1 else [elem.value]
    return any(v and str(v).strip("\0 ") not in UID_dictionary for v in values)


def _empty(elem: DataElement) -> None:
    """Z: a zero-length value."""
    if elem.VR == "SQ":
        elem.value = Sequence()
    elif elem.VR in _NUMERIC_VRS or elem.VR in _BINARY_VRS:
        elem.value = None
    else:
        elem.value = ""


def deidentify_upload(
    source: str | Path, out_dir: str | Path, keep_roi_names: Iterable[str] = ()
) -> DeidentifiedUpload:
    """De-identify every DICOM file of an upload into ``out_dir``.

    ``source`` is a folder (searched recursively), a zip or one file, read one file at
    a time. Each DICOM object is written to ``out_dir/<Modality>_<n>.dcm`` (n from
    00001, in the order read); the original names are not kept, since they may name
    the patient. Files that are not DICOM, DICOMDIR (an index holding names and IDs)
    and unreadable files are not copied: they are counted in ``dropped``.

    Raises:
        DeidentificationError: a DICOM file could not be de-identified (nothing of it
            is written; the caller discards ``out_dir``).
        FileExistsError: ``out_dir`` exists already.
        engine.io.dicom_files.DicomFilesError: an unsafe zip entry.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=False)
    deidentifier = Deidentifier(keep_roi_names)
    written: list[Path] = []
    dropped = burned_in = 0
    for name, stream in iter_sources(Path(source)):
        if Path(name).name.upper() == "DICOMDIR":
            dropped += 1
            continue
        try:
            ds = pydicom.dcmread(stream)
        # pydicom raises many types (struct.error, ...) on damage
        except Exception as exc:  # noqa: BLE001
            # A truncated slice: refused, as the pre-flight refuses it.
            if claims_dicom(name, stream):
                raise DeidentificationError(
                    f"{name}: a damaged DICOM file, not read: {why_unreadable(exc)}; nothing was stored"
                ) from None
            dropped += 1
            continue
        if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
            dropped += 1
            continue
        burned_in += str(ds.get("BurnedInAnnotation", "")).upper() == "YES"
        try:
            deidentifier.apply(ds)
            modality = re.sub(r"[^A-Z0-9]", "", str(ds.get("Modality", "")).upper())
            target = out_dir / f"{modality or 'OT'}_{len(written) + 1:05d}.dcm"
            ds.save_as(target, enforce_file_format=True)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise DeidentificationError(f"{name}: could not be de-identified ({type(exc).__name__}: {exc})") from None
        written.append(target)
    notes = []
    if burned_in:
        notes.append(
            f"{burned_in} image(s) declare text burned into the pixels (Burned In "
            "Annotation YES); the profile does not remove it."
        )
    return DeidentifiedUpload(
        files=written,
        dropped=dropped,
        uids_replaced=deidentifier.uids_replaced,
        codes=deidentifier.codes,
        method=METHOD,
        notes=notes,
    )
