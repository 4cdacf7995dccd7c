"""A corpus of malformed uploads, generated in memory from a fixed seed (issue 6, "Trust").

``corpus()`` returns the same list of :class:`Malformed` inputs on every call: truncated
DICOM, wrong VRs, pixel data shorter than Rows x Columns, Rows = 0, absurd dimensions,
unsupported or damaged transfer syntaxes, NIfTI with NaNs, zero spacing, 1D/2D/4D/5D
shapes, non-invertible affines, gzip garbage, damaged zips, random bytes, and
RTSTRUCTs whose contours lie outside the image. Each entry is an upload exactly as a
browser would send it (one file, or the files of a folder) with its category and the
expected outcome:

* ``REFUSED``: the API answers 4xx at upload and keeps nothing;
* ``JOB_FAILS``: the upload is accepted (its headers are sound) and the delineation
  job fails in the worker with a message, before any network runs;
* ``AUDIT_FAILS``: the upload is accepted (a sound CT with its RTSTRUCT) and a contour
  audit job fails in the worker with a message, before any network runs.

``words``: the message must contain one of them (it names the problem). Images are
8 x 8 pixels x 3 slices, so the whole corpus is a few hundred kilobytes.
"""

from __future__ import annotations

import gzip
import io
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

SEED = 6  # issue 6
SIZE, SLICES = 8, 3
REFUSED, JOB_FAILS, AUDIT_FAILS = "refused", "job fails", "audit fails"


@dataclass(frozen=True)
class Malformed:
    """One malformed upload: ``filename`` + ``data`` (field ``file``) or ``files``
    (relative path -> bytes, fields ``files`` and ``paths``)."""

    id: str
    category: str
    outcome: str
    words: tuple[str, ...]
    filename: str = ""
    data: bytes = b""
    files: dict[str, bytes] = field(default_factory=dict)

    def write(self, directory: Path) -> Path:
        """The upload as the engine reads it: the file, or a folder of the files."""
        directory.mkdir(parents=True, exist_ok=True)
        if not self.files:
            path = directory / self.filename
            path.write_bytes(self.data)
            return path
        root = directory / "upload"
        for rel, data in self.files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        return root


# --- DICOM ------------------------------------------------------------------------------


def _ct_slices(seed: int = 0, slices: int = SLICES, size: int = SIZE) -> list[FileDataset]:
    """A valid axial CT series (2 mm pixels, 3 mm slices), one dataset per slice."""
    rng = np.random.default_rng(seed)
    study, series, frame = (generate_uid(entropy_srcs=[f"{seed}-{what}"]) for what in ("st", "se", "for"))
    result = []
    for k in range(slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[f"{seed}-sop-{k}"])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(f"IM{k:04d}.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientName, ds.PatientID = "CT", "Corpus^Test", "CORPUS"
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-7.0, -7.0, 3.0 * k]
        ds.PixelSpacing = [2.0, 2.0]
        ds.SliceThickness = 3.0
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = rng.integers(0, 2000, size=(size, size), dtype=np.int16).tobytes()
        result.append(ds)
    return result


def _encode(ds: Dataset, syntax: str | None = None) -> bytes:
    if syntax is not None:
        ds.file_meta.TransferSyntaxUID = syntax
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _declare_syntax(ds: FileDataset, syntax: str) -> bytes:
    """The dataset in explicit VR little endian under a file meta declaring ``syntax``
    (pydicom refuses to write syntaxes it does not know, or to skip the deflation)."""
    ds.file_meta.TransferSyntaxUID = syntax
    fp = DicomBytesIO()
    fp.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(fp, ds.file_meta, enforce_standard=True)
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def _series_bytes(
    mutate: Callable[[int, FileDataset], None] | None = None,
    which: Callable[[int], bool] = lambda k: True,
    syntax: str | None = None,
    seed: int = 0,
) -> dict[str, bytes]:
    """The series' files (CT/IM000k.dcm -> bytes), ``mutate`` applied to the slices ``which`` picks."""
    files = {}
    for k, ds in enumerate(_ct_slices(seed)):
        if mutate is not None and which(k):
            mutate(k, ds)
        files[f"CT/{ds.filename}"] = _encode(ds, syntax)
    return files


def _as_zip(id_: str, category: str, files: dict[str, bytes], outcome: str, words) -> Malformed:
    return Malformed(id_, category, outcome, tuple(words), filename="series.zip", data=_zip(files))


def _as_folder(id_: str, category: str, files: dict[str, bytes], outcome: str, words) -> Malformed:
    return Malformed(id_, category, outcome, tuple(words), files=files)


def _both(id_: str, category: str, files: dict[str, bytes], outcome: str, words) -> Iterator[Malformed]:
    yield _as_zip(f"{id_}/zip", category, files, outcome, words)
    yield _as_folder(f"{id_}/folder", category, files, outcome, words)


def _middle(k: int) -> bool:
    return k == SLICES // 2


def _all(k: int) -> bool:
    return True


TRUNCATED_WORDS = (
    "truncated",
    "ends early",
    "damaged",
    "missing slices",
    "no dicom",
    "not a dicom",
    "pixel data",
    "none of the",
)


def truncated_dicom() -> Iterator[Malformed]:
    """Files cut short: in the preamble, the file meta, the dataset and the pixel data."""
    whole = _series_bytes()
    length = len(next(iter(whole.values())))
    cuts = sorted(
        {0, 1, 64, 127, 128, 130, 132, 140, 160, 200, 300, 400, length // 2, length - 129, length - 64}
        | {length - 2, length - 1}
    )
    for cut in cuts:
        for scope, which in (("middle", _middle), ("all", _all)):
            files = {name: data[:cut] if which(int(name[-8:-4])) else data for name, data in whole.items()}
            yield from _both(f"truncated-dicom/{scope}-at-{cut}", "truncated DICOM", files, REFUSED, TRUNCATED_WORDS)


def _set(keyword: str, vr: str, value) -> Callable[[int, FileDataset], None]:
    def mutate(k: int, ds: FileDataset) -> None:
        tag = pydicom.datadict.tag_for_keyword(keyword)
        ds[tag] = DataElement(tag, vr, value)

    return mutate


# (keyword, wrong VR, value): each leaves the attribute unusable as its dictionary VR.
WRONG_VRS = [
    ("Rows", "LO", "eight"),
    ("Rows", "DS", "8.5"),
    ("Rows", "OB", b"\x08\x00\x00"),
    ("Rows", "SQ", []),
    ("Columns", "LO", "abc"),
    ("Columns", "FD", -8.0),
    ("PixelSpacing", "LO", "two\\two"),
    ("PixelSpacing", "OB", b"\xff\xfe\xfd\xfc"),
    ("PixelSpacing", "SQ", []),
    ("PixelSpacing", "DS", "2.0"),
    ("ImagePositionPatient", "LO", "x\\y\\z"),
    ("ImagePositionPatient", "DS", "1\\2"),
    ("ImagePositionPatient", "SQ", []),
    ("ImagePositionPatient", "OW", b"\x00\x01" * 3),
    ("ImageOrientationPatient", "LO", "a\\b\\c\\d\\e\\f"),
    ("ImageOrientationPatient", "DS", "1\\0\\0\\0\\1"),
    ("ImageOrientationPatient", "DS", "0\\0\\0\\0\\0\\0"),
    ("ImageOrientationPatient", "UL", [1, 0, 0, 0, 1, 0, 7]),
    ("RescaleSlope", "LO", "steep"),
    ("RescaleIntercept", "OB", b"\x01\x02\x03"),
    ("NumberOfFrames", "LO", "many"),
    ("BitsAllocated", "LO", "sixteen"),
    ("BitsAllocated", "US", 0),
    ("SamplesPerPixel", "LO", "one"),
    ("PixelRepresentation", "LO", "signed"),
]
WRONG_VR_WORDS = (
    "not a number",
    "not numeric",
    "numeric",
    "rows",
    "columns",
    "spacing",
    "position",
    "orientation",
    "rescale",
    "frames",
    "bits",
    "samples",
    "pixel",
    "cannot be decoded",
    "not a readable",
)


def wrong_vrs() -> Iterator[Malformed]:
    """Attributes written with another Value Representation, explicit and implicit VR."""
    for number, (keyword, vr, value) in enumerate(WRONG_VRS):
        for syntax, label in ((ExplicitVRLittleEndian, "explicit"), (ImplicitVRLittleEndian, "implicit")):
            files = _series_bytes(_set(keyword, vr, value), _all, syntax)
            yield _as_zip(f"wrong-vr/{number:02d}-{keyword}-{vr}-{label}", "wrong VR", files, REFUSED, WRONG_VR_WORDS)


def _pixel_bytes(size: Callable[[int], int]) -> Callable[[int, FileDataset], None]:
    def mutate(k: int, ds: FileDataset) -> None:
        ds.PixelData = ds.PixelData[: size(len(ds.PixelData))]

    return mutate


SHORT_WORDS = ("pixel data", "truncated", "rows x columns")


def short_pixel_data() -> Iterator[Malformed]:
    """Pixel Data shorter than Rows x Columns x Bits Allocated / 8."""
    sizes = {
        "empty": lambda n: 0,
        "two-bytes": lambda n: 2,
        "one-row": lambda n: 2 * SIZE,
        "half": lambda n: n // 2,
        "one-pixel-short": lambda n: n - 2,
        "seven-eighths": lambda n: n * 7 // 8,
    }
    for label, size in sizes.items():
        for scope, which in (("middle", _middle), ("all", _all)):
            for syntax, enc in ((ExplicitVRLittleEndian, "explicit"), (ImplicitVRLittleEndian, "implicit")):
                files = _series_bytes(_pixel_bytes(size), which, syntax)
                yield _as_zip(
                    f"short-pixels/{label}-{scope}-{enc}", "pixel data too short", files, REFUSED, SHORT_WORDS
                )
    # Rows x Columns larger than the pixels sent.
    for rows, columns in ((9, 8), (8, 16), (64, 64), (512, 512)):
        files = _series_bytes(lambda k, ds, r=rows, c=columns: setattr(ds, "Rows", r) or setattr(ds, "Columns", c))
        yield from _both(f"short-pixels/declared-{rows}x{columns}", "pixel data too short", files, REFUSED, SHORT_WORDS)


ZERO_WORDS = ("rows", "columns", "positive", "missing slices")


def rows_zero() -> Iterator[Malformed]:
    """Rows or Columns zero (or absent) on every slice or on the middle one."""
    variants = {
        "rows-0": lambda k, ds: setattr(ds, "Rows", 0),
        "columns-0": lambda k, ds: setattr(ds, "Columns", 0),
        "both-0": lambda k, ds: setattr(ds, "Rows", 0) or setattr(ds, "Columns", 0),
        "rows-absent": lambda k, ds: delattr(ds, "Rows"),
        "rows-empty": lambda k, ds: ds.__setitem__(0x00280010, DataElement(0x00280010, "US", None)),
        "rows-0-no-pixels": lambda k, ds: setattr(ds, "Rows", 0) or setattr(ds, "PixelData", b""),
    }
    for label, mutate in variants.items():
        for scope, which in (("middle", _middle), ("all", _all)):
            files = _series_bytes(mutate, which)
            yield from _both(f"rows-zero/{label}-{scope}", "Rows = 0", files, REFUSED, ZERO_WORDS)


ABSURD_WORDS = (
    "pixel data",
    "frames",
    "spacing",
    "size",
    "larger",
    "limit",
    "bits",
    "not invertible",
    "mm",
    "position",
    "cannot be decoded",
)


def _multiframe(frames: int) -> Callable[[int, FileDataset], None]:
    """An enhanced-style header declaring ``frames`` frames for one frame of pixels."""

    def mutate(k: int, ds: FileDataset) -> None:
        ds.NumberOfFrames = frames
        shared = Dataset()
        for sequence, item in (
            ("PlaneOrientationSequence", {"ImageOrientationPatient": [1, 0, 0, 0, 1, 0]}),
            ("PixelMeasuresSequence", {"PixelSpacing": [2.0, 2.0], "SliceThickness": 3.0}),
            ("PlanePositionSequence", {"ImagePositionPatient": [-7.0, -7.0, 3.0 * k]}),
        ):
            inner = Dataset()
            for key, value in item.items():
                setattr(inner, key, value)
            setattr(shared, sequence, [inner])
        ds.SharedFunctionalGroupsSequence = [shared]

    return mutate


def absurd_dimensions() -> Iterator[Malformed]:
    """Huge image sizes, frame counts, bit depths, spacings and positions."""
    big = {
        "rows-65535": lambda k, ds: setattr(ds, "Rows", 65535),
        "65535-square": lambda k, ds: setattr(ds, "Rows", 65535) or setattr(ds, "Columns", 65535),
        "columns-65535": lambda k, ds: setattr(ds, "Columns", 65535),
        "frames-2147483647": _multiframe(2_147_483_647),
        "frames-1000000": _multiframe(1_000_000),
        "frames-0": _multiframe(0),
        "frames-negative": lambda k, ds: ds.__setitem__(0x00280008, DataElement(0x00280008, "IS", "-5")),
        "bits-allocated-64": lambda k, ds: setattr(ds, "BitsAllocated", 64),
        "bits-allocated-1": lambda k, ds: setattr(ds, "BitsAllocated", 1),
        "bits-allocated-12": lambda k, ds: setattr(ds, "BitsAllocated", 12),
        "bits-allocated-48": lambda k, ds: setattr(ds, "BitsAllocated", 48),
        "pixel-spacing-1e-30": lambda k, ds: setattr(ds, "PixelSpacing", ["1e-30", "1e-30"]),
        "pixel-spacing-1e30": lambda k, ds: setattr(ds, "PixelSpacing", ["1e30", "1e30"]),
        "pixel-spacing-1e6": lambda k, ds: setattr(ds, "PixelSpacing", [1e6, 1e6]),
        "pixel-spacing-negative": lambda k, ds: setattr(ds, "PixelSpacing", [-2.0, 2.0]),
        "pixel-spacing-inf": lambda k, ds: setattr(ds, "PixelSpacing", ["inf", "2"]),
        "slice-step-1e6": lambda k, ds: setattr(ds, "ImagePositionPatient", [-7.0, -7.0, 1e6 * k]),
        "slice-step-1e-5": lambda k, ds: setattr(ds, "ImagePositionPatient", [-7.0, -7.0, 1e-5 * k]),
        "position-1e300": lambda k, ds: setattr(ds, "ImagePositionPatient", [1e300, -7.0, 1e300 * k]),
        "position-nan": lambda k, ds: setattr(ds, "ImagePositionPatient", ["nan", "0", str(3 * k)]),
    }
    for label, mutate in big.items():
        files = _series_bytes(mutate)
        yield from _both(f"absurd/{label}", "absurd dimensions", files, REFUSED, ABSURD_WORDS)


def _garbage_pixels(k: int, ds: FileDataset) -> None:
    rng = np.random.default_rng(100 + k)
    ds.PixelData = encapsulate([rng.bytes(97)])


# Known syntaxes with no decoder here (or none in DICOM at all): refused at upload.
UNSUPPORTED_SYNTAXES = {
    "mpeg2": "1.2.840.10008.1.2.4.100",
    "mpeg2-high": "1.2.840.10008.1.2.4.101",
    "mpeg4": "1.2.840.10008.1.2.4.102",
    "h264-stereo": "1.2.840.10008.1.2.4.106",
    "hevc": "1.2.840.10008.1.2.4.107",
    "jpip": "1.2.840.10008.1.2.4.94",
    "jpip-deflate": "1.2.840.10008.1.2.4.95",
    "jpeg-xl": "1.2.840.10008.1.2.4.110",
    "private": "1.2.3.4.5.6.7",
    "sop-class-as-syntax": CTImageStorage,
}
# Syntaxes with a decoder, but the pixel data is garbage: only decoding finds it (the job).
DAMAGED_SYNTAXES = {
    "jpeg-baseline": "1.2.840.10008.1.2.4.50",
    "jpeg-lossless": "1.2.840.10008.1.2.4.70",
    "jpeg-ls": "1.2.840.10008.1.2.4.80",
    "jpeg-2000": "1.2.840.10008.1.2.4.90",
    "rle": "1.2.840.10008.1.2.5",
}
SYNTAX_WORDS = ("transfer syntax", "cannot be decoded", "pixel data")


def transfer_syntaxes() -> Iterator[Malformed]:
    """Pixel data in transfer syntaxes that cannot be decoded, or damaged in one that can."""
    for label, uid in UNSUPPORTED_SYNTAXES.items():
        files = {
            f"CT/{ds.filename}": _declare_syntax((_garbage_pixels(k, ds), ds)[1], uid)
            for k, ds in enumerate(_ct_slices())
        }
        yield from _both(f"syntax/unsupported-{label}", "unsupported transfer syntax", files, REFUSED, SYNTAX_WORDS)
    for label, uid in DAMAGED_SYNTAXES.items():

        def damage(k: int, ds: FileDataset, uid: str = uid) -> None:
            _garbage_pixels(k, ds)
            ds.file_meta.TransferSyntaxUID = uid

        for scope, which in (("middle", _middle), ("all", _all)):
            files = _series_bytes(damage, which)
            yield _as_zip(
                f"syntax/damaged-{label}-{scope}", "damaged compressed pixel data", files, JOB_FAILS, SYNTAX_WORDS
            )
    # Native syntaxes whose bytes do not follow the header's promise.
    for label, uid in (
        ("big-endian-declared", ExplicitVRBigEndian),
        ("deflated-declared", DeflatedExplicitVRLittleEndian),
    ):
        files = {f"CT/{ds.filename}": _declare_syntax(ds, uid) for ds in _ct_slices()}
        yield _as_zip(
            f"syntax/{label}",
            "unsupported transfer syntax",
            files,
            REFUSED,
            (*SYNTAX_WORDS, "no dicom", "not a dicom", "damaged"),
        )


# --- NIfTI ------------------------------------------------------------------------------


def _nifti(array: np.ndarray, affine=None, gz: bool = True, header: Callable | None = None) -> bytes:
    """NIfTI-1 bytes of ``array``; ``affine`` (4, 4) is written into the sform as is (qform
    off), ``header`` edits the header fields: both after nibabel has written a valid file,
    since nibabel refuses to write what they make."""
    raw = nib.Nifti1Image(array, np.diag([2.0, 2.0, 3.0, 1.0])).to_bytes()
    hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(raw))
    if affine is not None:
        hdr["qform_code"], hdr["sform_code"] = 0, 1
        hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = np.asarray(affine, dtype=float)[:3]
    if header is not None:
        header(hdr)
    raw = hdr.binaryblock + raw[len(hdr.binaryblock) :]
    return gzip.compress(raw, mtime=0) if gz else raw


def _niftis(label: str, category: str, words, outcome: str = REFUSED, **kwargs) -> Iterator[Malformed]:
    for gz in (True, False):
        name = "ct.nii.gz" if gz else "ct.nii"
        yield Malformed(
            f"{label}/{'nii.gz' if gz else 'nii'}",
            category,
            outcome,
            tuple(words),
            filename=name,
            data=_nifti(gz=gz, **kwargs),
        )


def _ct(dtype=np.float32, shape=(SIZE, SIZE, SLICES)) -> np.ndarray:
    return np.random.default_rng(SEED).integers(-1000, 1000, size=shape).astype(dtype)


NAN_WORDS = ("nan", "infinite")


def nifti_nans() -> Iterator[Malformed]:
    """Not-a-number and infinite voxels, and scaling that makes them."""
    for label, value in (("nan", np.nan), ("inf", np.inf), ("minus-inf", -np.inf)):
        for where, index in (("one-voxel", (3, 4, 1)), ("corner", (0, 0, 0)), ("all", Ellipsis)):
            for dtype in (np.float32, np.float64):
                array = _ct(dtype)
                array[index] = value
                yield from _niftis(
                    f"nifti-nan/{label}-{where}-{np.dtype(dtype).name}", "NIfTI with NaNs", NAN_WORDS, array=array
                )
    # A non-finite slope means "no scaling" (NIfTI-1 standard); a huge one overflows.
    for label, slope, inter in (("slope-1e38", 1e38, 0.0), ("inter-nan", 1.0, np.nan), ("inter-inf", 1.0, np.inf)):

        def scale(header, s=slope, i=inter):
            header["scl_slope"], header["scl_inter"] = s, i

        yield from _niftis(
            f"nifti-nan/{label}", "NIfTI with NaNs", (*NAN_WORDS, "intercept"), array=_ct(np.int16), header=scale
        )


SPACING_WORDS = ("spacing", "not invertible", "zero", "affine")


def nifti_zero_spacing() -> Iterator[Malformed]:
    """A zero voxel size, through pixdim (no qform/sform) or through the affine."""
    for axis in range(3):
        diag = [2.0, 2.0, 3.0, 1.0]
        diag[axis] = 0.0
        yield from _niftis(
            f"zero-spacing/affine-axis-{axis}", "zero spacing", SPACING_WORDS, array=_ct(), affine=np.diag(diag)
        )

        def pixdim_only(header, a=axis):
            header["qform_code"], header["sform_code"] = 0, 0
            pixdim = header["pixdim"]
            pixdim[1 + a] = 0.0
            header["pixdim"] = pixdim

        yield from _niftis(
            f"zero-spacing/pixdim-axis-{axis}", "zero spacing", SPACING_WORDS, array=_ct(), header=pixdim_only
        )


SHAPE_WORDS = ("3d", "shape")


def nifti_shapes() -> Iterator[Malformed]:
    """Not a 3D image: 1D, 2D, 4D and 5D arrays, and an empty axis."""
    shapes = {
        "1d": (SIZE,),
        "2d": (SIZE, SIZE),
        "2d-one-row": (1, SIZE),
        "4d-two-volumes": (SIZE, SIZE, SLICES, 2),
        "4d-time-5": (4, 4, 2, 5),
        "5d": (SIZE, SIZE, SLICES, 1, 2),
        "5d-vector": (4, 4, 2, 2, 3),
        "6d": (4, 4, 2, 1, 2, 2),
    }
    for label, shape in shapes.items():
        yield from _niftis(f"nifti-shape/{label}", "2D or 5D shape", SHAPE_WORDS, array=_ct(shape=shape))

    def empty_axis(header):
        dim = header["dim"]
        dim[2] = 0
        header["dim"] = dim

    yield from _niftis(
        "nifti-shape/empty-axis", "2D or 5D shape", (*SHAPE_WORDS, "empty"), array=_ct(), header=empty_axis
    )


AFFINE_WORDS = ("affine", "not invertible", "nan", "infinite", "spacing")


def nifti_affines() -> Iterator[Malformed]:
    """Affines that do not map voxels to patient space: singular, NaN, infinite."""
    singular = np.diag([2.0, 2.0, 3.0, 1.0])
    singular[:3, 2] = singular[:3, 0]  # K runs along I
    flat = np.eye(4)
    flat[:3, :3] = [[1, 2, 3], [2, 4, 6], [0, 0, 1]]
    affines = {
        "all-zero": np.diag([0.0, 0.0, 0.0, 1.0]),
        "two-equal-axes": singular,
        "rank-2": flat,
        "tiny": np.diag([1e-9, 1e-9, 1e-9, 1.0]),
        "nan": np.where(np.eye(4) == 1, np.nan, 0.0),
        "inf-translation": np.array([[2, 0, 0, np.inf], [0, 2, 0, 0], [0, 0, 3, 0], [0, 0, 0, 1.0]]),
    }
    for label, affine in affines.items():
        yield from _niftis(f"nifti-affine/{label}", "non-invertible affine", AFFINE_WORDS, array=_ct(), affine=affine)


ABSURD_NIFTI_WORDS = ("voxels", "limit", "shape", "ends early", "truncated", "damaged", "not a readable")


def nifti_absurd() -> Iterator[Malformed]:
    """Headers declaring gigantic images (the data is not there)."""
    for label, dims in (
        ("32767-cubed", (32767, 32767, 32767)),
        ("long", (8, 8, 32767)),
        ("huge-plane", (32767, 32767, 3)),
    ):

        def declare(header, d=dims):
            dim = header["dim"]
            dim[1:4] = d
            header["dim"] = dim

        yield from _niftis(
            f"nifti-absurd/{label}", "absurd dimensions", ABSURD_NIFTI_WORDS, array=_ct(np.int16), header=declare
        )


DATATYPE_WORDS = ("data type", "datatype", "not a readable", "voxel", "values")


def nifti_datatypes() -> Iterator[Malformed]:
    """Voxel types that are not intensities: RGB, complex."""
    rgb = np.zeros((SIZE, SIZE, SLICES), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    yield from _niftis("nifti-datatype/rgb24", "NIfTI data type", DATATYPE_WORDS, array=rgb)
    yield from _niftis(
        "nifti-datatype/complex64", "NIfTI data type", DATATYPE_WORDS, array=_ct().astype(np.complex64) * 1j
    )


GZIP_WORDS = ("gzip", "compress", "damaged", "truncated", "ends early", "not a readable")


def gzip_garbage() -> Iterator[Malformed]:
    """.nii.gz that is not gzip, gzip of garbage, and gzip streams cut or damaged."""
    rng = np.random.default_rng(SEED)
    valid = _nifti(_ct(np.int16))
    raw = _nifti(_ct(np.int16), gz=False)
    cases = {
        "plain-nifti-named-gz": raw,
        "random": rng.bytes(500),
        "magic-then-random": b"\x1f\x8b" + rng.bytes(300),
        "magic-deflate-then-random": b"\x1f\x8b\x08\x00" + rng.bytes(300),
        "gzip-of-random": gzip.compress(rng.bytes(2000), mtime=0),
        "gzip-of-empty": gzip.compress(b"", mtime=0),
        "gzip-of-text": gzip.compress(b"hello world\n" * 40, mtime=0),
        "gzip-of-truncated-header": gzip.compress(raw[:200], mtime=0),
        "gzip-of-truncated-data": gzip.compress(raw[: len(raw) // 2], mtime=0),
        "gzip-twice": gzip.compress(valid, mtime=0),
        "bad-crc": valid[:-8] + bytes(b ^ 0xFF for b in valid[-8:-4]) + valid[-4:],
        "trailing-garbage": valid + rng.bytes(40),
    }
    for fraction in (0.05, 0.2, 0.5, 0.8, 0.95, 0.99):
        cases[f"cut-at-{int(fraction * 100)}pct"] = valid[: int(len(valid) * fraction)]
    for offset in (20, 60, 200):
        flipped = bytearray(valid)
        flipped[offset] ^= 0x55
        cases[f"flipped-byte-{offset}"] = bytes(flipped)
    for label, data in cases.items():
        yield Malformed(f"gzip/{label}", "gzip garbage", REFUSED, GZIP_WORDS, filename="ct.nii.gz", data=data)


ZIP_WORDS = ("zip", "damaged", "truncated", "ends early", "not a dicom", "no dicom")


def damaged_zips() -> Iterator[Malformed]:
    """Zips of a valid series, cut or with bytes flipped in their entries or directory."""
    valid = _zip(_series_bytes())
    for fraction in (0.1, 0.3, 0.5, 0.7, 0.9, 0.98):
        yield Malformed(
            f"zip/cut-at-{int(fraction * 100)}pct",
            "damaged zip",
            REFUSED,
            ZIP_WORDS,
            filename="series.zip",
            data=valid[: int(len(valid) * fraction)],
        )
    # Bytes inside the compressed entries: each flip breaks the stream or its CRC-32.
    with zipfile.ZipFile(io.BytesIO(valid)) as archive:
        spans = [(m.header_offset + 30 + len(m.filename), m.compress_size) for m in archive.infolist()]
    rng = np.random.default_rng(SEED)
    for start, size in spans:
        for offset in sorted(start + rng.choice(size, size=5, replace=False)):
            flipped = bytearray(valid)
            flipped[offset] ^= 0xFF
            yield Malformed(
                f"zip/flipped-byte-{offset}",
                "damaged zip",
                REFUSED,
                ZIP_WORDS,
                filename="series.zip",
                data=bytes(flipped),
            )
    for offset in (len(valid) - 10, len(valid) - 20):  # the end of central directory record
        flipped = bytearray(valid)
        flipped[offset] ^= 0xFF
        yield Malformed(
            f"zip/flipped-byte-{offset}", "damaged zip", REFUSED, ZIP_WORDS, filename="series.zip", data=bytes(flipped)
        )


RANDOM_WORDS = (
    "not a supported file",
    "not a valid zip",
    "not a readable nifti",
    "gzip",
    "not a dicom",
    "no dicom",
    "single dicom file",
    "none of the",
    "damaged",
    "truncated",
    "ends early",
)


def random_bytes() -> Iterator[Malformed]:
    """Random bytes under every accepted name, and random bytes behind a valid magic."""
    rng = np.random.default_rng(SEED + 1)
    for size in (0, 1, 100, 348, 1000, 4096):
        for name in ("scan.zip", "ct.nii", "ct.nii.gz", "IM0001.dcm", "scan"):
            yield Malformed(
                f"random/{name}-{size}", "random bytes", REFUSED, RANDOM_WORDS, filename=name, data=rng.bytes(size)
            )
        yield Malformed(
            f"random/folder-{size}",
            "random bytes",
            REFUSED,
            RANDOM_WORDS,
            files={f"CT/{i}.dcm": rng.bytes(size) for i in range(3)},
        )
    for size in (4, 64, 600, 3000):
        dicm = rng.bytes(128) + b"DICM" + rng.bytes(size)
        yield Malformed(
            f"random/dicm-magic-folder-{size}",
            "random bytes",
            REFUSED,
            RANDOM_WORDS,
            files={f"CT/{i}.dcm": dicm for i in range(3)},
        )
        yield Malformed(
            f"random/dicm-magic-zip-{size}",
            "random bytes",
            REFUSED,
            RANDOM_WORDS,
            filename="scan.zip",
            data=_zip({f"CT/{i}.dcm": dicm for i in range(3)}),
        )
        yield Malformed(
            f"random/nifti-magic-{size}",
            "random bytes",
            REFUSED,
            RANDOM_WORDS,
            filename="ct.nii",
            data=rng.bytes(344) + b"n+1\0" + rng.bytes(size),
        )
        yield Malformed(
            f"random/zip-magic-{size}",
            "random bytes",
            REFUSED,
            RANDOM_WORDS,
            filename="scan.zip",
            data=b"PK\x03\x04" + rng.bytes(size),
        )
    # A valid meta header (group 2) followed by random dataset bytes.
    meta = _encode(_ct_slices()[0])[:132]
    head = meta + _encode(_ct_slices()[0])[132:300]
    for size in (8, 100, 1000):
        for label, prefix in (("after-preamble", meta), ("after-meta", head)):
            files = {f"CT/{i}.dcm": prefix + rng.bytes(size) for i in range(3)}
            yield _as_zip(f"random/{label}-{size}", "random bytes", files, REFUSED, RANDOM_WORDS)


# --- RTSTRUCT ---------------------------------------------------------------------------


@cache
def _rtstruct_base() -> tuple[dict[str, bytes], bytes]:
    """A valid CT (CT/...) and an RTSTRUCT with a Brainstem and a Mandible box on it."""
    from engine.io.dicom_series import assemble_series, group_series
    from engine.io.rtstruct import build_rtstruct
    from engine.structure import Structure
    from engine.volume import LabelMap

    files = _series_bytes(seed=1)
    datasets = []
    for name, data in files.items():
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.filename = name
        datasets.append(ds)
    (candidate,), _ = group_series(datasets)
    series = assemble_series(candidate)
    labels = np.zeros(series.volume.array.shape, np.uint8)
    labels[1:4, 1:5, :] = 1
    labels[5:7, 2:6, :] = 2
    structures = [Structure(1, "Brainstem", (255, 0, 0), "ORGAN"), Structure(2, "Mandible", (0, 255, 0), "ORGAN")]
    rtstruct = build_rtstruct(LabelMap(labels, series.volume.affine), series, structures, "corpus", "0" * 64)
    return files, _encode(rtstruct)


def _shift_contours(offset_mm: tuple[float, float, float], rois=None) -> Callable[[Dataset], None]:
    def mutate(ds: Dataset) -> None:
        for roi in ds.ROIContourSequence:
            if rois is not None and int(roi.ReferencedROINumber) not in rois:
                continue
            for contour in roi.ContourSequence:
                points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3) + offset_mm
                contour.ContourData = [f"{v:.2f}" for v in points.ravel()]

    return mutate


RTSTRUCT_WORDS = ("outside", "contour", "frame of reference", "structure set")


def rtstructs_outside() -> Iterator[Malformed]:
    """RTSTRUCTs whose contours lie outside the image: beyond its slices, beside it in-plane."""
    files, rtstruct = _rtstruct_base()
    shifts = {
        "beyond-last-slice-10mm": (0, 0, 10),
        "beyond-last-slice-1m": (0, 0, 1000),
        "before-first-slice-20mm": (0, 0, -20),
        "right-1m": (-1000, 0, 0),
        "left-100mm": (100, 0, 0),
        "anterior-1m": (0, -1000, 0),
        "posterior-50mm": (0, 50, 0),
        "diagonal-far": (500, 500, 500),
        "in-plane-far-on-slices": (1e6, 1e6, 0),
    }
    for label, shift in shifts.items():
        ds = pydicom.dcmread(io.BytesIO(rtstruct))
        _shift_contours(shift)(ds)
        for layout in ("zip", "folder"):
            upload = {**files, "RS/RS.dcm": _encode(ds)}
            make = _as_zip if layout == "zip" else _as_folder
            yield make(f"rtstruct/{label}/{layout}", "RTSTRUCT outside the image", upload, AUDIT_FAILS, RTSTRUCT_WORDS)
    for label, mutate in {
        "other-frame-of-reference": lambda ds: [
            setattr(roi, "ReferencedFrameOfReferenceUID", "1.2.3.4") for roi in ds.StructureSetROISequence
        ],
        "nan-coordinates": lambda ds: [
            setattr(c, "ContourData", ["nan"] * len(c.ContourData))
            for roi in ds.ROIContourSequence
            for c in roi.ContourSequence
        ],
        "no-contours": lambda ds: [delattr(roi, "ContourSequence") for roi in ds.ROIContourSequence],
        "two-points": lambda ds: [
            setattr(c, "ContourData", list(c.ContourData)[:6])
            for roi in ds.ROIContourSequence
            for c in roi.ContourSequence
        ],
    }.items():
        ds = pydicom.dcmread(io.BytesIO(rtstruct))
        mutate(ds)
        yield _as_zip(
            f"rtstruct/{label}",
            "RTSTRUCT outside the image",
            {**files, "RS/RS.dcm": _encode(ds)},
            AUDIT_FAILS,
            (*RTSTRUCT_WORDS, "finite", "empty", "no contour", "fewer than 3"),
        )


GENERATORS = (
    truncated_dicom,
    wrong_vrs,
    short_pixel_data,
    rows_zero,
    absurd_dimensions,
    transfer_syntaxes,
    nifti_nans,
    nifti_zero_spacing,
    nifti_shapes,
    nifti_affines,
    nifti_absurd,
    nifti_datatypes,
    gzip_garbage,
    damaged_zips,
    random_bytes,
    rtstructs_outside,
)


@cache
def corpus() -> tuple[Malformed, ...]:
    """Every malformed input, in a fixed order, the same bytes on every call (seeded)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about every invalid value it is asked to write
        entries = tuple(entry for generate in GENERATORS for entry in generate())
    ids = [e.id for e in entries]
    duplicated = {i for i in ids if ids.count(i) > 1}
    if duplicated:
        raise ValueError(f"duplicated corpus ids: {sorted(duplicated)}")
    return entries
